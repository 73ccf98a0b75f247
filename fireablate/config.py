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
FLIP_AUGMENTS = ("flipcrop",)  # those that mirror images and move them by whole pixels
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
    batch_size: int = 128
    adam_eps: float = 1e-8  # torch's default; Keras' is 1e-7
    plateau_min_delta: float = 0.0  # how much val accuracy must rise to count as better
    # Scale lr linearly with --batch-size (lr x batch / batch_size) when --lr is not given: the
    # usual rule for SGD, so a GPU user can raise the batch without retuning.
    scale_lr_with_batch: bool = False
    # Validation accuracy averages each test image's logits with its mirror image's: free accuracy
    # for a network trained with flips (flipcrop), meaningless for one trained without (study).
    tta_flip: bool = False
    # ...and over the image moved one pixel in this many diagonal directions (0, 2 or 4;
    # augment.eval_views), each with its mirror where tta_flip: for a network trained on moved images.
    tta_moves: int = 0
    crop_pad: int = 4  # how many pixels flipcrop pads by, so how far it moves an image


RECIPES: dict[str, Recipe] = {
    # The study's protocol, as Keras callbacks: ReduceLROnPlateau(val_acc, factor 0.5, patience 3,
    # min_lr 1e-6, and Keras' default min_delta 1e-4) and EarlyStopping(val_loss, patience 5), at
    # most 100 epochs. Keras' Adam has epsilon 1e-7. The study states no batch size, so it had
    # Keras' default for fit() on arrays: 32.
    "study": Recipe(
        name="study", optimizer="adam", lr=1e-3, epochs=100, weight_decay=0.0, label_smoothing=0.0,
        augment="study", schedule="plateau", early_stop=5, batch_size=32, adam_eps=1e-7, plateau_min_delta=1e-4,
    ),
    # The study's schedule for its optimized model (Keras' LearningRateScheduler counts epochs
    # from 0: "from epoch 51" is index 50).
    "step": Recipe(
        name="step", optimizer="adam", lr=1e-3, epochs=100, weight_decay=0.0, label_smoothing=0.0,
        augment="study", schedule="step", early_stop=None, batch_size=32, adam_eps=1e-7,
    ),
    # Ours: the usual fast CIFAR recipe. A short linear warm-up avoids the early blow-up of a high
    # SGD lr on freshly initialized batch norm; the linear decay to zero anneals without tuning
    # milestones; label smoothing and flip+crop regularize a short run, the crop moving images by
    # at most 2 pixels (+0.56 points over 4 on the 20k subset: a short run needs less); a network
    # trained on mirrored, moved images is judged best by its mean over the image, its mirror and
    # one-pixel moves of both (+0.49 and +0.48 on the subset). Every change was measured with
    # benchmarks/fast_recipe.py and tta_views.py (README: "The fast recipe").
    "fast": Recipe(
        name="fast", optimizer="sgd", lr=0.1, epochs=30, weight_decay=5e-4, label_smoothing=0.2,
        augment="flipcrop", crop_pad=2, schedule="warmup_linear", early_stop=None, scale_lr_with_batch=True,
        tta_flip=True, tta_moves=4,
    ),
}
STEP_MILESTONES = ((50, 1e-4), (70, 1e-5), (85, 1e-6))  # (epochs done, lr from then on)
PLATEAU_PATIENCE, PLATEAU_FACTOR, MIN_LR = 3, 0.5, 1e-6
WARMUP_EPOCHS = 2
# A recipe's settings in words, where they say the recipe does nothing special.
PLAIN_SETTINGS = ("none",)


def _num(x: float) -> str:
    """5e-4 rather than 0.0005 for small numbers, and no zero-padded exponents (1e-7, not 1e-07)."""
    if x and abs(x) < 0.01:
        mantissa, exponent = f"{x:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{x:g}"


def _views_in_words(r: Recipe) -> str:
    if not (r.tta_flip or r.tta_moves):
        return "none"
    views = "each image and its mirror" if r.tta_flip else "each image"
    moved = f", each also moved one pixel in {r.tta_moves} diagonal directions" if r.tta_moves else ""
    return f"mean logits of {views}{moved} ({(1 + r.tta_moves) * (1 + r.tta_flip)} views)"


def recipe_settings(r: Recipe) -> dict[str, str]:
    """A recipe in words, setting by setting: the table of `fireablate recipes` and the README."""
    schedule = {
        "plateau": f"halve after {PLATEAU_PATIENCE} epochs without val accuracy {_num(r.plateau_min_delta)} better "
                   f"(floor {_num(MIN_LR)})",
        "step": ", ".join(f"{_num(lr)} from epoch {done + 1}" for done, lr in STEP_MILESTONES),
        "warmup_linear": f"linear warm-up over {WARMUP_EPOCHS} epochs, then linear decay to 0",
    }[r.schedule]
    return {
        "optimizer": "SGD, Nesterov momentum 0.9" if r.optimizer == "sgd" else f"Adam, epsilon {_num(r.adam_eps)}",
        "learning rate": f"{_num(r.lr)}" + (f" x batch / {r.batch_size}" if r.scale_lr_with_batch else ""),
        "schedule": schedule,
        "epochs": ("at most " if r.early_stop else "") + str(r.epochs),
        "early stop": f"after {r.early_stop} epochs without lower val loss" if r.early_stop else "none",
        "batch": str(r.batch_size),
        "weight decay": f"{_num(r.weight_decay)}, conv and dense weights only" if r.weight_decay else "none",
        "label smoothing": f"{_num(r.label_smoothing)}" if r.label_smoothing else "none",
        "augmentation": f"{r.augment}, moves up to {r.crop_pad} pixels" if r.augment == "flipcrop" else r.augment,
        "test-time views": _views_in_words(r),
    }


def recipe_table() -> list[list[str]]:
    """Every recipe's settings side by side: a header row, then one row per setting."""
    columns = {name: recipe_settings(r) for name, r in RECIPES.items()}
    first = next(iter(columns.values()))
    return [["setting", *columns]] + [[key, *(c[key] for c in columns.values())] for key in first]

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
    recipe: str = option("study", _opt(choice(*RECIPES), str, "The training recipe (settings: fireablate recipes).",
                                       "Recipe", tuple(RECIPES),
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
        if changes.get("augment", r.augment) not in FLIP_AUGMENTS:
            # a network never shown mirror (or whole-pixel moved) images is not judged on them
            changes.update(tta_flip=False, tta_moves=0)
        return dataclasses.replace(r, **changes)

    def identity(self) -> dict[str, Any]:
        """The fields that define the experiment, with the recipe's defaults filled in."""
        r = self.resolved_recipe
        d = {name: getattr(self, name) for name, opt in options_of(TrainConfig).items() if opt.identity}
        d.update(augment=r.augment, epochs=r.epochs, lr=r.lr, weight_decay=r.weight_decay, batch_size=r.batch_size)
        # Recipe settings that change the result, named only where set: the ids of runs that never
        # used them stay what they were, and a recipe that takes them up gets new ids (an earlier
        # finished `fast` run is not taken for one of today's).
        d.update({k: v for k, v in (("label_smoothing", r.label_smoothing), ("tta_flip", r.tta_flip),
                                               ("tta_moves", r.tta_moves)) if v})
        if r.augment == "flipcrop" and r.crop_pad != Recipe.crop_pad:
            d["crop_pad"] = r.crop_pad
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
