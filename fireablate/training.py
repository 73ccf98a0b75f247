"""One training run: ``train(spec, config) -> TrainResult``, resumable and reproducible.

The dataset sits on the training device as one uint8 tensor; a step is a slice of a shuffled
index, normalized and augmented as a whole batch. Each epoch ends with an atomic checkpoint, so a
run killed at any moment continues from its last finished epoch with the same result it would
have had (on the CPU bit for bit, on CUDA with ``--deterministic``: every random stream is saved).

Read top-down: ``train`` is the story; ``_prepare`` fixes everything that does not change during
the run, ``_Session`` holds what does (model, optimizer, schedule, random streams) and turns it
into a ``Checkpoint`` and back, ``_train_epoch`` and ``_evaluate`` do the work.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from . import __version__
from . import spec as S
from .augment import augment, eval_views
from .config import (MIN_LR, PLATEAU_FACTOR, PLATEAU_PATIENCE, STEP_MILESTONES, WARMUP_EPOCHS, Recipe,
                     TrainConfig, TrainResult, run_id)
from .data import ImageData, load as load_data
from .devices import keep_cpu_memory, resolve_device, resolve_precision
from .errors import FireablateError, UsageError
from .files import atomic_torch_save, atomic_write, remove_stale_temporaries
from .model import build, load_model, save_model
from .params import Count, count

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_sec", "tflops"]
CHECKPOINT_FORMAT = "fireablate-checkpoint/2"
RUN_CARD = "run.json"  # marks a folder as a fireablate run folder, and says how the run was made
Progress = Callable[..., None]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# The story


def train(
    spec: S.NetSpec,
    config: TrainConfig,
    out_dir: Path | None = None,
    data: ImageData | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    default_root: Path | None = None,
) -> TrainResult:
    """Train ``spec`` as ``config`` says; write checkpoints, weights and history to ``out_dir``.

    ``data`` lets a sweep load its dataset once; ``progress(event, **info)`` is told of the start,
    each step and each epoch. An existing checkpoint in ``out_dir`` for the same run is continued
    (``resume=True`` insists that there is one); a run that had finished is returned at once with
    ``finished_before`` set. Without ``out_dir`` the run goes to ``default_root/RUN_ID``
    (default ``runs/RUN_ID``). The caller holds the run folder's lock (``sweep.record_run``).
    """
    notify = progress or (lambda event, **info: None)
    setup = _prepare(spec, config, data, out_dir, default_root)
    checkpoint = Checkpoint.load(setup.out / "checkpoint.pt", setup.run_id) if _has_checkpoint(setup.out) else None
    if checkpoint is None and resume:
        raise UsageError(f"--resume: no checkpoint in {setup.out}")
    if checkpoint is not None and checkpoint.result is not None:
        notify("finished_before", run_id=setup.run_id, out_dir=str(setup.out))
        return TrainResult.from_dict(checkpoint.result, finished_before=True)
    _claim_folder(setup)
    session = _Session(setup)
    if checkpoint is not None:
        session.restore(checkpoint)
    notify("start", run_id=setup.run_id, epochs=setup.recipe.epochs, start_epoch=session.epoch,
           steps=setup.steps_per_epoch, device=str(setup.device), precision=setup.precision,
           precision_reason=setup.precision_reason, out_dir=str(setup.out), n_train=setup.n_train,
           n_test=setup.n_test, recipe=setup.recipe, params=setup.counts.params)
    status, message = _run_epochs(setup, session, _Inputs(setup), notify)
    result = _result(setup, session, status, message)
    session.checkpoint(result).save(setup.out / "checkpoint.pt")
    save_model(setup.out / "last.pt", session.model, {"epoch": session.epoch})
    atomic_write(setup.out / "result.json", json.dumps(result.to_dict(), indent=2, default=str))
    return result


def _run_epochs(setup: _Setup, session: _Session, inputs: _Inputs, notify: Progress) -> tuple[str, str]:
    """Epochs until the recipe's last, an early stop or a divergence: (status, message)."""
    while session.epoch < setup.recipe.epochs:
        epoch = session.epoch
        stats = _train_epoch(setup, session, inputs, notify)
        if isinstance(stats, str):
            return "diverged", stats
        val_loss, val_acc = _evaluate(setup, session.model, inputs)
        if not math.isfinite(val_loss):
            return "diverged", f"validation loss became {val_loss} at epoch {epoch + 1}"
        row = {**stats, "epoch": epoch + 1, "val_loss": val_loss, "val_acc": val_acc}
        stop = session.end_epoch(row)
        _write_history(setup.out / "history.csv", session.history)
        if session.best_epoch == epoch + 1:
            save_model(setup.out / "best.pt", session.model, {"epoch": epoch + 1, "val_acc": val_acc})
        if stop or session.epoch == setup.recipe.epochs:
            notify("epoch", **row, best_epoch=session.best_epoch, stopping=stop)
            break
        session.checkpoint().save(setup.out / "checkpoint.pt")
        notify("epoch", **row, best_epoch=session.best_epoch, stopping=stop)
    stopped = session.epoch < setup.recipe.epochs
    return "done", f"early stop: val loss did not improve for {setup.recipe.early_stop} epochs" if stopped else ""


