"""Everything about a training run but the network, torch-free: recipes, the run's config, its
id, and its result.

``TrainConfig`` declares each training option once, on its field (see ``options.py``): the CLI's
flags, the ledger's columns and the run's identity are derived from those declarations. A run's
id is a digest of the network (``spec.spec_identity``), the fields that define the experiment and
the data's identity, so the same command on the same data always names the same run.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import spec as S
from .errors import UsageError
from .options import Option, choice, option, options_of, optional, parse_bool, parse_float, parse_int, parse_str

AUGMENTS = ("study", "flipcrop", "none")  # what each does: augment.py
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# ---------------------------------------------------------------------------------------------
# Recipes


@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: str  # "adam" or "sgd" (Nesterov momentum 0.9)
    lr: float
    epochs: int
    weight_decay: float  # on conv and dense weights only, never on biases or batch norm
    label_smoothing: float
    augment: str  # the recipe's default; --augment overrides it
    schedule: str  # "plateau", "step" or "warmup_linear"
    early_stop: int | None  # stop after this many epochs without a lower val loss; None: never
    about: str
    batch_size: int = 128
    adam_eps: float = 1e-8  # torch's default; Keras' is 1e-7
    plateau_min_delta: float = 0.0  # how much val accuracy must rise to count as better
    # Scale lr linearly with --batch-size (lr x batch / batch_size) when --lr is not given: the
    # usual rule for SGD, so a GPU user can raise the batch without retuning.
    scale_lr_with_batch: bool = False


RECIPES: dict[str, Recipe] = {
    # The study's protocol, as Keras callbacks: ReduceLROnPlateau(val_acc, factor 0.5, patience 3,
    # min_lr 1e-6, and Keras' default min_delta 1e-4) and EarlyStopping(val_loss, patience 5), at
    # most 100 epochs. Keras' Adam has epsilon 1e-7. The study states no batch size, so it had
    # Keras' default for fit() on arrays: 32.
    "study": Recipe(
        name="study", optimizer="adam", lr=1e-3, epochs=100, weight_decay=0.0, label_smoothing=0.0,
        augment="study", schedule="plateau", early_stop=5, batch_size=32, adam_eps=1e-7, plateau_min_delta=1e-4,
        about="Adam 1e-3 (eps 1e-7); halve lr after 3 epochs without val accuracy 1e-4 better (floor 1e-6); "
              "stop after 5 epochs without lower val loss",
    ),
    # The study's schedule for its optimized model (Keras' LearningRateScheduler counts epochs
    # from 0: "from epoch 51" is index 50).
    "step": Recipe(
        name="step", optimizer="adam", lr=1e-3, epochs=100, weight_decay=0.0, label_smoothing=0.0,
        augment="study", schedule="step", early_stop=None, batch_size=32, adam_eps=1e-7,
        about="Adam (eps 1e-7); lr 1e-3, 1e-4 from epoch 51, 1e-5 from 71, 1e-6 from 86; no early stop",
    ),
    # Ours: the usual fast CIFAR recipe. A short linear warm-up avoids the early blow-up of a high
    # SGD lr on freshly initialized batch norm; the linear decay to zero anneals without tuning
    # milestones; label smoothing and flip+crop regularize a short run.
    "fast": Recipe(
        name="fast", optimizer="sgd", lr=0.1, epochs=30, weight_decay=5e-4, label_smoothing=0.1,
        augment="flipcrop", schedule="warmup_linear", early_stop=None, scale_lr_with_batch=True,
        about="SGD Nesterov 0.9, warm-up over 2 epochs then linear decay to 0, weight decay 5e-4, "
              "label smoothing 0.1; lr scales linearly with the batch size",
    ),
}
STEP_MILESTONES = ((50, 1e-4), (70, 1e-5), (85, 1e-6))  # (epochs done, lr from then on)
PLATEAU_PATIENCE, PLATEAU_FACTOR, MIN_LR = 3, 0.5, 1e-6
WARMUP_EPOCHS = 2

# ---------------------------------------------------------------------------------------------
# A run's config: one declaration per option


def _opt(parse, kind, help, panel, choices=(), identity=True, column="") -> Option:
    return Option(help=help, parse=parse, kind=kind, choices=choices, identity=identity, column=column, panel=panel)


def _positive_int(name: str, value: Any) -> int:
    number = parse_int(name, value)
    if number < 1:
        raise UsageError(f"--{name} must be at least 1, got {number}")
    return number


@dataclass(frozen=True)
class TrainConfig:
    """Everything about a run but the network. Options with ``identity`` define the experiment
    (and so the run id); the others only say where and how fast it runs."""

    data: str = option("cifar10", _opt(
        parse_str, str, "cifar10, synthetic, synthetic-hard (no model passes ~94%), or a folder with train/ and test/ "
        "(ImageFolder layout).", "Data",
        column="data"))
    limit_train: int | None = option(None, _opt(
        optional(_positive_int), int, "Use N training images, balanced over classes.", "Data"))
    limit_test: int | None = option(None, _opt(
        optional(_positive_int), int, "Use N test images, balanced over classes.", "Data"))
    recipe: str = option("study", _opt(choice(*RECIPES), str, "The training recipe.", "Recipe", tuple(RECIPES),
                                       column="recipe"))
    augment: str | None = option(None, _opt(
        optional(choice(*AUGMENTS)), str, "Augmentation (default: the recipe's).", "Recipe", AUGMENTS, column="augment"))
    epochs: int | None = option(None, _opt(
        optional(_positive_int), int, "Most epochs (default: the recipe's).", "Recipe", column="max_epochs"))
    batch_size: int | None = option(None, _opt(
        optional(_positive_int), int, "Images per step (default: the recipe's; study and step: 32, Keras' default).",
        "Recipe", column="batch_size"))
    lr: float | None = option(None, _opt(
        optional(parse_float), float, "Peak learning rate (default: the recipe's).", "Recipe", column="lr"))
    weight_decay: float | None = option(None, _opt(
        optional(parse_float), float, "On conv and dense weights (default: the recipe's).", "Recipe",
        column="weight_decay"))
    seed: int = option(0, _opt(parse_int, int, "Seeds the weights, the shuffling and the augmentation.", "Recipe",
                               column="seed"))
    init: str | None = option(None, _opt(
        optional(parse_str), str, "Start from a model file written by 'build --output' (its network too).", "Network",
        column="init"))
    # ---- not part of the experiment's identity
    data_dir: str | None = option(None, _opt(
        optional(parse_str), str, "Where CIFAR-10 lives or is downloaded to (default: $FIREABLATE_DATA or the user "
        "cache).", "Data", identity=False))
    device: str = option("auto", _opt(parse_str, str, "auto, cpu, cuda, cuda:N or mps.", "Speed", identity=False,
                                      column="device"))
    precision: str = option("auto", _opt(
        choice(*PRECISIONS), str, "auto: bf16 where the hardware has it natively (CUDA 8.0+, AMX or AVX-512 bf16 "
        "CPUs), fp16 on older GPUs, else fp32.", "Speed", PRECISIONS, identity=False, column="precision"))
    compile: bool = option(False, _opt(parse_bool, bool, "torch.compile the model.", "Speed", identity=False))
    deterministic: bool = option(False, _opt(
        parse_bool, bool, "Deterministic kernels (cuDNN, cuBLAS), so a resumed CUDA run equals an uninterrupted "
        "one; slower.", "Speed", identity=False))

    def __post_init__(self) -> None:
        # Every field goes through its option's parser: a bad value fails here, whoever built it.
        for name, opt in options_of(TrainConfig).items():
            object.__setattr__(self, name, opt.parse(name.replace("_", "-"), getattr(self, name)))
        if self.weight_decay is not None and self.weight_decay < 0:
            raise UsageError(f"--weight-decay must be 0 or more, got {self.weight_decay}")
        if self.lr is not None and not self.lr > 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.seed < 2**63:  # torch seeds are 64-bit, and seeds SEED+1.. must fit too
            raise UsageError(f"--seed must be between 0 and 2**63 - 1, got {self.seed}")

    @property
    def resolved_recipe(self) -> Recipe:
        r = RECIPES[self.recipe]
        changes = {k: v for k, v in (("augment", self.augment), ("epochs", self.epochs), ("lr", self.lr),
                                     ("weight_decay", self.weight_decay), ("batch_size", self.batch_size))
                   if v is not None}
        if r.scale_lr_with_batch and self.lr is None and self.batch_size is not None:
            changes["lr"] = r.lr * self.batch_size / r.batch_size
        return dataclasses.replace(r, **changes)

    def identity(self) -> dict[str, Any]:
        """The fields that define the experiment, with the recipe's defaults filled in."""
        r = self.resolved_recipe
        d = {name: getattr(self, name) for name, opt in options_of(TrainConfig).items() if opt.identity}
        d.update(augment=r.augment, epochs=r.epochs, lr=r.lr, weight_decay=r.weight_decay, batch_size=r.batch_size)
        if self.init:
            d["init"] = file_digest(Path(self.init))
        return d

    def cells(self) -> dict[str, Any]:
        """The config as ledger cells: the resolved recipe's values, the init file's digest."""
        ident = self.identity()
        cells = {}
        for name, opt in options_of(TrainConfig).items():
            if opt.column:
                cells[opt.column] = ident.get(name, getattr(self, name))
        return cells


