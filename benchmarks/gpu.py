"""Training images per second of a preset on a CUDA GPU: batch sizes, eager vs torch.compile.

    python benchmarks/gpu.py [--preset cifar] [--batches 128,512,1024] [--precision bf16]
                             [--augment study] [--optimizer adam] [--seconds 3] [--markdown FILE]

Each configuration times the training step that ``fireablate.training`` runs (``_train_epoch``):
a slice of a shuffled index into a uint8 dataset already on the GPU, normalization, the
augmentation on the whole batch, autocast forward, cross-entropy, backward and a fused optimizer
step, channels_last throughout, the model compiled with plain ``torch.compile`` when asked (as
``--compile`` does). The data are fireablate's synthetic 32x32 images: the speed of a step does
not depend on what the pixels show.

Timing: eager runs 10 warm-up steps (cuDNN picks its algorithms, as ``cudnn.benchmark`` is on in
training), then steps for about ``--seconds`` seconds, synchronized before the clock is read.
A compiled run is timed in two parts: "compile" is the wall time of its first step (tracing,
Inductor and Triton compilation for that batch shape, plus the step itself, each batch size
compiled from scratch after ``torch._dynamo.reset()``), then 10 warm-up steps and the same
steady-state timing as eager. TFLOP/s counts training as 3x the forward pass (FLOPs = 2 x MACs),
as the training log does.

End to end (``--data PATH``, a folder with train/ and test/, e.g. the full CIFAR-10 JPEG set
extracted): ``--time-to 0.88`` trains the ``cifar`` preset with ``--recipe fast`` and reports the
first epoch whose validation accuracy reaches 88%, with training seconds and wall seconds from
the start of ``train`` (data loading, compilation and evaluation included); ``--sweep`` times
``fireablate sweep --param sr`` over the study's five values with ``--gpus 0`` from a fresh
ledger, as a user would run it. ``--device cpu`` runs these two on the CPU, so the code can be
tried anywhere; the device is printed with every figure.

Without a CUDA GPU (and without ``--device cpu``) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_speed import cpu_name  # noqa: E402  (this folder is on sys.path when run as a script)

from fireablate import __version__  # noqa: E402
from fireablate import data as D  # noqa: E402
from fireablate.augment import augment  # noqa: E402
from fireablate.config import AUGMENTS  # noqa: E402
from fireablate.model import build  # noqa: E402
from fireablate.params import count  # noqa: E402
from fireablate.presets import resolve  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
WARMUP_STEPS = 10


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cifar")
    p.add_argument("--batches", default="128,512,1024", help="comma-separated batch sizes")
    p.add_argument("--precision", default="bf16", choices=tuple(DTYPES))
    p.add_argument("--augment", default="study", choices=AUGMENTS)
    p.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    p.add_argument("--modes", default="eager,compile", help="eager, compile or both")
    p.add_argument("--seconds", type=float, default=3.0, help="steady-state time per configuration")
    p.add_argument("--markdown", type=Path, help="also write the table to this file")
    p.add_argument("--data", help="end to end: an image folder with train/ and test/ (the full CIFAR-10 set)")
    p.add_argument("--time-to", type=float, metavar="ACC", help="end to end: epochs and seconds to this val accuracy")
    p.add_argument("--epochs", type=int, default=15, help="end to end: the fast recipe's epochs")
    p.add_argument("--sweep", action="store_true", help="end to end: time the SR sweep with --gpus 0")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu only to try the end-to-end code")
    return p.parse_args(argv)


SR_VALUES = "0.125,0.25,0.5,0.75,1.0"  # the study's Fig. 4


def time_to_accuracy(args: argparse.Namespace) -> list[str]:
    """Train the cifar preset with the fast recipe on --data; the first epoch at --time-to."""
    from fireablate.config import TrainConfig
    from fireablate.training import train

    cfg = TrainConfig(data=args.data, recipe="fast", epochs=args.epochs, device=args.device, precision="auto")
    marks: list[float] = []
    start = time.perf_counter()

    def progress(event: str, **info) -> None:
        if event == "epoch":
            marks.append(time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as out:
        result = train(resolve("cifar"), cfg, out_dir=Path(out), progress=progress)
    lines = [f"fast recipe, cifar preset, {args.epochs} epochs on {args.data} ({result.precision}, {args.device}):"]
    trained = 0.0
    for h, wall in zip(result.history, marks):
        trained += h["seconds"]
        lines.append(f"  epoch {h['epoch']:3d}  val {h['val_acc']:.2%}  trained {trained:7.1f} s  wall {wall:7.1f} s")
    hit = next((i for i, h in enumerate(result.history) if h["val_acc"] >= args.time_to), None)
    if hit is None:
        lines.append(f"  {args.time_to:.0%} not reached in {args.epochs} epochs (best {result.best_val_acc:.2%})")
    else:
        h = result.history[hit]
        trained = sum(r["seconds"] for r in result.history[:hit + 1])
        lines.append(f"  {args.time_to:.0%} first reached at epoch {h['epoch']}: {trained:.1f} s of training, "
                     f"{marks[hit]:.1f} s wall")
    return lines


def sweep_time(args: argparse.Namespace) -> list[str]:
    """The whole SR sweep through the CLI, one worker on GPU 0 (or the CPU), from a fresh ledger."""
    device = ["--gpus", "0"] if args.device == "cuda" else ["--device", "cpu"]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "fireablate", "sweep", "--param", "sr", "--values", SR_VALUES,
               "--data", args.data, "--recipe", "fast", "--epochs", str(args.epochs),
               "--ledger", str(Path(tmp) / "ledger.csv"), *device]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            return [f"sweep failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}"]
        table = subprocess.run([sys.executable, "-m", "fireablate", "report", "--ledger", str(Path(tmp) / "ledger.csv")],
                               capture_output=True, text=True).stdout
    return [f"SR sweep ({SR_VALUES}), fast recipe, {args.epochs} epochs each, {' '.join(device)}: "
            f"{wall:.0f} s wall for 5 models", table.rstrip()]


def end_to_end(args: argparse.Namespace) -> int:
    if not Path(args.data).is_dir():
        print(f"benchmarks/gpu.py: --data {args.data}: not a folder with train/ and test/")
        return 2
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU ({cpu_name()})"
    print(f"device: {where}; torch {torch.__version__}; fireablate {__version__}", flush=True)
    if args.time_to is not None:
        print("\n".join(time_to_accuracy(args)), flush=True)
    if args.sweep:
        print("\n".join(sweep_time(args)), flush=True)
    return 0


class Bench:
    """One configuration's model, optimizer and data, stepping as fireablate.training does."""

    def __init__(self, spec, data: D.ImageData, batch: int, args: argparse.Namespace, compiled: bool):
        self.device = torch.device("cuda")
        self.batch, self.aug = batch, args.augment
        self.model = build(spec, seed=0).to(self.device, memory_format=torch.channels_last).train()
        cls = torch.optim.Adam if args.optimizer == "adam" else torch.optim.SGD
        extra = {} if args.optimizer == "adam" else {"momentum": 0.9, "nesterov": True}
        self.opt = cls(self.model.parameters(), lr=1e-3 if args.optimizer == "adam" else 0.01, fused=True, **extra)
        dtype = DTYPES[args.precision]
        self.scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)
        self.autocast = lambda: torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None)
        self.forward = torch.compile(self.model) if compiled else self.model
        self.x, self.y = data.train_x.to(self.device), data.train_y.to(self.device)
        mean, std = data.channel_stats()
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.gen = torch.Generator(device=self.device).manual_seed(1)
        self.shuffle = torch.Generator().manual_seed(0)
        self.perm, self.pos = None, len(self.y)

    def step(self) -> None:
        if self.pos + self.batch > len(self.y):  # a new epoch: a fresh shuffle, the partial batch dropped
            self.perm, self.pos = torch.randperm(len(self.y), generator=self.shuffle).to(self.device), 0
        idx = self.perm[self.pos:self.pos + self.batch]
        self.pos += self.batch
        x = (self.x[idx].float().div_(255) - self.mean) / self.std
        x = augment(x.contiguous(memory_format=torch.channels_last), self.aug, self.gen)
        with self.autocast():
            logits = self.forward(x.contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(logits.float(), self.y[idx])
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()

    def steady(self, seconds: float) -> tuple[float, int]:
        """Seconds per step over about ``seconds`` of steps (after the warm-up), and the steps timed."""
        for _ in range(WARMUP_STEPS):
            self.step()
        torch.cuda.synchronize()
        # a short probe sizes the timed run, so every configuration is timed for about as long
        t = time.perf_counter()
        for _ in range(5):
            self.step()
        torch.cuda.synchronize()
        steps = max(20, int(seconds / max(1e-6, (time.perf_counter() - t) / 5)))
        t = time.perf_counter()
        for _ in range(steps):
            self.step()
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / steps, steps


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.data and args.device == "cpu":
        return end_to_end(args)
    if not torch.cuda.is_available():
        print(f"benchmarks/gpu.py: no CUDA GPU on this machine (torch {torch.__version__}); nothing to measure.")
        return 0
    if args.data:
        return end_to_end(args)
    spec = resolve(args.preset)
    macs = count(spec).macs
    batches = [int(b) for b in args.batches.split(",")]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    torch.backends.cudnn.benchmark = True  # as fireablate.training does when not deterministic
    data = D.synthetic(n_train=max(4096, 4 * max(batches)), n_test=16)
    props = torch.cuda.get_device_properties(0)
    header = [
        f"device: {torch.cuda.get_device_name(0)} (compute capability {props.major}.{props.minor}, "
        f"{props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB)",
        f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), "
        f"fireablate {__version__}, Python {platform.python_version()}",
        f"preset {args.preset}: {count(spec).params:,} parameters, {macs / 1e6:.1f} M MACs per image; "
        f"{args.precision} autocast, {args.optimizer} (fused), augment {args.augment}, channels_last",
    ]
    for line in header:
        print(line, flush=True)
    rows, eager_rate = [], {}
    for batch in batches:
        for mode in modes:
            torch._dynamo.reset()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            bench = Bench(spec, data, batch, args, compiled=mode == "compile")
            compile_s = float("nan")
            if mode == "compile":
                t = time.perf_counter()
                bench.step()
                torch.cuda.synchronize()
                compile_s = time.perf_counter() - t
            per_step, steps = bench.steady(args.seconds)
            rate = batch / per_step
            if mode == "eager":
                eager_rate[batch] = rate
            vs = rate / eager_rate[batch] if batch in eager_rate else float("nan")
            row = {"batch": batch, "mode": mode, "compile_s": compile_s, "ms": per_step * 1e3, "steps": steps,
                   "rate": rate, "tflops": rate * 6 * macs / 1e12, "vs": vs,
                   "mem": torch.cuda.max_memory_allocated() / 2**30}
            rows.append(row)
            print(f"  batch {batch:5d} {mode:8s} compile {compile_s:6.1f} s  {row['ms']:7.2f} ms/step  "
                  f"{rate:10,.0f} images/s  {row['tflops']:6.1f} TFLOP/s  peak {row['mem']:.2f} GiB", flush=True)
            del bench

    def cell(v, fmt):
        return "-" if v != v else format(v, fmt)  # NaN: not applicable

    table = ["| batch | mode | compile (s) | ms/step | images/s | TFLOP/s | vs eager | peak memory (GiB) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        table.append(f"| {r['batch']} | {r['mode']} | {cell(r['compile_s'], '.1f')} | {r['ms']:.2f} | "
                     f"{r['rate']:,.0f} | {r['tflops']:.1f} | {cell(r['vs'], '.2f')}x | {r['mem']:.2f} |")
    text = "\n".join([*header, "", *table, ""])
    print()
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
