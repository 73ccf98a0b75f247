"""Judge one trained network by the mean logits over several views of each test image.

    python benchmarks/tta_views.py MODEL.pt --data FOLDER [--precision bf16] [--json FILE]

MODEL.pt is any fireablate model file (a run's best.pt or last.pt, ``fast_recipe.py --save``).
The views are the image and its mirror, each also moved by one pixel (``augment.move``: zero
padding after normalization, the mean colour, as ``flipcrop`` pads in training); the ``fast``
recipe's test-time views are one of these sets (``augment.eval_views``). Each view is computed once
and every set of views is then scored from those logits, so the sets are compared on one network
without seed noise. Which set wins is chosen on the test split here: a candidate for the
``fast`` recipe, to be measured on the 20k subset before it goes in (README: "The fast recipe").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from fireablate.augment import DIAGONAL_MOVES as DIAGONAL, move  # noqa: E402
from fireablate.data import load  # noqa: E402
from fireablate.devices import resolve_device, resolve_precision  # noqa: E402
from fireablate.model import load_model  # noqa: E402

AXES = ((0, 1), (0, -1), (1, 0), (-1, 0))


def view_sets() -> dict[str, list[tuple[bool, int, int]]]:
    """Named sets of views, each a (mirrored, dy, dx)."""
    both = lambda moves: [(m, dy, dx) for m in (False, True) for dy, dx in moves]  # noqa: E731
    return {"plain": [(False, 0, 0)], "flip": both([(0, 0)]), "flip + 2 diagonal": both([(0, 0), *DIAGONAL[:2]]),
            "flip + 4 diagonal": both([(0, 0), *DIAGONAL]), "flip + 4 axis": both([(0, 0), *AXES]),
            "flip + 8": both([(0, 0), *DIAGONAL, *AXES])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--data", required=True, help="a folder with train/ and test/ (ImageFolder layout), or 'synthetic'")
    ap.add_argument("--limit-test", type=int)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)[0]
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    model, _ = load_model(args.model)
    model = model.to(device, memory_format=torch.channels_last).eval()
    data = load(args.data, limit_test=args.limit_test)
    mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in data.channel_stats())
    views = sorted({v for vs in view_sets().values() for v in vs})
    logits: dict[tuple[bool, int, int], list[torch.Tensor]] = {v: [] for v in views}
    t0 = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        for i in range(0, len(data.test_y), args.batch):
            x = (data.test_x[i:i + args.batch].to(device).float() / 255 - mean) / std
            for mirrored, dy, dx in views:
                v = move(x.flip(3) if mirrored else x, dy, dx)
                logits[(mirrored, dy, dx)].append(model(v.contiguous(memory_format=torch.channels_last)).float().cpu())
    seconds = time.perf_counter() - t0
    y = data.test_y
    stacked = {v: torch.cat(parts) for v, parts in logits.items()}
    results = {name: (sum(stacked[v] for v in vs).argmax(1) == y).float().mean().item()
               for name, vs in view_sets().items()}
    print(f"{args.model}: {len(y)} test images, {len(views)} views, {device} {precision}, {seconds:.0f} s")
    for name, acc in results.items():
        print(f"{name:>18}: {acc:.2%}")
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "n_test": len(y), "precision": precision,
                                         "accuracy": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
