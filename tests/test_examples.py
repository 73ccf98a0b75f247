"""Every example the project shows runs (issue #14), so none can rot.

The examples are read at test time from where users read them: each command line of README.md's
```console blocks (``$ `` and root's ``# `` prompts) and each line under "Examples:" in a
command's --help. A new example is therefore tested without touching this file. Each runs as a
real process, through bash (so comments, ``\\`` continuations, ``&&`` chains and a block's
``cd``/``VAR=...`` lines work as a user's shell would run them), in a fresh copy of a small
"world": the folder a user runs the examples from, holding what they mention (see ``world``).

An example passes when it exits 0 (or 2 where README shows it failing with a usage error), prints
no traceback, and prints every line README shows under it.

What the test changes, all listed here:
- ``PLACEHOLDERS``: made-up run ids and paths in the examples, replaced in the text.
- ``APPENDED``: small-data options appended to a command's arguments by the ``fireablate`` on the
  PATH (which is this checkout's CLI), so training takes seconds.
- ``SCRIPT_ENV``: the documented knobs of ``examples/reproduce_study.sh``, set small.
- ``SKIPS``: examples that need a GPU, Slurm, an install or the network, by their exact text.
- ``--data cifar10`` (the default) finds a stand-in for the official download where it looks
  ($FIREABLATE_DATA): the same files and format, 120 random images; nothing is downloaded.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fireablate.errors import UsageError
from fireablate.evaluate import EXPORT_EXTRA, require_onnx

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SHARED_JPEGS = REPO.parent / "shared" / "data" / "cifar10-jpeg-20k.tar.gz"

# Made-up ids and paths in examples, each replaced by the real one the world holds (in this order:
# the short id is the start of the long one). Examples that mean the sample ledger name its real
# ids instead; these stand for a reader's own runs.
PLACEHOLDERS = {
    # a run's folder, runs/RUN_ID: the world's trained run that stands in for a reader's (World.run_id)
    "3ca98884b2f1": lambda world: world.run_id,
    # a run id as `fireablate runs` shows it (at least 8 characters): the same run's
    "3ca98884": lambda world: world.run_id[:8],
    # the id in the name of that run's compressed file (`compress` names it by its own run id)
    "0a1b2c3d4e5f": lambda world: world.compressed_id,
    # where the sample's data was extracted on the machine that made it (absolute, outside the world)
    "/tmp/real/cifar10-jpeg": lambda world: str(world.jpegs),
}

# Appended to every invocation of a command, after the example's own options (the last value of
# an option wins), so each run trains one step of one epoch on one image a class. The batch is
# set because the recipes' (32, 128) would be more than the 10 images there are.
SMALL_TRAINING = ["--epochs", "1", "--limit-train", "10", "--limit-test", "10", "--batch-size", "10"]
APPENDED = {
    "train": SMALL_TRAINING,
    "sweep": SMALL_TRAINING,
    "compress": ["--limit-train", "10", "--limit-test", "10"],  # retraining and evaluation on few images
    "evaluate": ["--limit-test", "10"],  # `--limit-test 2000` is more than the world's test images
    "export": ["--calibrate", "10", "--limit-test", "10"],  # `--calibrate 500` likewise
}

# examples/reproduce_study.sh reads these (documented in its header); the study's defaults are 21
# runs, two values each still run every step of the script.
SCRIPT_ENV = {"SR_VALUES": "0.125,0.25", "PCT_VALUES": "0.25,0.5", "VARIANTS": "alexnet_cifar,cifar"}

# Examples that cannot run here, by exact text (a line's trailing comment left out), and why. An
# entry that matches no example, or skips for another reason, fails
# `test_every_skip_names_an_example_and_an_allowed_reason`.
SKIPS = {
    "pip install -e '.[slurm]'": "pip install: changes the environment; the test runs the checkout as installed",
    "pip install -e '.[export]'": "pip install: changes the environment; the test runs the checkout as installed",
    "fireablate sweep --param sr --values 0.125:1.0:0.125 --seeds 3 --data ~/data --executor slurm --partition gpu "
    "--time 2:00:00 --gpus-per-run 1 --cpus-per-run 8 --mem 16G --max-parallel 8 --ledger /shared/project/ledger.csv":
        "Slurm: submits to a cluster's gpu partition",
    "fireablate sweep ... --executor slurm --no-wait": "Slurm (and `...` stands for the options of the line above)",
    "fireablate runs --ledger /shared/project/ledger.csv": "Slurm: the cluster sweep's ledger, on the cluster's shared filesystem",
    "tests/slurm/cluster.sh install": "Slurm: installs slurm-wlm and munge, as root",
    'eval "$(tests/slurm/cluster.sh start)"': "Slurm: starts a cluster's daemons, as root",
    "sinfo && srun hostname": "Slurm: needs the running cluster",
    "tests/slurm/cluster.sh stop": "Slurm: stops the cluster's daemons, as root",
    "fireablate sweep --param sr --values 0.125,0.5,1.0 --gpus 0,1": "GPU: two CUDA GPUs",
    "fireablate sweep --param preset --values cifar,cifar_valid_padding,cifar_early_pool --gpus 0,1": "GPU: two CUDA GPUs",
    "SEEDS=3 examples/reproduce_study.sh cifar10 runs/ledger.csv --recipe fast --gpus 0,1": "GPU: two CUDA GPUs",
    "fireablate train --preset cifar_optimized --recipe step --device cuda": "GPU: a CUDA device",
}

# ONNX examples need the optional export extra, which the README's test command does not install
# (its ONNX tests skip likewise); with it installed they run like every other example.
def _has_export() -> bool:
    try:
        require_onnx()  # fireablate's own test of the extra, so the two cannot disagree
    except UsageError:
        return False
    return True


HAS_EXPORT = _has_export()
NO_EXPORT = f"needs the optional export dependencies: {EXPORT_EXTRA}"


def _needs_export(ex: "Example") -> bool:
    return "fireablate export" in ex.text or ".onnx" in ex.text


# README shows a failing example by its error line; "Bad input" promises such lines exit code 2.
USAGE_ERROR = "fireablate: error: "


# ---------------------------------------------------------------------------------------------
# Reading the examples


@dataclass
class Example:
    text: str  # as a shell runs it: continuations kept, comments too
    key: str  # one line, without a trailing comment: the test's id and the SKIPS key
    sources: list[str]
    setup: tuple[str, ...] = ()  # the block's earlier `cd DIR` and `VAR=value` lines
    shown: list[str] = field(default_factory=list)  # the output README prints under it


def _strip_comment(line: str) -> str:
    """``line`` without a trailing shell comment (a `#` that starts a word outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _one_line(text: str) -> str:
    return " ".join(_strip_comment(part).rstrip("\\").strip() for part in text.splitlines()).strip()


def _is_setup(command: str) -> bool:
    """`cd DIR` or `NAME=value ...` alone: state for the block's later lines, not an example."""
    words = shlex.split(command, comments=True)
    return (words[:1] == ["cd"] and len(words) == 2) or (
        bool(words) and all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", w, re.S) for w in words))


def readme_examples() -> list[Example]:
    lines = README.read_text().splitlines()
    examples: list[Example] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```console":
            i += 1
            continue
        setup: list[str] = []
        i += 1
        current: Example | None = None
        while i < len(lines) and lines[i].strip() != "```":
            line, number = lines[i], i + 1
            if line.startswith(("$ ", "# ")):
                parts = [line[2:]]
                while parts[-1].rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    parts.append(lines[i])
                text = "\n".join(parts)
                current = None
                if _is_setup(text):
                    setup.append(text)
                else:
                    current = Example(text, _one_line(text), [f"README.md:{number}"], tuple(setup))
                    examples.append(current)
            elif current is not None:
                current.shown.append(line)
            i += 1
        i += 1
    return examples


def help_examples() -> list[Example]:
    import typer.main

    from fireablate.cli import app

    examples = []
    for name, command in typer.main.get_command(app).commands.items():
        listed = (command.help or "").split("Examples:", 1)
        for line in listed[1].splitlines() if len(listed) == 2 else []:
            if line.strip():
                examples.append(Example(line.strip(), _one_line(line), [f"fireablate {name} --help"]))
    return examples


def all_examples() -> list[Example]:
    """README's and the help's examples, each distinct one once (with every place it is shown)."""
    merged: dict[tuple, Example] = {}
    for ex in readme_examples() + help_examples():
        seen = merged.setdefault((ex.setup, ex.key), ex)
        if seen is not ex:
            seen.sources += ex.sources
            seen.shown = seen.shown or ex.shown
    return list(merged.values())


EXAMPLES = all_examples()


# ---------------------------------------------------------------------------------------------
# The world: what a reader has in the folder they run the examples from


SHIM = '''#!{python}
"""fireablate for the examples: this checkout's CLI, with small-data options appended (test_examples.APPENDED)."""
import sys

sys.path.insert(0, {repo!r})
sys.argv[1:] += {appended!r}.get(sys.argv[1] if len(sys.argv) > 1 else "", [])
from fireablate.cli import main

main()
'''


SETUP = '''
import shlex
import sys

sys.path.insert(0, {repo!r})
from fireablate.cli import app

for command in {commands!r}:
    args = shlex.split(command)[1:]
    app(args + {appended!r}.get(args[0], []), prog_name="fireablate", standalone_mode=False)
'''


@dataclass
class World:
    root: Path  # copied for each example: the folder the examples run in
    env: dict
    jpegs: Path  # ./cifar10-jpeg, real CIFAR-10 JPEGs
    run_id: str = ""
    compressed_id: str = ""

    def run(self, script: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", script], cwd=cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def fireablate(self, commands: list[str]) -> None:
        """Run fireablate ``commands`` in the world, one process for all (the imports and torch's
        warm-up paid once), with the options APPENDED as for the examples."""
        done = subprocess.run([sys.executable, "-c", SETUP.format(repo=str(REPO), appended=APPENDED, commands=commands)],
                              cwd=self.root, env=self.env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"preparing the world failed:\n{commands}\n{done.stdout}\n{done.stderr}"


def _image_folder(dest: Path) -> Path:
    """./cifar10-jpeg: 10 training and 5 test images a class, real JPEGs where the shared archive
    is, else generated PNGs of the synthetic set's classes (colour and stripes)."""
    if SHARED_JPEGS.is_file():
        from fireablate.data import extract_image_folder

        return extract_image_folder(SHARED_JPEGS, dest, train_per_class=10, test_per_class=5)
    from PIL import Image

    from fireablate.data import synthetic

    data = synthetic(n_train=100, n_test=50)
    root = dest / "cifar10-jpeg"
    for split, xs, ys in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        for n, (img, label) in enumerate(zip(xs, ys)):
            folder = root / split / data.classes[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{n:04d}.png")
    return root


def _ledger_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    """The folder a reader runs the examples from, made once: a checkout's examples/ (the sample
    ledger, reproduce_study.sh), ./cifar10-jpeg, CIFAR-10 where --data cifar10 looks for it, and a
    ledger of real runs (sweeps over sr, pct3x3 and a grid of both; one run compressed and
    exported to ./best.int8.onnx) for the examples that read a reader's own runs, and ./best.pt."""
    from .helpers import write_cifar_archive

    base = tmp_path_factory.mktemp("examples")
    root = base / "world"
    root.mkdir()
    shutil.copytree(REPO / "examples", root / "examples")
    jpegs = _image_folder(root)
    # The official python release's layout and format (random pixels, 10 training and 2 test
    # images a class): --data cifar10 cannot download here, and must not try.
    write_cifar_archive(base / "cifar10", per_batch=20)
    bin_dir = base / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "fireablate"
    shim.write_text(SHIM.format(python=sys.executable, repo=str(REPO), appended=APPENDED))
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIREABLATE_")}
    env.update(SCRIPT_ENV, PATH=f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=str(REPO), FIREABLATE_CACHE=str(base / "cache"), FIREABLATE_DATA=str(base / "cifar10" / "src"),
               FIREABLATE_CIFAR10_URL="http://127.0.0.1:9/cifar-10-python.tar.gz")  # nothing listens: no download
    w = World(root, env, jpegs)
    tiny = "--data ./cifar10-jpeg --stem-filters 16 --base-e 16 --incr-e 16 --n-fire 3 --pool-after 2,3"
    # Three experiments that share no run (a run of two sweeps is recorded by the first only), and
    # a model file ./best.pt of v1.0's depth, whose layer names (fire2..fire9, conv10) the
    # compress examples name.
    w.fireablate([f"fireablate sweep --param sr --values 0.25,0.5 {tiny}",
                  f"fireablate sweep --param pct3x3 --values 0.25,0.75 {tiny}",
                  f"fireablate sweep --param sr --values 0.25,0.5 --param pct3x3 --values 0.25,0.75 {tiny}",
                  "fireablate build --stem-filters 16 --base-e 16 --incr-e 16 --n-fire 8 --pool-after 3,5 -o best.pt"])
    rows = _ledger_rows(root / "runs" / "ledger.csv")
    assert [r["status"] for r in rows] == ["done"] * 8, rows
    w.run_id = rows[0]["run_id"]
    w.fireablate([f"fireablate compress {w.run_id}"])
    if HAS_EXPORT:
        w.fireablate([f"fireablate export runs/{w.run_id}/best.pt --int8 --out best.int8.onnx"])
    (compressed,) = (root / "runs" / w.run_id).glob("best-compressed-*.fadc")
    w.compressed_id = compressed.stem.rsplit("-", 1)[1]
    return w


# ---------------------------------------------------------------------------------------------
# The tests


def _script(ex: Example, world: World) -> str:
    text = "\n".join([*ex.setup, ex.text])
    for placeholder, real in PLACEHOLDERS.items():
        text = text.replace(placeholder, real(world))
    return "set -e\n" + text


# Examples run two at a time, each started as soon as the world is ready and a worker is free,
# while the tests wait for theirs in order: most of an example's time is one core importing torch
# and warming it up, so a second core all but halves the file's time.
WORKERS = min(2, os.cpu_count() or 1)


def _run(ex: Example, world: World, cwd: Path) -> tuple[str, subprocess.CompletedProcess]:
    shutil.copytree(world.root, cwd, symlinks=True)  # a fresh world each: examples write into it
    script = _script(ex, world)
    return script, world.run(script, cwd)


@pytest.fixture(scope="session")
def started(world: World, request, tmp_path_factory):
    """The selected examples (those -k keeps), started in the order they will be tested."""
    chosen = [item.callspec.params["ex"] for item in request.session.items
              if getattr(item, "originalname", "") == "test_example_runs" and item.module.__name__ == __name__]
    folder = tmp_path_factory.mktemp("ran")
    pool = ThreadPoolExecutor(WORKERS)
    runs = {id(ex): pool.submit(_run, ex, world, folder / str(n)) for n, ex in enumerate(chosen)
            if ex.key not in SKIPS and (HAS_EXPORT or not _needs_export(ex))}
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)  # after a -x or ^C, start nothing more


@pytest.mark.parametrize("ex", EXAMPLES, ids=[ex.key for ex in EXAMPLES])
def test_example_runs(ex: Example, request):
    """Each example runs as shown: exit code 0, or 2 where README shows its usage error; no
    traceback; every line README prints under it printed."""
    if ex.key in SKIPS:
        pytest.skip(SKIPS[ex.key])
    if not HAS_EXPORT and _needs_export(ex):
        pytest.skip(NO_EXPORT)
    script, done = request.getfixturevalue("started")[id(ex)].result()
    said = f"{' and '.join(ex.sources)}:\n{script}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    failing = bool(ex.shown) and ex.shown[0].startswith(USAGE_ERROR)
    assert done.returncode == (2 if failing else 0), said
    assert "Traceback" not in done.stdout + done.stderr, said
    printed = {line.rstrip() for line in (done.stdout + done.stderr).splitlines()}
    missing = [line for line in ex.shown if line.rstrip() not in printed]
    assert not missing, f"not printed: {missing}\n{said}"


def test_every_skip_names_an_example_and_an_allowed_reason():
    """The skip list cannot go stale or grow excuses: each entry is the text of an example README
    or --help shows, skipped only for what this machine cannot have (a GPU, Slurm, an install,
    the network)."""
    keys = {ex.key for ex in EXAMPLES}
    assert not [k for k in SKIPS if k not in keys]
    assert not [r for r in SKIPS.values() if not re.match(r"(GPU|Slurm|pip install|network)\b", r)]


def test_every_placeholder_stands_in_an_example():
    """A placeholder no example uses any more is stale, and goes."""
    texts = "\n".join("\n".join([*ex.setup, ex.text]) for ex in EXAMPLES)
    assert not [p for p in PLACEHOLDERS if p not in texts]


def test_examples_are_found():
    """The readers find README's and every command's examples (a broken reader would test nothing)."""
    import typer.main

    from fireablate.cli import app

    sources = {s for ex in EXAMPLES for s in ex.sources}
    for name in typer.main.get_command(app).commands:
        assert f"fireablate {name} --help" in sources, f"no examples found in fireablate {name} --help"
    from_readme = [ex for ex in EXAMPLES if any(s.startswith("README.md") for s in ex.sources)]
    assert len(from_readme) >= 50
    assert all(ex.key.startswith("fireablate ") for ex in EXAMPLES if ex.sources[0].endswith("--help"))
    sample = next(ex for ex in EXAMPLES if "$COMMON" in ex.text)
    assert sample.setup[0] == "cd examples" and sample.setup[1].startswith("COMMON=")
