"""Deep Compression of a trained model: prune, retrain with masks, share weights, fine-tune, encode.

Following Han et al. (2016) as the SqueezeNet paper applied it (Iandola et al., 2016, Table 1):

1. **Prune** each conv and dense layer by weight magnitude to its density (the share of weights
   it keeps), then **retrain** with the pruned weights held at zero.
2. **Share weights**: per layer, k-means (k = 2**bits) over the kept weights, centroids started
   evenly between the smallest and largest weight (the paper's linear initialization), then
   **fine-tune the centroids**: a centroid's gradient is the sum of its members' gradients.
3. **Encode** (``codec.py``): relative indices for the positions, codes at their bit width, one
   codebook per layer, Huffman coding of both streams unless ``huffman=False``.

``compress_model`` does that to a model in memory; ``compress`` adds what a command needs: it
finds the model (a run id, a run folder or a model file), its data and recipe, writes the file
atomically with a sidecar JSON naming the parent run, and appends a ledger row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import codec
from . import spec as S
from .config import RECIPES, Recipe, TrainConfig, TrainResult
from .data import ImageData
from .devices import keep_cpu_memory
from .errors import FireablateError, UsageError
from .files import atomic_write, lock
from .model import Fire, Network, load_model

Progress = Callable[..., None]
SUFFIX = ".fadc"
REPORT_FORMAT = "fireablate-compressed-report/1"

# The SqueezeNet paper's Table 1: the share of each layer's weights that Deep Compression kept in
# SqueezeNet v1.0 ("sparsity" in the table, where 100% means nothing pruned). Checked against the
# table's parameter counts: these densities give its "after pruning" column (fire2: 11,920 ->
# 5,746), except fire8, which the table prints as 77,581 like fire9 (these give 82,005); the
# table's total, 421,098, sums the printed column.
PAPER_V10 = {
    "conv1": 1.0,
    **{f"fire{i}.squeeze": 1.0 for i in range(2, 10)},
    **{f"fire{i}.expand1x1": 1.0 for i in range(2, 10)},
    **{f"fire{i}.expand3x3": 0.33 for i in range(2, 9)},
    "fire6.expand1x1": 0.5, "fire7.squeeze": 0.5, "fire8.expand1x1": 0.5, "fire9.squeeze": 0.5,
    "fire9.expand3x3": 0.30,
    "conv10": 0.2,
}
# Other networks, by layer kind, from the same table: the first conv and the 1x1 layers kept whole
# (as most of v1.0's are), spatial convs at the 3x3 expand layers' 33%, and the classifier (v1.0's
# conv10, a dense layer in all but name) and other dense layers at conv10's 20%.
PAPER_BY_KIND = {"stem": 1.0, "squeeze": 1.0, "expand1x1": 1.0, "bypass": 1.0, "expand3x3": 0.33, "conv": 0.33,
                 "conv1x1": 1.0, "dense": 0.2, "classifier": 0.2}
_V10_FIRES = S.SqueezeNetSpec().fire_sizes()
# What a layer gets that the --density or --bits text does not name (nor its kind or group).
UNNAMED_DENSITY = 1.0
UNNAMED_BITS = 8


# ---------------------------------------------------------------------------------------------
# The layers a model has, by name


@dataclass(frozen=True)
class WeightedLayer:
    name: str  # conv1, fire2.squeeze, fire2.expand3x3, fire4.bypass, conv10, fc6 ...
    kind: str  # stem, squeeze, expand1x1, expand3x3, bypass, conv, conv1x1, dense, classifier
    group: str  # conv or dense: what --bits conv=8,dense=5 names
    key: str  # the weight's state-dict key
    module: nn.Module

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight


def weighted_layers(model: Network) -> list[WeightedLayer]:
    """Every conv and dense layer in forward order, named as the paper names them."""
    paths = {id(m): name for name, m in model.named_modules()}
    described = [l for l in model.spec.layers() if isinstance(l, (S.Conv, S.Fire, S.Linear))]
    built = [m for part in (model.features, model.classifier) for m in part.children()
             if isinstance(m, (nn.Conv2d, nn.Linear, Fire))]
    assert len(described) == len(built), "the model's modules do not follow its spec"
    out: list[WeightedLayer] = []
    for i, (layer, module) in enumerate(zip(described, built)):
        last = i == len(described) - 1
        if isinstance(module, Fire):
            parts = [("squeeze", module.squeeze), ("expand1x1", module.expand1x1), ("expand3x3", module.expand3x3)]
            if module.bypass is not None and not isinstance(module.bypass, nn.Identity):
                conv = module.bypass[0] if isinstance(module.bypass, nn.Sequential) else module.bypass
                parts.append(("bypass", conv))
            for part, conv in parts:
                out.append(WeightedLayer(f"{layer.name}.{part}", part, "conv", paths[id(conv)] + ".weight", conv))
        else:
            group = "dense" if isinstance(module, nn.Linear) else "conv"
            if last:
                kind = "classifier"
            elif i == 0:
                kind = "stem"
            elif group == "dense":
                kind = "dense"
            else:
                kind = "conv" if module.kernel_size != (1, 1) else "conv1x1"
            out.append(WeightedLayer(layer.name, kind, group, paths[id(module)] + ".weight", module))
    return out


def _is_v10_layout(spec: S.NetSpec, layers: list[WeightedLayer]) -> bool:
    """v1.0's layer names and fire sizes (so also v1.1, whose fires are v1.0's): Table 1 applies by name."""
    return (isinstance(spec, S.SqueezeNetSpec) and spec.fire_sizes() == _V10_FIRES
            and {l.name for l in layers} == set(PAPER_V10))


# ---------------------------------------------------------------------------------------------
# Settings: densities and bits per layer


@dataclass(frozen=True)
class CompressSettings:
    """How to compress. ``density`` and ``bits`` are the option texts, resolved per layer later."""

    density: str = "paper"
    bits: str = "8"
    huffman: bool = True
    retrain_epochs: int = 1
    finetune_epochs: int = 1
    lr: float | None = None  # None: a tenth of the recipe's (retraining refines, it does not restart)
    seed: int = 0
    kmeans_iters: int = 30

    def __post_init__(self) -> None:
        for name in ("retrain_epochs", "finetune_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000:
                raise UsageError(f"--{name.replace('_', '-')} must be a whole number from 0 to 10,000, got {value!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"--lr must be a positive number, got {self.lr}")


def _layer_key(text: str) -> str:
    return text.strip().replace("/", ".")  # count-params writes fire2/expand3x3


def _items(option: str, text: str, parse: Callable[[str, str], Any], named: set[str],
           check_key: Callable[[str], None] = lambda key: None) -> tuple[Any, dict[str, Any]]:
    """'DEFAULT,KEY=VALUE,...' as _per_layer applies it: the default (the last item without '=',
    a name in ``named`` or a parsed value; None when there is none) and each key's value (the last
    given). ``check_key`` refuses a key before its value is read."""
    items = [item.strip() for item in str(text).split(",")]
    if not all(items):
        raise UsageError(f"--{option}: empty item in {text!r}")
    default, given = None, {}
    for item in items:
        if "=" not in item:
            default = item if item in named else parse(option, item)
            continue
        key, _, value_text = item.partition("=")
        key = _layer_key(key)
        check_key(key)
        given[key] = parse(option, value_text)
    return default, given


def _per_layer(option: str, text: str, layers: list[WeightedLayer], parse: Callable[[str, str], Any],
               named_default: dict[str, Callable[[WeightedLayer], Any]], fallback: Any) -> dict[str, Any]:
    """A per-layer value from 'DEFAULT,KEY=VALUE,...': a layer's own name beats its kind, its kind
    its group (conv or dense), its group the default; layers that nothing names get ``fallback``."""
    names = [l.name for l in layers]
    keys = set(names) | {l.kind for l in layers} | {"conv", "dense"}

    def check_key(key: str) -> None:
        if key not in keys:
            raise UsageError(f"--{option}: unknown layer {key!r}; this network has {', '.join(names)} "
                             "(or a kind such as expand3x3, or conv / dense)")

    default, given = _items(option, text, parse, set(named_default), check_key)

    def unnamed(layer: WeightedLayer) -> Any:
        if default is None:
            return fallback
        return named_default[default](layer) if default in named_default else default

    out = {}
    for l in layers:
        for key in (l.name, l.kind, l.group):
            if key in given:
                out[l.name] = given[key]
                break
        else:
            out[l.name] = unnamed(l)
    return out


def _parse_density(option: str, text: str) -> float:
    try:
        value = float(text.strip().rstrip("%")) / (100 if text.strip().endswith("%") else 1)
    except ValueError:
        raise UsageError(f"--{option}: expected a number in (0, 1] or 'paper', got {text.strip()!r}") from None
    if not (math.isfinite(value) and 0 < value <= 1):
        raise UsageError(f"--{option}: a density is the share of weights kept, in (0, 1]; got {text.strip()!r}")
    return value


def _parse_bits(option: str, text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise UsageError(f"--{option}: expected a whole number of bits from 1 to {codec.MAX_BITS}, got {text.strip()!r}") from None
    if not 1 <= value <= codec.MAX_BITS:
        raise UsageError(f"--{option}: bits must be from 1 to {codec.MAX_BITS}, got {value}")
    return value


def resolve_densities(text: str, model: Network, layers: list[WeightedLayer] | None = None) -> tuple[dict[str, float], str]:
    """Density per layer, and where 'paper' took them from (by v1.0 name, or by layer kind)."""
    layers = layers or weighted_layers(model)
    by_name = _is_v10_layout(model.spec, layers)
    paper = (lambda l: PAPER_V10[l.name]) if by_name else (lambda l: PAPER_BY_KIND[l.kind])
    densities = _per_layer("density", text, layers, _parse_density, {"paper": paper}, UNNAMED_DENSITY)
    uses_paper = any(item.strip() == "paper" for item in str(text).split(","))
    source = ("SqueezeNet Table 1, by v1.0 layer name" if by_name else "SqueezeNet Table 1, by layer kind") if uses_paper else "given"
    return densities, source


def resolve_bits(text: str, model: Network, layers: list[WeightedLayer] | None = None) -> dict[str, int]:
    return _per_layer("bits", text, layers or weighted_layers(model), _parse_bits, {}, UNNAMED_BITS)


def _canonical(option: str, text: str, parse: Callable[[str, str], Any], named: set[str], fallback: Any) -> str:
    """An option text in one spelling of the option's own syntax: the default first (``fallback``
    when none is given), then KEY=VALUE sorted by key, values as numbers ('40%' and '0.40' are 0.4).
    Order and repeats do not matter to _per_layer (a name beats a kind beats a group, the last of
    one key wins), so texts it reads alike are written alike."""
    default, given = _items(option, text, parse, named)
    show = lambda v: v if isinstance(v, str) else format(v, ".12g")
    return ",".join([show(fallback if default is None else default), *(f"{k}={show(v)}" for k, v in sorted(given.items()))])


def compression_text(settings: CompressSettings) -> str:
    """The settings that make a compressed model, as one canonical line for its ledger row:
    'density paper, 6 bits, Huffman, retrain 1, finetune 1', or with per-layer options in their
    own syntax ('density paper,conv10=0.1, bits 8,dense=5, no Huffman, ...').

    Every option that changes the model or its file is written out, defaults too (a later default
    cannot change what an old row means); the same settings always give the same text, so results
    pool exactly the seeds of one compression. The lr, recipe and seed have ledger columns of
    their own; k-means iterations, which the command does not set, are written where not the default.
    """
    density = _canonical("density", settings.density, _parse_density, {"paper"}, UNNAMED_DENSITY)
    bits = _canonical("bits", settings.bits, _parse_bits, set(), UNNAMED_BITS)
    parts = [f"density {density}", f"{bits} bits" if bits.isdigit() else f"bits {bits}",
             "Huffman" if settings.huffman else "no Huffman",
             f"retrain {settings.retrain_epochs}", f"finetune {settings.finetune_epochs}"]
    if settings.kmeans_iters != CompressSettings.kmeans_iters:
        parts.append(f"k-means {settings.kmeans_iters} iterations")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# The steps


def prune_positions(weight: torch.Tensor, density: float) -> torch.Tensor:
    """Sorted flat positions of the ``round(density * n)`` largest-magnitude weights (at least one).

    Ties go to the earlier position (a stable sort), so the same weights always give the same mask.
    """
    n = weight.numel()
    keep = max(1, min(n, math.floor(density * n + 0.5)))
    order = torch.argsort(weight.detach().abs().flatten(), descending=True, stable=True)
    return order[:keep].sort().values


def kmeans_1d(values: np.ndarray, k: int, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(float32 centroids, code per value): Lloyd's k-means, centroids started linearly between min and max.

    In one dimension the nearest centroid is found by a binary search among the midpoints, so an
    iteration is O(n log k). Empty clusters keep their centroid. The codes are computed last, from
    the float32 centroids the file stores, so every code names its nearest stored centroid.
    """
    x = np.asarray(values, dtype=np.float64)
    centroids = np.linspace(x.min(), x.max(), k)
    for _ in range(iters):
        codes = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, x)
        sums, counts = np.bincount(codes, x, k), np.bincount(codes, minlength=k)
        new = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), centroids))
        if np.array_equal(new, centroids):
            break
        centroids = new
    book = centroids.astype(np.float32)
    wide = book.astype(np.float64)
    return book, np.searchsorted((wide[1:] + wide[:-1]) / 2, x).astype(np.int64)


