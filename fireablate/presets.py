"""Named networks, and the overrides a user applies on top of them (``--preset cifar --sr 0.5``).

Parameter counts in the comments are checked by tests/test_presets.py.

The study's adapted SqueezeNet was published without its layer list. ``cifar`` is our reading:
conv1 with 96 3x3 filters (stride 1, same padding: CIFAR images are only 32 pixels), six fire
modules with base_e=128, incr_e=128, freq=1, pct3x3=0.5, SR=0.125 (expand widths 128..768), max-pools
after fire3 and fire5 (32 -> 16 -> 8 pixels), batch norm after every weighted layer, dropout 0.5
before conv8. Batch norm as the study's Keras had it: "applied over the activation", so conv,
ReLU, then batch norm, with Keras' momentum 0.99 (torch's 0.01) and epsilon 1e-3; the ImageNet
presets stay exactly torchvision's (no batch norm). That is 1,096,398 parameters, 4.18 MiB: 9% above the study's 3.83 MB. Six modules
is the depth closest to it (five give 2.53 MiB, seven 6.44 MiB).

With freq=1 no module keeps its input width, so a simple bypass would have nothing to add. The two
bypass presets therefore use freq=2 (widths 128,128,256,256,384,384), as the SqueezeNet paper's
own bypass experiments do; their complex bypass then adds 0.55 MiB, close to the study's
+0.56 MB (3.83 -> 4.39). Compare them with ``--preset cifar --freq 2``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import UsageError
from .spec import SPEC_OPTIONS, AlexNetSpec, Metaparameters, NetSpec, SqueezeNetSpec

_CIFAR = SqueezeNetSpec(
    name="cifar",
    meta=Metaparameters(base_e=128, incr_e=128, freq=1, pct3x3=0.5, sr=0.125, n_fire=6),
    stem_filters=96,
    stem_kernel=3,
    stem_stride=1,
    padding="same",
    pool_after=(3, 5),
    batch_norm=True,
    **(_KERAS_BN := dict(bn_order="conv-relu-bn", bn_momentum=0.01, bn_eps=1e-3)),
    dropout=0.5,
    num_classes=10,
    input_size=32,
)


def _cifar(name: str, **changes: Any) -> SqueezeNetSpec:
    meta_changes = {k: changes.pop(k) for k in list(changes) if k in _META_FIELDS}
    meta = dataclasses.replace(_CIFAR.meta, **meta_changes)
    return dataclasses.replace(_CIFAR, name=name, meta=meta, **changes)


_META_FIELDS = {f.name for f in dataclasses.fields(Metaparameters)}

PRESETS: dict[str, NetSpec] = {
    # SqueezeNet v1.0 for ImageNet, as torchvision builds it: 1,248,424 parameters.
    "squeezenet1_0": SqueezeNetSpec(name="squeezenet1_0"),
    # SqueezeNet v1.1: 64 3x3 filters in conv1 and earlier pools; 1,235,496 parameters.
    "squeezenet1_1": SqueezeNetSpec(name="squeezenet1_1", stem_filters=64, stem_kernel=3, pool_after=(1, 3, 5)),
    # The study's adapted SqueezeNet (see the module docstring): 1,096,398 parameters.
    "cifar": _CIFAR,
    # Identity bypass around fire3, fire5 and fire7 (freq=2): 345,246 parameters. The study's bypass
    # models add "dropout layers after max pooling layers"; it gives no rate, so we use the 0.2 of
    # its optimized model.
    "cifar_simple_bypass": _cifar("cifar_simple_bypass", freq=2, bypass="simple", pool_dropout=0.2),
    # Also a 1x1 conv bypass around fire2, fire4 and fire6 (freq=2): 490,910 parameters.
    "cifar_complex_bypass": _cifar("cifar_complex_bypass", freq=2, bypass="complex", pool_dropout=0.2),
    # conv1 without padding (32 -> 30 pixels): 1,096,398 parameters, fewer MACs.
    "cifar_valid_padding": _cifar("cifar_valid_padding", padding="valid"),
    # The study "inserted an additional max pooling layer before fire1" (our fire2): a pool after
    # conv1, the other two kept (32 -> 16 -> 8 -> 4 pixels). Pools have no weights: 1,096,398 parameters.
    "cifar_early_pool": _cifar("cifar_early_pool", pool_after=(1, 3, 5)),
    # The study's best model: freq=2, SR=0.5, an extra 128-filter fire module after conv1,
    # complex bypass, dropout 0.2 after conv1 and each pool; pools after fire4 and fire6
    # (the extra module shifts the numbering). 1,542,302 parameters.
    "cifar_optimized": _cifar(
        "cifar_optimized",
        freq=2,
        sr=0.5,
        extra_fires=(128,),
        bypass="complex",
        extra_dropout=0.2,
        pool_after=(4, 6),
    ),
    # Ours, not the study's: a narrow cifar network for demonstrations and quick checks (the
    # quickstart). Expand filters 8, 16 ... 48 and 32 in conv1, so at SR=0.125 the squeeze layers
    # have 1-6 channels and SR visibly matters within a minute of training; torch's batch-norm
    # momentum 0.1, because Keras' 0.01 needs more steps than a few short epochs before the
    # running statistics fit. 6,269 parameters.
    "cifar_tiny": _cifar("cifar_tiny", base_e=8, incr_e=8, stem_filters=32, bn_momentum=0.1),
    # The AlexNet-style baseline: convs 96 5x5, 256 5x5, 384, 384, 256 3x3 (same padding, pools
    # after conv1, conv2, conv5: 32 -> 4 pixels), dense 4096 -> 1024 -> 1024 -> 10, batch norm,
    # dropout 0.5 before each dense layer. 8,981,578 parameters, 34.3 MiB (study: 35.9 MB).
    "alexnet_cifar": AlexNetSpec(name="alexnet_cifar", **_KERAS_BN),
}


def get_preset(name: str) -> NetSpec:
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


# ---------------------------------------------------------------------------------------------
# Overrides: the network options of spec.py applied to a preset, by name or --flag.


def option_name(field: str) -> str:
    return field.replace("_", "-")


def canonical(name: str) -> str:
    """'pct3x3', '--base-e' and 'base_e' all name the same override."""
    key = name.strip().lstrip("-").replace("-", "_").lower()
    if key not in SPEC_OPTIONS:
        raise UsageError(f"unknown parameter {name!r}; choose one of: {', '.join(option_name(k) for k in SPEC_OPTIONS)}")
    return key


def apply_overrides(spec: NetSpec, overrides: dict[str, Any]) -> NetSpec:
    """A new spec with ``overrides`` (name -> value or its text) applied and validated as one."""
    meta_changes: dict[str, Any] = {}
    net_changes: dict[str, Any] = {}
    for raw_name, raw_value in overrides.items():
        if raw_value is None:
            continue
        key = canonical(raw_name)
        opt, where = SPEC_OPTIONS[key]
        value = opt.parse(option_name(key), raw_value)
        (meta_changes if where == "meta" else net_changes)[key] = value
    if not meta_changes and not net_changes:
        return spec
    if isinstance(spec, AlexNetSpec):
        allowed = {f.name for f in dataclasses.fields(AlexNetSpec)}
        for key in [*meta_changes, *net_changes]:
            if key not in allowed:
                raise UsageError(f"--{option_name(key)} does not apply to {spec.name}: it is not a SqueezeNet")
        return dataclasses.replace(spec, **net_changes)
    if "fires" in net_changes:
        net_changes.setdefault("extra_fires", ())
        if meta_changes:
            raise UsageError("--fires lists every module explicitly; it cannot be combined with metaparameters")
        return dataclasses.replace(spec, meta=None, **net_changes)
    if meta_changes:
        if spec.meta is None:
            raise UsageError(f"{spec.name} lists its fire modules explicitly; metaparameters do not apply")
        net_changes["meta"] = dataclasses.replace(spec.meta, **meta_changes)
    return dataclasses.replace(spec, **net_changes)


def display_name(preset: str, overrides: dict[str, Any] | None = None) -> str:
    """How an overridden preset is named everywhere: 'cifar (sr=0.5, freq=2)'."""
    changes = [f"{canonical(k)}={v}" for k, v in (overrides or {}).items() if v is not None]
    return f"{preset} ({', '.join(changes)})" if changes else preset


def resolve(preset: str, overrides: dict[str, Any] | None = None) -> NetSpec:
    """The preset ``preset`` with ``overrides`` applied, checked so that it can be built."""
    spec = apply_overrides(get_preset(preset), overrides or {})
    spec.layers()
    return spec


def parse_values(text: str) -> list[str]:
    """Sweep values: a list 'a,b,c' or an inclusive range 'start:stop:step' (decimal-exact).

    Values stay text so that each override parses them by its own type ('none,simple', '1,2').
    """
    text = text.strip()
    if ":" in text and "," not in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise UsageError(f"--values range must be start:stop:step, got {text!r}")
        try:
            start, stop, step = (Decimal(p) for p in parts)
            if not all(d.is_finite() for d in (start, stop, step)):
                raise InvalidOperation
        except InvalidOperation:
            raise UsageError(f"--values range must be finite numbers start:stop:step, got {text!r}") from None
        if step <= 0 or stop < start:
            raise UsageError(f"--values range {text!r} is empty: step must be positive and stop >= start")
        count = int((stop - start) / step) + 1
        if count > 1000:
            raise UsageError(f"--values range {text!r} has {count} values; that is surely a typo")
        return [str(start + i * step) for i in range(count)]
    values = [v.strip() for v in text.split(",")]
    if not all(values):
        raise UsageError(f"--values has an empty item: {text!r}")
    if len(set(values)) != len(values):
        raise UsageError(f"--values lists a value twice: {text!r}")
    return values


# A grid this large is a typo (a range with a tiny step, say), and resolving it would take minutes.
MAX_GRID = 10_000


def sweep_axes(params: str | list[str] | None, values: str | list[str] | None,
               order: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """The grid's axes, [(parameter, its values)], from the --param and --values given.

    Each --values belongs to the --param before it. ``order`` is the order in which the two
    options appeared on the command line ("param" or "values" per occurrence); without it (the
    Python API) the lists pair by position. A parameter named twice, a --values with no --param
    before it and a --param with no --values are usage errors.
    """
    params = [params] if isinstance(params, str) else list(params or [])
    values = [values] if isinstance(values, str) else list(values or [])
    if order is None:
        if len(params) != len(values):
            raise UsageError(f"--param and --values go together: got {len(params)} --param and {len(values)} --values")
        order = [kind for _ in params for kind in ("param", "values")]
    pairs: list[list] = []
    taken = {"param": iter(params), "values": iter(values)}
    for kind in order:
        item = next(taken[kind])
        if kind == "param":
            if pairs and pairs[-1][1] is None:
                raise UsageError(f"--param {pairs[-1][0]} has no --values after it")
            pairs.append([item, None])
        elif not pairs or pairs[-1][1] is not None:
            raise UsageError(f"--values {item!r} has no --param before it; write --param NAME --values {item}")
        else:
            pairs[-1][1] = item
    if pairs and pairs[-1][1] is None:
        raise UsageError(f"--param {pairs[-1][0]} has no --values after it")
    axes: list[tuple[str, list[str]]] = []
    for raw, text in pairs:
        name = "preset" if raw.strip() == "preset" else canonical(raw)
        if name in (n for n, _ in axes):
            raise UsageError(f"--param {name} is given twice; give each parameter once, with all its values")
        axes.append((name, parse_values(text)))
    size = grid_size(axes)
    if size > MAX_GRID:
        raise UsageError(f"the grid has {size:,} points ({' x '.join(str(len(v)) for _, v in axes)}); that is surely a typo")
    return axes


def grid_size(axes: list[tuple[str, list[str]]]) -> int:
    """Points of the Cartesian grid over ``axes`` (1 for no sweep)."""
    return math.prod(len(values) for _, values in axes)


def specs_for(preset: str, overrides: dict[str, Any],
              axes: list[tuple[str, list[str]]]) -> list[tuple[tuple[str, ...], NetSpec]]:
    """One resolved, validated spec per point of the grid (the Cartesian product of the axes,
    the first axis outermost), with the point's values; a parameter may also be 'preset'."""
    if not axes:
        spec = apply_overrides(get_preset(preset), overrides)
        spec.layers()
        return [((), spec)]
    names = [name for name, _ in axes]
    out = []
    for point in itertools.product(*(vals for _, vals in axes)):
        setting = dict(zip(names, point))
        try:
            base = get_preset(setting.pop("preset", preset))
            # The sweep's values are applied after the fixed overrides, so they win over them.
            spec = apply_overrides(apply_overrides(base, overrides), setting)
            spec.layers()
        except UsageError as exc:
            where = ", ".join(f"{n}={v}" for n, v in zip(names, point))
            raise type(exc)(f"{where}: {exc}") from None
        out.append((point, spec))
    return out