# ---------------------------------------------------------------------------------------------
# What stays fixed during a run


@dataclass(frozen=True)
class _Setup:
    spec: S.NetSpec
    config: TrainConfig
    recipe: Recipe
    data: ImageData
    device: torch.device
    precision: str
    precision_reason: str
    run_id: str
    out: Path
    counts: Count
    steps_per_epoch: int
    batch_size: int
    eval_batch: int

    @property
    def n_train(self) -> int:
        return len(self.data.train_y)

    @property
    def n_test(self) -> int:
        return len(self.data.test_y)


def _prepare(spec, config, data, out_dir, default_root) -> _Setup:
    device = resolve_device(config.device)
    precision, reason = resolve_precision(config.precision, device)
    spec.layers()  # a bad spec fails before any data moves
    if data is None:
        data = load_data(config.data, Path(config.data_dir) if config.data_dir else None,
                         config.limit_train, config.limit_test)
    _check_fits(spec, data)
    rid = run_id(spec, config, data.identity)
    out = Path(out_dir) if out_dir else Path(default_root or "runs") / rid
    counts = count(spec)
    n_train = len(data.train_y)
    # The last partial batch is dropped: every step has the same shape, so a compiled model is
    # never recompiled and batch norm never sees a batch of a few images.
    batch = min(config.resolved_recipe.batch_size, n_train)
    _configure_backends(device, config.deterministic)
    return _Setup(spec, config, config.resolved_recipe, data, device, precision, reason, rid, out, counts,
                  n_train // batch, batch, _eval_batch(counts, device, batch))


def _check_fits(spec: S.NetSpec, data: ImageData) -> None:
    if data.image_shape != (spec.in_channels, spec.input_size, spec.input_size):
        c, h, w = data.image_shape
        raise UsageError(
            f"{spec.name} expects {spec.in_channels}x{spec.input_size}x{spec.input_size} inputs but the "
            f"{data.source} images are {c}x{h}x{w}; set --in-channels/--input-size"
        )
    if len(data.classes) != spec.num_classes:
        raise UsageError(f"{spec.name} has {spec.num_classes} classes but the data has {len(data.classes)}; set --num-classes")


def _eval_batch(counts: Count, device: torch.device, train_batch: int) -> int:
    """Evaluation images per forward pass, sized by activation memory rather than fixed.

    Every layer's output is counted as if all were alive at once (an overestimate), against a
    budget of 512 MiB on a CPU (which shares its memory with everything else) and 2 GiB on a GPU.
    """
    floats = sum(r.out_channels * (r.out_size or 1) ** 2 for r in counts.rows)
    budget = (2 << 30) if device.type == "cuda" else (512 << 20)
    return max(train_batch, min(4096, budget // max(1, 4 * floats)))


def _configure_backends(device: torch.device, deterministic: bool) -> None:
    if deterministic:
        # cuBLAS needs this workspace setting for reproducible matmuls; it is read when CUDA starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every step has the same shape: tune once
    if device.type == "cpu":
        keep_cpu_memory()


def _has_checkpoint(out: Path) -> bool:
    return (out / "checkpoint.pt").is_file()


def _claim_folder(setup: _Setup) -> None:
    """Refuse a folder that is not this run's; then record how the run was made (``run.json``)."""
    out, card = setup.out, setup.out / RUN_CARD
    if card.is_file():
        try:
            owner = json.loads(card.read_text()).get("run_id")
        except (OSError, ValueError, AttributeError):
            owner = None
        if owner != setup.run_id:
            raise UsageError(f"{out} holds a different run (or an unknown file); choose another --out")
    elif out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise UsageError(f"{out} is not empty and is not a fireablate run folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    if not card.is_file():
        atomic_write(card, json.dumps(provenance(setup.run_id), indent=2))


def provenance(rid: str) -> dict[str, Any]:
    """How a run was made: the command, fireablate's version and git commit, the host, the time."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD")
    if commit and git("status", "--porcelain", "--untracked-files=no", "--", "."):
        commit += "-dirty"  # the code that ran is not exactly that commit
    return {"run_id": rid, "command": sys.argv, "fireablate_version": __version__, "git_commit": commit,
            "torch_version": torch.__version__, "host": socket.gethostname(), "started": _now()}


# ---------------------------------------------------------------------------------------------
# What changes during a run, and its checkpoint


@dataclass
class Checkpoint:
    """Everything a run needs to continue exactly where it stopped; save and load are symmetric.

    Only tensors and plain data go in, so loading needs no pickle (``weights_only=True``): a
    planted checkpoint cannot run code.
    """

    run_id: str
    epoch: int
    model: dict
    optimizer: dict
    scaler: dict
    schedule: dict
    history: list
    train_time: float
    best_epoch: int
    started: str
    rng: dict  # every random stream: torch's, CUDA's, the shuffle's and the augmentation's
    result: dict | None = None  # set once the run has finished

    def save(self, path: Path) -> None:
        atomic_torch_save({"format": CHECKPOINT_FORMAT, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}, path)

    @classmethod
    def load(cls, path: Path, rid: str) -> "Checkpoint":
        damaged = f"{path} is damaged or not a fireablate checkpoint; delete it to train the run from the start"
        try:
            with warnings.catch_warnings():  # torch's own warnings about a foreign file add lines
                warnings.simplefilter("ignore")
                raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # truncated, empty, random bytes, or a pickle of something else
            raise FireablateError(damaged) from None
        if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
            raise FireablateError(damaged)
        if raw.get("run_id") != rid:
            raise UsageError(f"{path.parent} holds a different run (or an unknown file); choose another --out")
        try:
            return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls)})
        except (KeyError, TypeError):
            raise FireablateError(damaged) from None


class _Session:
    """The model, optimizer, schedule and random streams of one run, and its history so far."""

    def __init__(self, setup: _Setup):
        config, recipe, device = setup.config, setup.recipe, setup.device
        self.setup = setup
        if config.init:
            self.model, _ = load_model(Path(config.init))
            if self.model.spec != setup.spec:
                raise UsageError(f"{config.init} holds a different network than the one asked for")
        else:
            self.model = build(setup.spec, seed=config.seed)
        torch.manual_seed(config.seed)
        self.model.to(device=device, memory_format=torch.channels_last)
        self.optimizer = _optimizer(self.model, recipe, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=setup.precision == "fp16")
        self.schedule = _Schedule(recipe, setup.steps_per_epoch)
        self.shuffle_gen = torch.Generator().manual_seed(config.seed)
        self.aug_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.compiling = config.compile  # until the first step has run: it pays for the compilation
        self.epoch, self.train_time, self.best_epoch = 0, 0.0, 0
        self.history: list[dict[str, float]] = []
        self.started = _now()

    def end_epoch(self, row: dict[str, float]) -> bool:
        """Record a finished epoch; True when the recipe says stop."""
        if row["val_acc"] > max((h["val_acc"] for h in self.history), default=-1.0):
            self.best_epoch = row["epoch"]
        self.history.append({k: row[k] for k in HISTORY_FIELDS})
        self.train_time += row["seconds"]
        self.epoch += 1
        return self.schedule.end_epoch(row["val_acc"], row["val_loss"])

    def checkpoint(self, result: TrainResult | None = None) -> Checkpoint:
        device = self.setup.device
        rng = {"torch": torch.get_rng_state(), "shuffle": self.shuffle_gen.get_state(),
               "augment": self.aug_gen.get_state().cpu(),
               "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        return Checkpoint(self.setup.run_id, self.epoch, self.model.state_dict(), self.optimizer.state_dict(),
                          self.scaler.state_dict(), dict(self.schedule.state), self.history, self.train_time,
                          self.best_epoch, self.started, rng, result.to_dict() if result else None)

    def restore(self, ck: Checkpoint) -> None:
        try:
            self.model.load_state_dict(ck.model)
            self.optimizer.load_state_dict(ck.optimizer)
            self.scaler.load_state_dict(ck.scaler)
            torch.set_rng_state(ck.rng["torch"])
            self.shuffle_gen.set_state(ck.rng["shuffle"])
            self.aug_gen.set_state(ck.rng["augment"])  # a CPU byte tensor, for a CUDA generator too
            if self.setup.device.type == "cuda" and ck.rng.get("cuda") is not None:
                torch.cuda.set_rng_state(ck.rng["cuda"], self.setup.device)
        except (RuntimeError, KeyError, TypeError, ValueError, AttributeError):
            raise FireablateError(f"{self.setup.out / 'checkpoint.pt'} does not fit this run; delete it to start over") from None
        self.schedule.state = dict(ck.schedule)
        self.history, self.epoch, self.train_time = list(ck.history), ck.epoch, ck.train_time
        self.best_epoch, self.started = ck.best_epoch, ck.started


def _optimizer(model: torch.nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    # Weight decay on conv and dense weights only, never on biases or batch norm.
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            is_weight = name == "weight" and isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))
            (decay if is_weight else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # Fused kernels on CUDA: one launch per step, and the gradient scaler needs no host sync.
    fused = {"fused": True} if device.type == "cuda" else {}
    if recipe.optimizer == "adam":
        return torch.optim.Adam(groups, lr=recipe.lr, eps=recipe.adam_eps, **fused)
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, nesterov=True, **fused)


class _Schedule:
    """The recipe's learning rate and stopping rule, with its state saved in every checkpoint."""

    def __init__(self, recipe: Recipe, steps_per_epoch: int):
        self.r, self.steps_per_epoch = recipe, steps_per_epoch
        self.state = {"lr": recipe.lr, "best_acc": -1.0, "acc_wait": 0, "best_loss": math.inf, "loss_wait": 0}

    def lr_at_step(self, epoch: int, step: int) -> float:
        r = self.r
        if r.schedule == "warmup_linear":
            total = r.epochs * self.steps_per_epoch
            warm = min(WARMUP_EPOCHS * self.steps_per_epoch, total // 4) or 1
            t = epoch * self.steps_per_epoch + step + 1
            return r.lr * (t / warm if t <= warm else max(0.0, (total - t) / max(1, total - warm)))
        if r.schedule == "step":
            lr = r.lr
            for done, value in STEP_MILESTONES:
                if epoch >= done:
                    lr = value
            return lr
        return self.state["lr"]

    def end_epoch(self, val_acc: float, val_loss: float) -> bool:
        """Update on the epoch's validation; True when the run should stop early."""
        s = self.state
        if val_acc > s["best_acc"] + self.r.plateau_min_delta:
            s["best_acc"], s["acc_wait"] = val_acc, 0
        else:
            s["acc_wait"] += 1
            if self.r.schedule == "plateau" and s["acc_wait"] >= PLATEAU_PATIENCE:
                s["lr"], s["acc_wait"] = max(s["lr"] * PLATEAU_FACTOR, MIN_LR), 0
        if val_loss < s["best_loss"]:
            s["best_loss"], s["loss_wait"] = val_loss, 0
        else:
            s["loss_wait"] += 1
        return self.r.early_stop is not None and s["loss_wait"] >= self.r.early_stop


# ---------------------------------------------------------------------------------------------
# The work


class _Inputs:
    """The dataset on the training device, normalized per batch with the training set's statistics."""

    def __init__(self, setup: _Setup):
        d, device = setup.data, setup.device
        mean, std = d.channel_stats()
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.train_x, self.train_y = d.train_x.to(device), d.train_y.to(device)
        self.test_x, self.test_y = d.test_x.to(device), d.test_y.to(device)
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(setup.precision)
        self.autocast = lambda: torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)

    def normalize(self, x_u8: torch.Tensor) -> torch.Tensor:
        x = (x_u8.float().div_(255) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)


def _train_epoch(setup: _Setup, s: _Session, inputs: _Inputs, notify: Progress) -> dict[str, float] | str:
    """One epoch of steps: the epoch's training statistics, or why it diverged."""
    device, batch, steps = setup.device, setup.batch_size, setup.steps_per_epoch
    s.model.train()
    perm = torch.randperm(setup.n_train, generator=s.shuffle_gen).to(device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    t0 = time.perf_counter()
    compile_seconds = 0.0
    lr = s.schedule.lr_at_step(s.epoch, 0)
    for step in range(steps):
        lr = s.schedule.lr_at_step(s.epoch, step)
        for g in s.optimizer.param_groups:
            g["lr"] = lr
        idx = perm[step * batch:(step + 1) * batch]
        x = augment(inputs.normalize(inputs.train_x[idx]), setup.recipe.augment, s.aug_gen, setup.recipe.crop_pad)
        y = inputs.train_y[idx]
        with inputs.autocast():
            logits = s.forward(x.contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(logits.float(), y, label_smoothing=setup.recipe.label_smoothing)
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(loss).backward()
        s.scaler.step(s.optimizer)
        s.scaler.update()
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        # a sync every step would stall a GPU; every 20 steps is soon enough to stop
        if (step % 20 == 19 or step == steps - 1) and not torch.isfinite(loss_sum):
            return f"loss became {loss.item()} at epoch {s.epoch + 1}, step {step + 1} (lr {lr:g})"
        if s.compiling:  # time the compilation apart, so images/s is the steady speed
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            compile_seconds, s.compiling = time.perf_counter() - t0, False
            notify("compiled", seconds=compile_seconds)
        notify("step", epoch=s.epoch, step=step + 1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    seen = steps * batch
    steady = (seen - batch, seconds - compile_seconds) if compile_seconds and steps > 1 else (seen, seconds)
    flops_per_image = 3 * 2 * setup.counts.macs  # forward, plus backward at about twice the forward
    speed = steady[0] / steady[1]
    return {"train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen, "lr": lr, "seconds": seconds,
            "images_per_sec": speed, "tflops": speed * flops_per_image / 1e12}


def _evaluate(setup: _Setup, model: torch.nn.Module, inputs: _Inputs) -> tuple[float, float]:
    """(loss, accuracy) on the validation split, in batches sized by memory, of each image's logits
    averaged over the recipe's test-time views (``augment.eval_views``: mirror, one-pixel moves)."""
    model.eval()
    loss_sum = torch.zeros((), device=setup.device)
    correct = torch.zeros((), device=setup.device, dtype=torch.int64)
    with torch.no_grad():
        for i in range(0, setup.n_test, setup.eval_batch):
            x, y = inputs.normalize(inputs.test_x[i:i + setup.eval_batch]), inputs.test_y[i:i + setup.eval_batch]
            with inputs.autocast():
                views = eval_views(x, setup.recipe.tta_flip, setup.recipe.tta_moves)
                logits = sum(model(v.contiguous(memory_format=torch.channels_last)).float() for v in views) / len(views)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
    return loss_sum.item() / setup.n_test, correct.item() / setup.n_test


# ---------------------------------------------------------------------------------------------
# Outputs


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write(path, buf.getvalue(), durable=False)  # the checkpoint holds it too


def _result(setup: _Setup, s: _Session, status: str, message: str) -> TrainResult:
    best = s.history[s.best_epoch - 1] if s.best_epoch else {}
    last = s.history[-1] if s.history else {}
    images = len(s.history) * setup.steps_per_epoch * setup.batch_size
    return TrainResult(
        run_id=setup.run_id, status=status, message=message, spec=setup.spec, config=setup.config,
        data_source=setup.data.source, data_identity=setup.data.identity, n_train=setup.n_train,
        n_test=setup.n_test, epochs=len(s.history), best_epoch=s.best_epoch,
        best_val_acc=best.get("val_acc", math.nan), best_val_loss=best.get("val_loss", math.nan),
        final_val_acc=last.get("val_acc", math.nan), final_val_loss=last.get("val_loss", math.nan),
        train_time_s=s.train_time, images_per_sec=images / s.train_time if s.train_time else math.nan,
        params=setup.counts.params, mib=setup.counts.mib(), macs=setup.counts.macs, device=str(setup.device),
        precision=setup.precision, out_dir=str(setup.out), started=s.started, ended=_now(), history=s.history,
    )