@dataclass
class _Layer:
    """A layer's compression state: its mask, then its codebook and codes."""

    ref: WeightedLayer
    density: float
    bits: int
    positions: torch.Tensor  # sorted flat positions kept
    mask: torch.Tensor | None = None
    codebook: torch.Tensor | None = None  # float32 (2**bits,)
    codes: torch.Tensor | None = None  # int64, one per kept weight

    def write_shared(self) -> None:
        """Set the weight to the centroids at the kept positions and +0.0 elsewhere (as the file decodes)."""
        w = self.ref.weight
        flat = torch.zeros(w.numel(), dtype=w.dtype, device=w.device)
        flat[self.positions] = self.codebook[self.codes]
        with torch.no_grad():
            w.copy_(flat.view_as(w))


def _normalizer(data: ImageData, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The training set's per-channel mean and std, as every fireablate run normalizes."""
    mean, std = data.channel_stats()
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return lambda x: (x.to(device).float().div_(255) - m) / s


def evaluate(model: nn.Module, data: ImageData, device: torch.device | str = "cpu", batch: int = 500) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on the test split, which fireablate runs use for validation."""
    device = torch.device(device)
    norm = _normalizer(data, device)
    model.eval()
    loss, correct, n = 0.0, 0, len(data.test_y)
    with torch.no_grad():
        for i in range(0, n, batch):
            y = data.test_y[i:i + batch].to(device)
            logits = model(norm(data.test_x[i:i + batch])).float()
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
    return loss / n, correct / n


RECALIBRATION_IMAGES = 5000


def recalibrate_batch_norm(model: nn.Module, data: ImageData, device: torch.device, batch: int,
                           images: int = RECALIBRATION_IMAGES, seed: int = 0) -> None:
    """Re-estimate every batch norm's running mean and variance for the weights the model has now.

    Pruning and weight sharing change each layer's outputs at once, while the running statistics
    follow them only at batch norm's momentum (Keras' 0.01 for the study's networks: hundreds of
    steps), so a model evaluated right after a short retraining is judged with statistics of the
    weights it no longer has. Here they are the plain average over ``images`` training images
    (fixed by ``seed``), without augmentation and with dropout off, as the model will see inputs.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
        m.train()
    normalize = _normalizer(data, device)
    pick = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(seed))[:images]
    chunks = list(pick.split(batch))
    if len(chunks) > 1 and len(chunks[-1]) < batch:
        chunks.pop()  # every batch counts the same in the average: no small, noisy last one
    with torch.no_grad():
        for chunk in chunks:
            model(normalize(data.train_x[chunk]))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def _fit(model: nn.Module, data: ImageData, recipe: Recipe, epochs: int, groups: list[dict[str, Any]], seed: int,
         device: torch.device, after_backward: Callable[[], None], after_step: Callable[[], None], stage: str,
         progress: Progress) -> float:
    """``epochs`` of the recipe's optimizer, batches, augmentation and label smoothing at a fixed lr.

    The lr is constant: retraining and fine-tuning start from a trained model, so there is no
    warm-up to do and no schedule to restart. Returns the seconds spent.
    """
    from .augment import augment

    if epochs == 0:
        return 0.0
    if device.type == "cpu":
        keep_cpu_memory()  # as training does: 15-25% faster steps (devices.keep_cpu_memory)
    norm = _normalizer(data, device)
    n = len(data.train_y)
    batch = min(recipe.batch_size, n)
    if recipe.optimizer == "adam":
        opt = torch.optim.Adam(groups, eps=recipe.adam_eps)
    else:
        opt = torch.optim.SGD(groups, momentum=0.9, nesterov=True)
    shuffle = torch.Generator().manual_seed(seed)
    aug = torch.Generator(device=device).manual_seed(seed + 1)
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=shuffle).to(device)
        total, seen = 0.0, 0
        for step in range(n // batch):
            idx = perm[step * batch:(step + 1) * batch]
            x = augment(norm(train_x[idx]), recipe.augment, aug, recipe.crop_pad)
            loss = F.cross_entropy(model(x), train_y[idx], label_smoothing=recipe.label_smoothing)
            if not torch.isfinite(loss):
                raise FireablateError(f"{stage} diverged (loss {loss.item()} at epoch {epoch + 1}); try a lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            after_backward()
            opt.step()
            after_step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
        progress("epoch", stage=stage, epoch=epoch + 1, epochs=epochs, loss=total / max(seen, 1))
    return time.perf_counter() - t0


def _retrain(model: Network, layers: list[_Layer], data: ImageData, recipe: Recipe, epochs: int, lr: float, seed: int,
             device: torch.device, progress: Progress) -> float:
    """Train every parameter with the pruned weights held at zero: their gradients are masked (so
    no optimizer state builds up there) and the weights masked again after each step (so weight
    decay and momentum cannot revive them)."""
    pruned = {id(l.ref.weight) for l in layers}
    decay = [l.ref.weight for l in layers]
    rest = [p for p in model.parameters() if id(p) not in pruned]
    groups = [{"params": decay, "lr": lr, "weight_decay": recipe.weight_decay}, {"params": rest, "lr": lr, "weight_decay": 0.0}]

    def mask_grads() -> None:
        for l in layers:
            if l.ref.weight.grad is not None:
                l.ref.weight.grad.mul_(l.mask)

    def mask_weights() -> None:
        with torch.no_grad():
            for l in layers:
                l.ref.weight.mul_(l.mask)

    return _fit(model, data, recipe, epochs, groups, seed, device, mask_grads, mask_weights, "retraining", progress)


def _finetune(model: Network, layers: list[_Layer], data: ImageData, recipe: Recipe, epochs: int, lr: float, seed: int,
              device: torch.device, progress: Progress) -> float:
    """Train the centroids (and biases and batch norm), never the weights themselves: each centroid's
    gradient is the sum of the gradients of the weights that share it, and after each step every
    weight is set back to its centroid."""
    centroids = [nn.Parameter(l.codebook.clone()) for l in layers]
    shared = {id(l.ref.weight) for l in layers}
    rest = [p for p in model.parameters() if id(p) not in shared]
    groups = [{"params": centroids, "lr": lr, "weight_decay": 0.0}, {"params": rest, "lr": lr, "weight_decay": 0.0}]

    def centroid_grads() -> None:
        for l, c in zip(layers, centroids):
            g = l.ref.weight.grad
            c.grad = torch.zeros_like(c) if g is None else torch.zeros_like(c).index_add_(0, l.codes, g.flatten()[l.positions])
            l.ref.weight.grad = None

    def share() -> None:
        for l, c in zip(layers, centroids):
            l.codebook = c.detach().clone()
            l.write_shared()

    seconds = _fit(model, data, recipe, epochs, groups, seed, device, centroid_grads, share, "fine-tuning", progress)
    return seconds


# ---------------------------------------------------------------------------------------------
# The pipeline on a model in memory


@dataclass
class Compressed:
    """The outcome of ``compress_model``: the file's bytes, its sizes and the accuracies on the way."""

    data: bytes
    sizes: codec.Encoded
    densities: dict[str, float]
    bits: dict[str, int]
    density_source: str
    accuracy: dict[str, float | None]  # original, pruned, retrained, quantized, final (None: not evaluated)
    loss: dict[str, float | None]
    train_seconds: float
    epochs: int
    model: Network  # the compressed model, exactly as the file decodes


def _stored_state(model: Network, layers: list[_Layer]) -> tuple[list[codec.SharedLayer], dict[str, np.ndarray]]:
    shared_keys = {l.ref.key for l in layers}
    shared = [codec.SharedLayer(l.ref.key, l.ref.name, tuple(l.ref.weight.shape), l.bits,
                                l.codebook.detach().cpu().numpy().astype(np.float32), l.codes.cpu().numpy(),
                                l.positions.cpu().numpy()) for l in layers]
    raw = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items() if k not in shared_keys}
    return shared, raw


def compress_model(model: Network, settings: CompressSettings, data: ImageData | None = None, recipe: Recipe | None = None,
                   device: str | torch.device = "cpu", meta: dict[str, Any] | None = None,
                   progress: Progress | None = None) -> Compressed:
    """Prune, retrain, share weights, fine-tune and encode ``model`` (changed in place).

    Without ``data`` nothing is trained or evaluated (both epoch counts must then be 0): the sizes
    alone, as for a network with random weights.
    """
    notify = progress or (lambda event, **info: None)
    device = torch.device(device)
    refs = weighted_layers(model)
    densities, density_source = resolve_densities(settings.density, model, refs)
    bits = resolve_bits(settings.bits, model, refs)
    if data is None and (settings.retrain_epochs or settings.finetune_epochs):
        raise UsageError("retraining and fine-tuning need data: give --data, or --retrain-epochs 0 --finetune-epochs 0")
    recipe = recipe or RECIPES["study"]
    lr = settings.lr if settings.lr is not None else recipe.lr / 10
    model.to(device=device, dtype=torch.float32)
    acc: dict[str, float | None] = {}
    loss: dict[str, float | None] = {}

    def measure(stage: str) -> None:
        if data is None:
            acc[stage] = loss[stage] = None
            return
        if stage != "original":  # the trained model's own statistics are the reference
            recalibrate_batch_norm(model, data, device, min(recipe.batch_size, len(data.train_y)), seed=settings.seed)
        loss[stage], acc[stage] = evaluate(model, data, device)
        notify("accuracy", stage=stage, acc=acc[stage], loss=loss[stage])

    measure("original")
    layers = []
    for ref in refs:
        positions = prune_positions(ref.weight, densities[ref.name]).to(device)
        mask = torch.zeros(ref.weight.numel(), device=device)
        mask[positions] = 1.0
        layers.append(_Layer(ref, densities[ref.name], bits[ref.name], positions, mask.view_as(ref.weight)))
        with torch.no_grad():
            ref.weight.mul_(layers[-1].mask)
    measure("pruned")
    seconds = 0.0
    if settings.retrain_epochs:
        seconds += _retrain(model, layers, data, recipe, settings.retrain_epochs, lr, settings.seed, device, notify)
    measure("retrained")
    for l in layers:
        kept = l.ref.weight.detach().flatten()[l.positions].cpu().numpy()
        book, codes = kmeans_1d(kept, 1 << l.bits, settings.kmeans_iters)
        l.codebook = torch.from_numpy(book).to(device)
        l.codes = torch.from_numpy(codes).to(device)
        l.write_shared()
    measure("quantized")
    if settings.finetune_epochs:
        seconds += _finetune(model, layers, data, recipe, settings.finetune_epochs, lr, settings.seed + 2, device, notify)
    measure("final")
    model.eval()
    shared, raw = _stored_state(model, layers)
    encoded = codec.encode(S.to_dict(model.spec), shared, raw, settings.huffman, meta)
    # The file must give back exactly the model just evaluated; a mismatch is a bug, so it is loud.
    decoded = to_model(codec.decode(encoded.data, "the encoded model"))
    mine, theirs = model.state_dict(), decoded.state_dict()
    for k, v in mine.items():
        a, b = v.detach().cpu().contiguous(), theirs[k].contiguous()
        if a.dtype != b.dtype or a.shape != b.shape or a.numpy().tobytes() != b.numpy().tobytes():
            raise RuntimeError(f"encoding is not exact: {k} decodes differently")
    return Compressed(encoded.data, encoded, densities, bits, density_source, acc, loss, seconds,
                      settings.retrain_epochs + settings.finetune_epochs, decoded)


def to_model(decoded: codec.Decoded, where: str = "file") -> Network:
    """The torch model a decoded file describes."""
    try:
        model = Network(S.from_dict(decoded.spec))
    except FireablateError as exc:
        raise codec.CompressedFileError(f"{where}: {exc}") from None
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in decoded.raw.items()}
    state.update({k: torch.from_numpy(layer.weights()) for k, layer in decoded.shared.items()})
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise codec.CompressedFileError(f"{where} is damaged: its tensors do not fit its network") from None
    model.eval()
    return model