# The ledger columns that TrainConfig fills, and those of them that define an experiment.
CONFIG_COLUMNS = [opt.column for opt in options_of(TrainConfig).values() if opt.column]
CONFIG_IDENTITY_COLUMNS = [opt.column for opt in options_of(TrainConfig).values() if opt.column and opt.identity]


def file_digest(path: Path) -> str:
    if not path.is_file():
        raise UsageError(f"model file not found: {path}")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def run_id(spec: S.NetSpec, config: TrainConfig, data_identity: str) -> str:
    """A digest of the network, the experiment's config, the data and the seed."""
    return S.digest({"spec": S.spec_identity(spec), "config": config.identity(), "data": data_identity})


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    status: str  # done, diverged, failed
    message: str
    spec: S.NetSpec
    config: TrainConfig
    data_source: str
    data_identity: str
    n_train: int
    n_test: int
    epochs: int  # epochs run
    best_epoch: int
    best_val_acc: float
    best_val_loss: float
    final_val_acc: float
    final_val_loss: float
    train_time_s: float
    images_per_sec: float
    params: int
    mib: float
    macs: int
    device: str
    precision: str
    out_dir: str
    started: str
    ended: str
    history: list[dict[str, float]] = field(default_factory=list, repr=False)
    finished_before: bool = False  # True when an earlier call had already finished this run

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["spec"] = S.to_dict(self.spec)
        d["config"] = dataclasses.asdict(self.config)
        d.pop("finished_before")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], finished_before: bool = False) -> "TrainResult":
        d = dict(d)
        d["spec"] = S.from_dict(d["spec"])
        d["config"] = TrainConfig(**d["config"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known}, finished_before=finished_before)
