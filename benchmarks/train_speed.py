"""Training images per second of the `cifar` preset on the real images: fireablate vs plain PyTorch.

    python benchmarks/train_speed.py [--images 2560] [--archive ../shared/data/cifar10-jpeg-20k.tar.gz]

All paths train the same network (same init, batch 128, Adam) on the same real CIFAR-10 JPEGs,
in one process, one after the other, so the ratios compare like with like on a noisy machine:

- baseline: torchvision ImageFolder + DataLoader with per-image transforms (RandomAffine as the
  study's augmentation, ToTensor, Normalize), contiguous fp32: the usual first PyTorch loop.
- fireablate fp32 / bf16: `fireablate.training.train` itself (one uint8 tensor, whole-batch
  augmentation, channels_last, freed memory kept for reuse), one warm-up epoch then one timed epoch.
- the baseline again, after fireablate has set glibc's allocator to keep freed memory: how much
  of the gain that one setting gives any PyTorch loop.

It also measures this machine's matmul peak (fp32 and bf16) and reports each path's achieved
TFLOP/s (training ~ 3 x forward FLOPs, FLOPs = 2 x MACs) as a fraction of it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fireablate.model import build  # noqa: E402
from fireablate.params import count  # noqa: E402
from fireablate.presets import resolve  # noqa: E402
from fireablate.devices import cpu_bf16_feature, resolve_precision  # noqa: E402
from fireablate.training import TrainConfig, train  # noqa: E402
from fireablate.data import extract_image_folder as extract_real_subset  # noqa: E402

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg-20k.tar.gz"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or "unknown"


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e12


def baseline(folder: Path, spec, images: int, batch: int, workers: int) -> float:
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        transforms.RandomAffine(degrees=20, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=0.5),
        transforms.ToTensor(),
        transforms.Normalize((0.491, 0.482, 0.447), (0.245, 0.243, 0.261)),
    ])
    ds = datasets.ImageFolder(str(folder / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
    model = build(spec, seed=0)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    steps = images // batch
    it = iter(loader)
    for i in range(steps + 3):  # 3 warm-up steps, then the timed ones
        if i == 3:
            t0 = time.perf_counter()
        x, y = next(it)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def fireablate_path(folder: Path, spec, images: int, batch: int, precision: str, compile_: bool) -> float:
    cfg = TrainConfig(data=str(folder), limit_train=images, limit_test=100, batch_size=batch, epochs=2,
                      recipe="step", augment="study", device="cpu", precision=precision, compile=compile_)
    with tempfile.TemporaryDirectory() as out:
        result = train(spec, cfg, out_dir=Path(out))
    return result.history[-1]["images_per_sec"]  # the second epoch: warm caches, compiled graphs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--images", type=int, default=2560, help="training images per timed pass")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for the baseline")
    parser.add_argument("--compile", action="store_true", help="also time fireablate with torch.compile")
    args = parser.parse_args()
    spec = resolve("cifar")
    flops_per_image = 6 * count(spec).macs
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FIREABLATE_CACHE"] = str(Path(tmp) / "cache")
        per_class = args.images // 10 + 3 * args.batch_size // 10 + 1  # room for the warm-up steps
        folder = extract_real_subset(args.archive, Path(tmp), train_per_class=per_class, test_per_class=10)
        peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
        rows = [("baseline: DataLoader + per-image transforms, fp32", "fp32",
                 baseline(folder, spec, args.images, args.batch_size, args.workers))]
        rows.append(("fireablate, fp32", "fp32", fireablate_path(folder, spec, args.images, args.batch_size, "fp32", False)))
        if cpu_bf16_feature():
            rows.append(("fireablate, bf16 autocast (auto here)", "bf16",
                         fireablate_path(folder, spec, args.images, args.batch_size, "bf16", False)))
        # fireablate keeps freed memory in the process (devices.keep_cpu_memory) once it trains on
        # the CPU; the same setting for the plain loop, so the gain is not mistaken for the tool's
        rows.append(("baseline again, with fireablate's allocator setting", "fp32",
                     baseline(folder, spec, args.images, args.batch_size, args.workers)))
        if args.compile:
            rows.append(("fireablate, bf16 + torch.compile", "bf16",
                         fireablate_path(folder, spec, args.images, args.batch_size, "bf16", True)))
    base = rows[0][2]
    print(f"CPU: {cpu_name()}; bf16 feature: {cpu_bf16_feature() or 'none'}; "
          f"auto precision here: {resolve_precision('auto', torch.device('cpu'))[0]}")
    print(f"cifar preset ({count(spec).params:,} parameters, {count(spec).macs / 1e6:.1f} M MACs/image), "
          f"batch {args.batch_size}, {args.images} real images per timed pass, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"matmul peak here: fp32 {peaks['fp32']:.2f} TFLOP/s, bf16 {peaks['bf16']:.2f} TFLOP/s\n")
    print("| path | images/s | vs baseline | TFLOP/s | of matmul peak |")
    print("|---|---:|---:|---:|---:|")
    for name, prec, ips in rows:
        tflops = ips * flops_per_image / 1e12
        print(f"| {name} | {ips:.1f} | {ips / base:.2f}x | {tflops:.3f} | {tflops / peaks[prec]:.0%} ({prec}) |")


if __name__ == "__main__":
    main()