def load_compressed(path: Path) -> tuple[Network, codec.Decoded]:
    """The model in a compressed file, and the decoded file (header, meta, per-layer sizes)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"compressed model not found: {path}")
    decoded = codec.decode(path.read_bytes(), str(path))
    return to_model(decoded, str(path)), decoded


# ---------------------------------------------------------------------------------------------
# Where a model comes from: a ledger run id, a run folder, a model file


@dataclass
class Source:
    model_path: Path  # the model file compressed (best.pt of a run)
    model: Network
    run_id: str | None = None  # the parent run, when the model is a run's
    result: TrainResult | None = None


_RUN_PREFIX = re.compile(r"^[0-9a-f]{1,12}$")


def _read_result(folder: Path) -> TrainResult:
    path = folder / "result.json"
    if not path.is_file():
        raise UsageError(f"{folder} is not a finished fireablate run (no result.json); finish its training first")
    try:
        return TrainResult.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, FireablateError):
        raise UsageError(f"{path} is damaged or not a fireablate result") from None


def _from_run_folder(folder: Path) -> Source:
    result = _read_result(folder)
    if result.status != "done":
        raise UsageError(f"run {result.run_id} is {result.status}, not done; only a finished run can be compressed")
    for name in ("best.pt", "last.pt"):
        if (folder / name).is_file():
            model, _ = load_model(folder / name)
            return Source(folder / name, model, result.run_id, result)
    raise UsageError(f"{folder} holds no best.pt or last.pt")


def resolve_source(source: str, ledger_path: Path | None = None) -> Source:
    """A run id (or prefix) from the ledger, a run folder, or a model file."""
    from . import ledger as L

    path = Path(source)
    if path.is_dir():
        return _from_run_folder(path)
    if path.is_file():
        if path.read_bytes()[:len(codec.MAGIC)] == codec.MAGIC:
            raise UsageError(f"{path} is compressed already; compress the model it came from")
        model, _ = load_model(path)
        if (path.parent / "result.json").is_file():  # best.pt or last.pt of a run: the run is its parent
            result = _read_result(path.parent)
            if result.status != "done":
                raise UsageError(f"run {result.run_id} is {result.status}, not done; only a finished run can be compressed")
            return Source(path, model, result.run_id, result)
        return Source(path, model)
    if not _RUN_PREFIX.match(source):
        raise UsageError(f"{source} is no file, folder or run id")
    book = L.read(L.ledger_path(ledger_path), missing_ok=False)
    ids = sorted({r["run_id"] for r in book.rows if r["run_id"].startswith(source)})
    if not ids:
        raise UsageError(f"no run {source} in {book.path}")
    if len(ids) > 1:
        raise UsageError(f"{source} names {len(ids)} runs in {book.path} ({', '.join(ids[:4])}...); give more of the id")
    rid = ids[0]
    status = book.status_of().get(rid, "failed")
    if status != "done":
        raise UsageError(f"run {rid} is {status}, not done; only a finished run can be compressed")
    folders = [Path(r["out_dir"]) for r in book.rows if r["run_id"] == rid and r["status"] == "done" and r["out_dir"]]
    for folder in folders:
        folder = folder if folder.is_absolute() or folder.is_dir() else book.path.parent / folder.name
        if folder.is_dir():
            return _from_run_folder(folder)
    raise UsageError(f"run {rid} is done, but its folder ({folders[0] if folders else 'none recorded'}) is gone")


# ---------------------------------------------------------------------------------------------
# The command: find, compress, write, record


@dataclass(frozen=True)
class DataChoice:
    """Data options from the command line; None keeps the parent run's own."""

    data: str | None = None
    data_dir: str | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    recipe: str | None = None


