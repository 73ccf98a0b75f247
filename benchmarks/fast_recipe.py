"""Measure a change to the ``fast`` recipe: one training run, several ways of evaluating it.

    python benchmarks/fast_recipe.py --data FOLDER [--epochs 15] [--label-smoothing 0.2]
        [--lr 0.1] [--batch-size 128] [--weight-decay 5e-4] [--crop-pad 4] [--halflives 0.25,0.5,1,2]
        [--precision bf16] [--json FILE] [--save FOLDER]

Trains the ``cifar`` preset with ``--recipe fast`` (the recipe changed as the flags say) through
fireablate's own training step, while keeping one exponential moving average of the weights per
half-life asked for (in epochs). Every epoch it evaluates the weights as they
are; after the last it evaluates them and each average, with and without averaging the logits
of every test image and its mirror (as ``training._evaluate`` does for a recipe with
``tta_flip``), then again after re-estimating batch norm's statistics on 5,000 training images
without augmentation (``compress.recalibrate_batch_norm``). So the evaluation
changes the issue lists (weight average, flip averaging) are compared on one run, with no
seed-to-seed noise between them; a training change (label smoothing, lr, batch) takes a run each.

Nothing is written but the ``--json`` summary; the run is not resumable and not in a ledger.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from fireablate import training as T  # noqa: E402
from fireablate.compress import recalibrate_batch_norm  # noqa: E402
from fireablate.config import TrainConfig  # noqa: E402
from fireablate.model import save_model  # noqa: E402
from fireablate.presets import get_preset  # noqa: E402


class _Ema:
    """An exponential moving average of a network's weights and batch-norm statistics, updated
    after every step. The decay starts low, (1 + t) / (10 + t), and rises to the half-life's, so
    the random initial weights are soon forgotten."""

    def __init__(self, model: torch.nn.Module, halflife_steps: float):
        self.decay = 0.5 ** (1 / max(1.0, halflife_steps))
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.steps = 0
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))
        self.floats = [p for p in pairs if p[0].is_floating_point()]
        self.counts = [p for p in pairs if not p[0].is_floating_point()]  # batch norm's step counts

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_([e for e, _ in self.floats], [m for _, m in self.floats], 1 - decay)
        for e, m in self.counts:
            e.copy_(m)


def _accuracies(setup, model, inputs) -> tuple[float, float]:
    """Validation accuracy of the logits, and of their mean with the mirror images' (one pass each)."""
    model.eval()
    plain = flipped = 0
    with torch.no_grad():
        for i in range(0, setup.n_test, setup.eval_batch):
            x, y = inputs.normalize(inputs.test_x[i:i + setup.eval_batch]), inputs.test_y[i:i + setup.eval_batch]
            with inputs.autocast():
                logits, mirrored = model(x).float(), model(x.flip(3)).float()
            plain += (logits.argmax(1) == y).sum().item()
            flipped += ((logits + mirrored).argmax(1) == y).sum().item()
    return plain / setup.n_test, flipped / setup.n_test


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a folder with train/ and test/ (ImageFolder layout), or 'synthetic'")
    ap.add_argument("--limit-train", type=int)
    ap.add_argument("--limit-test", type=int)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--label-smoothing", type=float)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--weight-decay", type=float)
    ap.add_argument("--crop-pad", type=int, help="how many pixels flipcrop pads by (moves images by up to that)")
    ap.add_argument("--halflives", default="0.25,0.5,1", help="weight-average half-lives, in epochs")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--save", type=Path, help="a folder for the final weights and averages (fireablate model files)")
    args = ap.parse_args(argv)
    if args.crop_pad is not None and args.crop_pad < 0:
        ap.error(f"--crop-pad must be 0 or more, got {args.crop_pad}")

    config = TrainConfig(data=args.data, limit_train=args.limit_train, limit_test=args.limit_test, recipe="fast",
                         epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay,
                         seed=args.seed, precision=args.precision, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        setup = T._prepare(get_preset("cifar"), config, None, Path(tmp), None)
    recipe = dataclasses.replace(setup.recipe, tta_flip=False, tta_moves=0)  # it evaluates every way itself
    if args.label_smoothing is not None:
        recipe = dataclasses.replace(recipe, label_smoothing=args.label_smoothing)
    if args.crop_pad is not None:
        recipe = dataclasses.replace(recipe, crop_pad=args.crop_pad)
    setup = dataclasses.replace(setup, recipe=recipe)
    session, inputs = T._Session(setup), T._Inputs(setup)
    halflives = [float(h) for h in args.halflives.split(",") if h]
    emas = {h: _Ema(session.model, h * setup.steps_per_epoch) for h in halflives}

    def on_step(event: str, **info) -> None:
        if event == "step":
            for ema in emas.values():
                ema.update()

    settings = {k: getattr(recipe, k) for k in ("lr", "batch_size", "weight_decay", "label_smoothing", "crop_pad", "epochs")}
    print(f"{setup.n_train} training, {setup.n_test} test images; {setup.device} {setup.precision}; {settings}",
          flush=True)
    curve = []
    for epoch in range(recipe.epochs):
        t0 = time.perf_counter()
        stats = T._train_epoch(setup, session, inputs, on_step)
        if isinstance(stats, str):
            print(f"diverged: {stats}")
            return 1
        loss, acc = T._evaluate(setup, session.model, inputs)  # the recipe's test-time views are off here
        session.end_epoch({**stats, "epoch": epoch + 1, "val_loss": loss, "val_acc": acc})
        curve.append(acc)
        print(f"epoch {epoch + 1}: val {acc:.2%}  train {stats['train_acc']:.2%}  "
              f"{stats['images_per_sec']:.0f} img/s  {time.perf_counter() - t0:.0f} s", flush=True)
    final = {}
    models = [("weights", session.model)] + [(f"ema {h:g} epochs", e.model) for h, e in emas.items()]
    for name, model in models:
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            save_model(args.save / f"{name.replace(' ', '_')}.pt", model)  # for tta_views.py, train --init
        for recalibrated in (False, True):
            if recalibrated:  # batch norm's statistics re-estimated for these weights, without augmentation
                recalibrate_batch_norm(model, setup.data, setup.device, setup.batch_size, seed=args.seed)
            plain, flipped = _accuracies(setup, model, inputs)
            tag = name + (" + recalibrated" if recalibrated else "")
            final[tag], final[tag + " + flip"] = plain, flipped
    for name, acc in final.items():
        print(f"{name:>24}: {acc:.2%}")
    if args.json:
        args.json.write_text(json.dumps({"settings": settings, "n_train": setup.n_train, "n_test": setup.n_test,
                                         "precision": setup.precision, "curve": curve, "final": final}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
