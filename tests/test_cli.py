import json
import os
import pickle
import subprocess
import sys
import warnings

import pytest
from typer.testing import CliRunner

from fireablate import __version__
from fireablate import ledger as L
from fireablate.cli import app
from fireablate.model import load_model

from .helpers import one_line_error

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args))


def test_version_and_help():
    assert run("--version").stdout.strip() == f"fireablate {__version__}"
    bare = run()
    assert bare.exit_code == 0 and "count-params" in bare.stdout and "build" in bare.stdout


@pytest.mark.parametrize("command", ["count-params", "build", "train", "sweep", "runs", "plot", "report", "recipes"])
def test_every_command_has_an_example(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "Examples:" in result.stdout and f"fireablate {command}" in result.stdout.split("Examples:")[1]


def test_recipes_shows_every_recipe_setting_by_setting():
    """`fireablate recipes` is the documented table of settings: every recipe a column, every
    setting a row, the same rows as Markdown."""
    from fireablate.config import RECIPES, recipe_table

    shown = run("recipes")
    assert shown.exit_code == 0 and all(name in shown.stdout for name in RECIPES)
    assert "label smoothing" in shown.stdout and "test-time views" in shown.stdout
    markdown = run("recipes", "--markdown").stdout.splitlines()
    header, *rows = recipe_table()
    assert markdown[0] == f"| {' | '.join(header)} |" and len(markdown) == len(rows) + 2
    assert markdown[2:] == [f"| {' | '.join(cells)} |" for cells in rows]


def _commands():
    import typer.main

    return list(typer.main.get_command(app).commands)


@pytest.mark.parametrize("command", ["fireablate", *_commands()])
def test_flags_show_no_value_in_help(command):
    """A flag takes no value, so its help must not show one: typer labels flags <bool> (--dry-run
    <bool>, --help -h <bool>), which reads as if `--dry-run true` were how to write it."""
    result = run(*([] if command == "fireablate" else [command]), "--help")
    assert result.exit_code == 0, result.output
    assert "--help" in result.stdout and "Show this message and exit." in result.stdout
    assert "<bool>" not in result.stdout, result.stdout


def test_count_params_totals():
    result = run("count-params", "--preset", "squeezenet1_0")
    assert result.exit_code == 0
    assert "1,248,424 parameters, 4.99 MB" in result.stdout  # the study's unit: 10^6 bytes
    mib = run("count-params", "--preset", "squeezenet1_0", "--size-unit", "MiB")
    assert "1,248,424 parameters, 4.76 MiB" in mib.stdout  # the SqueezeNet paper's "4.8 MB"


def test_count_params_json_per_layer():
    data = json.loads(run("count-params", "--preset", "cifar", "--sr", "0.5", "--json", "--per-layer", "--bits", "8").stdout)
    assert data["params"] == sum(layer["params"] for layer in data["layers"])
    assert data["mb_8bit"] == pytest.approx(data["mb"] / 4, abs=1e-3)
    assert data["flops"] == 2 * data["macs"]
    assert data["layers"][1]["name"] == "fire2/squeeze" and data["layers"][1]["out_channels"] == 64


def test_count_params_sweep_preview():
    rows = json.loads(run("count-params", "--param", "sr", "--values", "0.125,0.25,0.5,0.75,1.0", "--json").stdout)
    assert [r["sr"] for r in rows] == ["0.125", "0.25", "0.5", "0.75", "1.0"]
    assert rows[0]["params"] == 1_096_398
    assert all(a["params"] < b["params"] for a, b in zip(rows, rows[1:]))
    table = run("count-params", "--param", "pct3x3", "--values", "0.01,0.5,0.99")
    assert table.exit_code == 0 and "0.99" in table.stdout


def test_count_params_single_fire_module():
    result = run("count-params", "--fire", "--in-channels", "256", "--expand", "512", "--sr", "0.125")
    assert result.exit_code == 0
    assert "180,224" in result.stdout and "1,179,648" in result.stdout and "84.72% fewer" in result.stdout
    data = json.loads(run("count-params", "--fire", "--in-channels", "256", "--expand", "512", "--squeeze", "64", "--json").stdout)
    assert data["fire_weights"] == 180_224 and round(data["reduction"], 4) == 0.8472


def test_build_checks_counts_and_saves(tmp_path):
    result = run("build", "--preset", "cifar", "--freq", "2", "--bypass", "complex", "--output", str(tmp_path / "m.pt"))
    assert result.exit_code == 0, result.output
    assert "490,910 parameters" in result.stdout and "matching the calculator" in result.stdout
    model, payload = load_model(tmp_path / "m.pt")
    assert model.spec.bypass == "complex" and model.spec.meta.freq == 2


def test_build_json_is_the_resolved_spec():
    data = json.loads(run("build", "--preset", "cifar_optimized", "--json").stdout)
    assert data["meta"]["sr"] == 0.5 and data["extra_fires"] == [128] and data["type"] == "squeezenet"


@pytest.mark.parametrize(
    "args, message",
    [
        (["count-params", "--sr", "1.5"], "--sr must be in (0, 1]"),
        (["count-params", "--sr", "abc"], "'--sr'"),
        (["count-params", "--preset", "nope"], "'nope' is not one of 'squeezenet1_0'"),
        (["count-params", "--base-e", "16", "--incr-e", "0", "--sr", "0.01"], "fire2: squeeze = SR x e = 0.01 x 16"),
        (["count-params", "--input-size", "4"], "input too small"),
        (["count-params", "--srr", "0.5"], "No such option: --srr"),
        (["build", "--bypass", "simple"], "simple bypass has nothing to bypass"),
        (["count-params", "--bits", "4"], "'4' is not one of '32', '16', '8', '6'"),
        (["count-params", "--fire", "--expand", "512"], "--fire needs --in-channels"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = run(*args)
    assert message in one_line_error(result, 2)
    assert result.stdout == ""


def test_python_dash_m_and_no_torch_for_the_calculator():
    help_text = subprocess.run([sys.executable, "-m", "fireablate", "--help"], capture_output=True, text=True, check=True)
    assert "count-params" in help_text.stdout
    probe = (
        "import sys; from fireablate.cli import app; "
        "sys.argv = ['fireablate', 'count-params', '--preset', 'squeezenet1_0']\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'count-params imported torch'"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "1,248,424" in result.stdout


TINY_ARGS = ["--stem-filters", "16", "--base-e", "16", "--incr-e", "16", "--n-fire", "3", "--pool-after", "2,3"]
DATA_ARGS = ["--data", "synthetic", "--limit-train", "200", "--limit-test", "100", "--batch-size", "32", "--device", "cpu"]


def test_train_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = run("train", *TINY_ARGS, *DATA_ARGS, "--epochs", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "validation images (the test split, as in the study)" in text
    assert "epoch   2" in text and "img/s" in text and "TFLOP/s" in text
    assert "best val accuracy" in text and str(out) in text
    assert (out / "best.pt").is_file() and (out / "history.csv").is_file()
    again = run("train", *TINY_ARGS, *DATA_ARGS, "--epochs", "2", "--out", str(out))
    assert again.exit_code == 0 and "already done" in again.stdout and "nothing to train" in again.stdout


def test_train_from_a_built_file(tmp_path):
    assert run("build", *TINY_ARGS, "--output", str(tmp_path / "m.pt")).exit_code == 0
    result = run("train", "--init", str(tmp_path / "m.pt"), *DATA_ARGS, "--epochs", "1", "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    clash = run("train", "--init", str(tmp_path / "m.pt"), "--sr", "0.5", *DATA_ARGS)
    assert clash.exit_code == 2 and "--init takes the network from its file" in clash.stderr


def test_train_diverged_is_one_line_and_nonzero(tmp_path):
    result = run("train", *TINY_ARGS, *DATA_ARGS, "--recipe", "fast", "--lr", "1e6", "--epochs", "1", "--out", str(tmp_path))
    assert one_line_error(result, 1).startswith("fireablate: error: training diverged: loss became")


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--batch-size", "0"], 2, "--batch-size must be at least 1"),
        (["--limit-train", "100000"], 2, "is more than the 2000 training images"),
        (["--device", "tpu"], 2, "unknown device 'tpu'"),
        (["--data", "/no/such/folder"], 1, "data folder not found: /no/such/folder"),
        (["--recipe", "slow"], 2, "'slow' is not one of 'study', 'step', 'fast'"),
    ],
)
def test_train_bad_input(tmp_path, args, code, message):
    base = ["train", *TINY_ARGS, "--data", "synthetic", "--epochs", "1", "--out", str(tmp_path)]
    result = run(*base, *args)
    assert message in one_line_error(result, code)


def test_an_unwritable_output_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    result = run("build", "--output", str(tmp_path / "file" / "m.pt"))
    assert str(tmp_path / "file") in one_line_error(result, 1)


# --- nothing lost: --output ------------------------------------------------------------------


def test_build_output_refuses_a_file_it_did_not_write(tmp_path):
    """Protects save_model's overwrite check: a mistyped --output (a notes file, a checkpoint, a
    dataset) must survive. Replacing fireablate's own earlier model file is fine; --overwrite
    replaces anything."""
    precious = tmp_path / "precious.txt"
    precious.write_text("three weeks of notes\n")
    refused = run("build", *TINY_ARGS, "--output", str(precious))
    line = one_line_error(refused, 2)
    assert str(precious) in line and "--overwrite" in line
    assert precious.read_text() == "three weeks of notes\n"
    model = tmp_path / "m.pt"
    assert run("build", *TINY_ARGS, "--output", str(model)).exit_code == 0
    again = run("build", *TINY_ARGS, "--seed", "1", "--output", str(model))  # its own file: replaced
    assert again.exit_code == 0, again.output
    assert load_model(model)[1]["seed"] == 1
    forced = run("build", *TINY_ARGS, "--output", str(precious), "--overwrite")
    assert forced.exit_code == 0, forced.output
    assert load_model(precious)[0].spec.stem_filters == 16


def test_an_error_naming_a_long_path_stays_one_line_on_a_narrow_terminal(tmp_path):
    """Protects the one-line errors against wrapping: the real console (a subprocess), a terminal
    40 columns wide, and a message with a path of some 300 characters."""
    deep = tmp_path.joinpath(*["a_rather_long_folder_name"] * 11)
    deep.mkdir(parents=True)
    (deep / "notes.txt").write_text("keep me")
    env = {**os.environ, "COLUMNS": "40", "LINES": "10"}
    result = subprocess.run([sys.executable, "-m", "fireablate", "build", *TINY_ARGS, "--output", str(deep / "notes.txt")],
                            capture_output=True, text=True, env=env)
    assert str(deep / "notes.txt") in one_line_error(result, 2) and len(str(deep)) > 300
    assert (deep / "notes.txt").read_text() == "keep me"


# --- values checked before anything runs -----------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "synthetic", "--seed", str(2**64)], "--seed must be between 0 and 2**63 - 1"),
        (["build", "--seed", str(2**64)], "--seed must be between 0 and 2**63 - 1"),
        (["sweep", "--data", "synthetic", "--seed", str(2**64)], "--seed must be between 0 and 2**63 - 1"),
        (["sweep", "--data", "synthetic", "--seed", str(2**63 - 1), "--seeds", "2"], "got 9223372036854775808"),
        (["train", "--data", "synthetic", "--weight-decay", "nan"], "--weight-decay expects a finite number"),
        (["count-params", "--param", "sr", "--values", "nan:1:0.1"], "--values range must be finite numbers"),
        (["count-params", "--param", "sr", "--values", "0:inf:1"], "--values range must be finite numbers"),
        (["count-params", "--n-fire", "9999999999"], "--n-fire must be at most 256"),
        (["count-params", "--stem-filters", "100000000000"], "--stem-filters must be at most 65,536"),
        (["build", "--input-size", "100000"], "--input-size must be at most 4,096"),
        (["sweep", "--data", "synthetic", "--gpus", ""], "--gpus needs a comma-separated list"),
        (["sweep", "--data", "synthetic", "--devices", ""], "--devices needs a comma-separated list"),
        (["count-params", "--squeeze", "8"], "add --fire"),
        (["count-params", "--fire", "--in-channels", "256", "--expand", "512", "--sr", "0.5", "--squeeze", "8"],
         "not both"),
    ],
)
def test_out_of_range_values_are_usage_errors_before_anything_runs(args, message, tmp_path):
    """Protects the README's 'values are checked before anything runs': each is exit 2, one line,
    nothing on stdout, and no ledger or output written."""
    result = run(*args, "--ledger", str(tmp_path / "l.csv")) if args[0] in ("train", "sweep") else run(*args)
    assert message in one_line_error(result, 2)
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


def test_an_absurd_number_of_seeds_is_refused_at_once(tmp_path):
    """A typo such as --seeds 5000000 must be one line at once, not hours of planning."""
    cmd = [sys.executable, "-m", "fireablate", "sweep", "--data", "synthetic", "--seeds", "5000000", "--dry-run",
           "--ledger", str(tmp_path / "l.csv")]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("sweep --seeds 5000000 --dry-run was still planning after 15 s")
    assert "--seeds" in one_line_error(result, 2)


# --- the ledger row of a run -------------------------------------------------------------------


def test_train_appends_its_row_to_the_ledger(tmp_path):
    """Protects 'train appends its row too' (README): the row that sweep, runs, plot and report read,
    and what makes a rerun answer at once."""
    ledger, out = tmp_path / "l.csv", tmp_path / "run"
    result = run("train", *TINY_ARGS, *DATA_ARGS, "--epochs", "1", "--out", str(out), "--ledger", str(ledger))
    assert result.exit_code == 0, result.output
    assert f"row appended to {ledger}" in result.stdout
    (row,) = L.read(ledger).rows
    summary = json.loads((out / "result.json").read_text())
    assert row["run_id"] == summary["run_id"] and row["status"] == "done" and row["out_dir"] == str(out)
    assert row["best_val_acc"] == pytest.approx(summary["best_val_acc"]) and row["epochs"] == 1


# --- damaged and planted files -----------------------------------------------------------------


@pytest.fixture
def terminal_warnings():
    """Warnings printed on stderr, as a user's terminal shows them: pytest records them instead,
    which would hide a second line of output from the one-line checks."""
    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield


class _Planted:
    """Unpickling this runs ``touch MARKER``: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory):
    from fireablate.data import limit, synthetic
    from fireablate.training import train

    from fireablate.config import TrainConfig

    from .helpers import TINY

    out = tmp_path_factory.mktemp("real")
    train(TINY, TrainConfig(data="synthetic", limit_train=50, limit_test=10, batch_size=50, epochs=1, device="cpu"),
          out_dir=out, data=limit(synthetic(), 50, 10))
    return (out / "checkpoint.pt").read_bytes()


def _torch_bytes(obj) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


DAMAGED = {
    "random-bytes": lambda real, marker: os.urandom(4096),
    "empty": lambda real, marker: b"",
    "truncated": lambda real, marker: real[: len(real) // 2],
    "torch-saved-list": lambda real, marker: _torch_bytes([1, 2, 3]),
    "pickled-list-protocol-2": lambda real, marker: pickle.dumps([1, 2, 3], protocol=2),
    "pickled-list": lambda real, marker: pickle.dumps([1, 2, 3]),
    "planted-pickle-protocol-2": lambda real, marker: pickle.dumps(_Planted(marker), protocol=2),
    "planted-pickle": lambda real, marker: pickle.dumps(_Planted(marker)),
    "planted-in-torch-zip": lambda real, marker: _torch_bytes({"format": "fireablate-checkpoint/2", "x": _Planted(marker)}),
}


def _train_on_damaged(tmp_path, real, case):
    out, marker = tmp_path / "run", tmp_path / "MARKER"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(DAMAGED[case](real, marker))
    result = run("train", *TINY_ARGS, *DATA_ARGS, "--epochs", "1", "--out", str(out), "--ledger", str(tmp_path / "l.csv"))
    return result, marker


@pytest.mark.parametrize("case", [c for c in DAMAGED if c.startswith("planted")])
def test_a_planted_checkpoint_runs_nothing(tmp_path, real_checkpoint, case):
    """Protects 'nothing executes from a file': a checkpoint.pt whose unpickling would run code is
    refused with an error (not 130, the code of an interrupt), and its code never runs."""
    result, marker = _train_on_damaged(tmp_path, real_checkpoint, case)
    assert not marker.exists(), "unpickling the checkpoint ran its code"
    assert result.exit_code not in (0, 130), result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert result.stderr.splitlines()[-1].startswith("fireablate: error: ")


@pytest.mark.parametrize("case", DAMAGED)
def test_a_damaged_checkpoint_is_one_line(tmp_path, real_checkpoint, case, terminal_warnings):
    """Protects 'damaged files are one line': a checkpoint that is empty, truncated, random or not
    a fireablate checkpoint is one error line, exit 1, saying which file and what to do."""
    result, _ = _train_on_damaged(tmp_path, real_checkpoint, case)
    line = one_line_error(result, 1)
    assert "checkpoint.pt is damaged or not a fireablate checkpoint" in line and "delete it" in line


def test_a_planted_checkpoint_runs_nothing_in_a_real_process(tmp_path, real_checkpoint):
    """The same guarantee end to end, as a user meets it: python -m fireablate, its real console."""
    out, marker = tmp_path / "run", tmp_path / "MARKER"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(_torch_bytes({"x": _Planted(marker)}))
    result = subprocess.run([sys.executable, "-m", "fireablate", "train", *TINY_ARGS, *DATA_ARGS, "--epochs", "1",
                             "--out", str(out), "--ledger", str(tmp_path / "l.csv")], capture_output=True, text=True)
    assert not marker.exists()
    assert "damaged or not a fireablate checkpoint" in one_line_error(result, 1)


def test_a_finished_run_whose_row_never_landed_gets_it_on_rerun(tmp_path):
    """Protects 'no row lost': a run that finished but whose ledger append failed (a full disk, a
    kill while waiting for the lock) is recorded by the next identical command, once."""
    out, lost, ledger = tmp_path / "run", tmp_path / "lost.csv", tmp_path / "ledger.csv"
    first = run("train", *TINY_ARGS, *DATA_ARGS, "--epochs", "1", "--out", str(out), "--ledger", str(lost))
    assert first.exit_code == 0, first.output
    lost.unlink()  # as if the append had never landed
    again = run("train", *TINY_ARGS, *DATA_ARGS, "--epochs", "1", "--out", str(out), "--ledger", str(ledger))
    assert again.exit_code == 0 and "its row was missing" in again.stdout
    rows = L.read(ledger).rows
    assert len(rows) == 1 and rows[0]["status"] == "done" and rows[0]["epochs"] == 1
    third = run("train", *TINY_ARGS, *DATA_ARGS, "--epochs", "1", "--out", str(out), "--ledger", str(ledger))
    assert third.exit_code == 0 and "already done" in third.stdout and len(L.read(ledger).rows) == 1