@dataclass
class CompressReport:
    run_id: str
    parent_run_id: str | None
    source: str
    out: str
    settings: dict[str, Any]
    density_source: str
    layers: list[dict[str, Any]]
    file_bytes: int
    header_bytes: int
    raw_bytes: int
    float32_bytes: int
    params: int
    stored_params: int
    accuracy: dict[str, float | None]
    loss: dict[str, float | None]
    data: dict[str, Any] | None
    train_seconds: float
    ledger: str | None = None
    finished_before: bool = False
    started: str = ""
    ended: str = ""
    file_sha256: str = ""

    @property
    def ratio(self) -> float:
        return self.float32_bytes / self.file_bytes

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ratio_to_float32"] = self.ratio
        d["mb"] = self.file_bytes / 1e6
        d["mib"] = self.file_bytes / 2**20
        d.pop("finished_before")
        return {"format": REPORT_FORMAT, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CompressReport":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _config_for(src: Source, choice: DataChoice) -> TrainConfig:
    """The parent run's data and recipe, with what the command line gave instead."""
    if src.result is None and choice.data is None:
        raise UsageError(f"{src.model_path} is not a run's model, so its data is unknown: give --data "
                         "(or --data none to measure sizes only)")
    base = src.result.config if src.result is not None else TrainConfig()
    changes = {k: v for k, v in dataclasses.asdict(choice).items() if v is not None}
    if choice.data is not None and choice.data != base.data:  # other data: the parent's limits and folder do not apply
        changes.setdefault("data_dir", None)
        changes.setdefault("limit_train", None)
        changes.setdefault("limit_test", None)
    return dataclasses.replace(base, init=None, **changes)


def default_out(src: Source, run_id: str) -> Path:
    return src.model_path.parent / f"{src.model_path.stem}-compressed-{run_id}{SUFFIX}"


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def _finished(out: Path, run_id: str) -> CompressReport | None:
    """The report of an identical compression already written, if its file is whole."""
    side = sidecar_path(out)
    if not (out.is_file() and side.is_file()):
        return None
    try:
        report = CompressReport.from_dict({k: v for k, v in json.loads(side.read_text()).items()})
    except (OSError, ValueError, TypeError):
        return None
    if report.run_id != run_id or report.file_sha256 != hashlib.sha256(out.read_bytes()).hexdigest():
        return None
    report.finished_before = True
    return report


def compress(source: str, settings: CompressSettings, choice: DataChoice = DataChoice(), out: Path | None = None,
             ledger_path: Path | None = None, device: str = "cpu", data: ImageData | None = None,
             force: bool = False, progress: Progress | None = None) -> CompressReport:
    """``fireablate compress``: the whole story, from a run id to a file, its sidecar and a ledger row.

    Everything that can be checked is checked before any data loads or any training starts: the
    source, each layer name, density and bit width. The file and the sidecar are written atomically,
    then the ledger row appended; an identical compression already written is answered from its
    sidecar (``force`` does it again).
    """
    from . import ledger as L
    from .data import load as load_data
    from .devices import resolve_device
    from .params import count

    notify = progress or (lambda event, **info: None)
    src = resolve_source(source, ledger_path)
    densities, density_source = resolve_densities(settings.density, src.model)  # bad options fail now
    bits = resolve_bits(settings.bits, src.model)
    config = _config_for(src, choice)
    no_data = config.data == "none" and data is None
    if no_data and (settings.retrain_epochs or settings.finetune_epochs):
        raise UsageError("--data none cannot retrain or fine-tune: add --retrain-epochs 0 --finetune-epochs 0")
    recipe = config.resolved_recipe
    ledger_file = L.ledger_path(ledger_path)
    if not no_data:
        # A ledger that cannot take the row (another version's, or one without the compressed
        # models' columns) fails now, not after training.
        L.read(ledger_file).require_appendable(compressed=True)
    dev = resolve_device(device)
    if data is None and not no_data:
        data = load_data(config.data, Path(config.data_dir) if config.data_dir else None, config.limit_train, config.limit_test)
    if data is not None:
        _check_fits(src.model.spec, data)
    parent = src.run_id or hashlib.sha256(src.model_path.read_bytes()).hexdigest()[:16]
    lr = settings.lr if settings.lr is not None else recipe.lr / 10
    identity = {"parent": parent, "densities": densities, "bits": bits, "huffman": settings.huffman,
                "retrain_epochs": settings.retrain_epochs, "finetune_epochs": settings.finetune_epochs, "lr": lr,
                "seed": settings.seed, "kmeans_iters": settings.kmeans_iters, "recipe": dataclasses.asdict(recipe),
                "data": data.identity if data is not None else None}
    rid = S.digest(identity)
    out = Path(out) if out is not None else default_out(src, rid)
    _check_out(out, src)
    counts = count(src.model.spec)
    if not force and (done := _finished(out, rid)) is not None:
        if data is not None:  # a compression whose row never landed (a full disk, a kill) gets it now
            _record(done, ledger_file, src, config, data, counts, dev)
        return done
    data_info = None if data is None else {"data": config.data, "data_dir": config.data_dir, "limit_train": config.limit_train,
                                           "limit_test": config.limit_test, "identity": data.identity}
    started = _now()
    meta = {"run_id": rid, "parent_run_id": src.run_id, "source": str(src.model_path), "data": data_info,
            "settings": dataclasses.asdict(settings), "created": started}
    result = compress_model(src.model, settings, data, recipe, dev, meta, notify)
    stored = sum(s.kept for s in result.sizes.layers) + sum(v.size for k, v in _float_params(result.model).items())
    report = CompressReport(
        run_id=rid, parent_run_id=src.run_id, source=str(src.model_path), out=str(out),
        settings={**dataclasses.asdict(settings), "lr": lr, "recipe": recipe.name},
        density_source=density_source, layers=[_layer_row(s, result.densities[s.layer]) for s in result.sizes.layers],
        file_bytes=len(result.data), header_bytes=result.sizes.header_bytes, raw_bytes=result.sizes.raw_bytes,
        float32_bytes=counts.params * 4, params=counts.params, stored_params=stored, accuracy=result.accuracy,
        loss=result.loss, data=data_info, train_seconds=result.train_seconds, started=started, ended=_now(),
        file_sha256=hashlib.sha256(result.data).hexdigest(),
    )
    with lock(out):
        atomic_write(out, result.data)
        atomic_write(sidecar_path(out), json.dumps(report.to_dict(), indent=2))
        if data is not None:
            _record(report, ledger_file, src, config, data, counts, dev)
    return report


def _record(report: CompressReport, ledger_file: Path, src: Source, config: TrainConfig, data: ImageData, counts,
            device) -> None:
    """Append the compression's ledger row unless the ledger has it already."""
    from . import ledger as L

    report.ledger = str(ledger_file)
    if L.read(ledger_file).status_of().get(report.run_id) != "done":
        L.append(ledger_file, _ledger_row(report, src, config, data, counts, device))


def _check_out(out: Path, src: Source) -> None:
    """Refuse an --out that would replace something other than a compressed model."""
    if out.exists():
        if out.is_dir():
            raise UsageError(f"--out {out} is a folder; give a file name")
        if out.resolve() == src.model_path.resolve():
            raise UsageError(f"--out {out} is the model being compressed; choose another file")
        with open(out, "rb") as fh:
            if fh.read(len(codec.MAGIC)) != codec.MAGIC:
                raise UsageError(f"--out {out} exists and is not a compressed model; choose another file")


def _float_params(model: Network) -> dict[str, np.ndarray]:
    """Parameters stored whole (biases, batch-norm scale and shift): every parameter but conv and dense weights."""
    shared = {l.key for l in weighted_layers(model)}
    return {k: p.detach().numpy() for k, p in model.named_parameters() if k not in shared}


def _check_fits(spec: S.NetSpec, data: ImageData) -> None:
    if data.image_shape != (spec.in_channels, spec.input_size, spec.input_size) or len(data.classes) != spec.num_classes:
        c, h, w = data.image_shape
        raise UsageError(f"the model takes {spec.in_channels}x{spec.input_size}x{spec.input_size} images and "
                         f"{spec.num_classes} classes, but {data.source} has {c}x{h}x{w} images and {len(data.classes)} "
                         "classes; give its own --data (or --data none to measure sizes only)")


def _layer_row(s: codec.LayerBytes, density: float) -> dict[str, Any]:
    return {"layer": s.layer, "weights": s.weights, "kept": s.kept, "density": s.kept / s.weights, "asked_density": density,
            "bits": s.bits, "index_bits": s.index_bits, "entries": s.entries, "codes_bytes": s.codes,
            "indices_bytes": s.indices, "codebook_bytes": s.codebook, "bytes": s.total}


def _ledger_row(report: CompressReport, src: Source, config: TrainConfig, data: ImageData, counts, device) -> dict[str, Any]:
    """The compression as a ledger row: a run of its own, linked to its parent run by ``parent_run``.

    The row's ``init`` is the parent's model file (its digest, as for any run started from a
    model file), the recipe and lr are the retraining's, ``max_epochs``/``epochs`` count the
    retraining and fine-tuning epochs, ``mib`` is the file's bytes / 2**20, ``params`` the
    parameters the file stores (kept weights, biases, batch norm), ``compression`` the settings
    (``compression_text``; blank only in training rows) and the accuracy and loss are the
    compressed model's. ``parent_run`` is blank for a model file that is no run's.
    """
    from . import ledger as L

    epochs = report.settings["retrain_epochs"] + report.settings["finetune_epochs"]
    cfg = dataclasses.replace(config, epochs=epochs or None, lr=report.settings["lr"], seed=report.settings["seed"],
                              init=str(src.model_path))
    row = L.make_row(run_id=report.run_id, status="done", spec=src.model.spec, config=cfg, counts=counts,
                     data_source=config.data, data_identity=data.identity, out_dir=report.out)
    final_acc, final_loss = report.accuracy["final"], report.loss["final"]
    seen = epochs and len(data.train_y) * epochs
    row.update(
        mib=round(report.file_bytes / 2**20, 6), params=report.stored_params, max_epochs=epochs, epochs=epochs,
        best_epoch=epochs, best_val_acc=final_acc, best_val_loss=final_loss, final_val_acc=final_acc,
        final_val_loss=final_loss, train_time_s=round(report.train_seconds, 3),
        images_per_sec=round(seen / report.train_seconds, 2) if seen and report.train_seconds else "",
        n_train=len(data.train_y), n_test=len(data.test_y), device=str(device), precision="fp32",
        started=report.started, ended=report.ended, parent_run=report.parent_run_id or "",
        compression=compression_text(_settings_of(report)),
    )
    return row


def _settings_of(report: CompressReport) -> CompressSettings:
    """The settings a report (or a sidecar written by an older version) records."""
    known = {f.name for f in dataclasses.fields(CompressSettings)}
    return CompressSettings(**{k: v for k, v in report.settings.items() if k in known})
