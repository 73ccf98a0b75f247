"""PyTorch modules built from a spec, with torchvision's names.

Without batch norm, bypass or extra dropout the module tree is exactly torchvision's SqueezeNet
(``features.3.squeeze.weight`` ...), so torchvision state dicts load into it unchanged.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import spec as S
from .errors import UsageError
from .files import atomic_torch_save


class Fire(nn.Module):
    """Squeeze (1x1) then expand (1x1 and 3x3 side by side, concatenated); optional bypass."""

    def __init__(self, layer: S.Fire, norm: "Norm"):
        super().__init__()
        f, bn = layer.sizes, layer.batch_norm
        self.after_relu = norm.after_relu
        self.squeeze = nn.Conv2d(layer.in_channels, f.squeeze, kernel_size=1)
        self.squeeze_bn = norm(f.squeeze) if bn else nn.Identity()
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(f.squeeze, f.expand1x1, kernel_size=1)
        self.expand1x1_bn = norm(f.expand1x1) if bn else nn.Identity()
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(f.squeeze, f.expand3x3, kernel_size=3, padding=1)
        self.expand3x3_bn = norm(f.expand3x3) if bn else nn.Identity()
        self.expand3x3_activation = nn.ReLU(inplace=True)
        self.bypass: nn.Module | None = None
        if layer.bypass == "identity":
            self.bypass = nn.Identity()
        elif layer.bypass == "conv":
            conv = nn.Conv2d(layer.in_channels, f.out_channels, kernel_size=1)
            self.bypass = nn.Sequential(conv, norm(f.out_channels)) if bn else conv

    def _unit(self, conv: nn.Module, bn: nn.Module, relu: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return bn(relu(conv(x))) if self.after_relu else relu(bn(conv(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self._unit(self.squeeze, self.squeeze_bn, self.squeeze_activation, x)
        out = torch.cat(
            [
                self._unit(self.expand1x1, self.expand1x1_bn, self.expand1x1_activation, s),
                self._unit(self.expand3x3, self.expand3x3_bn, self.expand3x3_activation, s),
            ],
            dim=1,
        )
        if self.bypass is not None:
            out = out + self.bypass(x)
        return out


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that keeps its gradient in the channels_last layout of its input.

    Behind a ReLU (the study's conv-relu-bn), batch norm's incoming gradient comes from the next
    convolution's backward in the plain layout while its saved input is channels_last, and torch's
    CPU kernel for that mix was 17x slower than for matching layouts (2x on the whole training
    step, measured side by side). Converting the gradient first costs one copy. Under
    torch.compile the compiler picks layouts itself, so nothing is added there.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if (out.requires_grad and x.is_contiguous(memory_format=torch.channels_last)
                and not torch.compiler.is_compiling()):
            out.register_hook(lambda grad: grad.contiguous(memory_format=torch.channels_last))
        return out


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask on the CPU comes from ``torch.rand``.

    torch's CPU ``bernoulli_`` draws its numbers one at a time; a uniform draw compared with ``p``
    is the same distribution, vectorized, and took the dropout before the classifier from 6% of a
    bf16 training step to about 2%. GPUs keep torch's fused kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != "cpu" or not 0 < self.p < 1:
            return super().forward(x)
        keep = torch.rand_like(x, dtype=torch.float32) >= self.p  # rand_like keeps x's memory layout
        return x * keep.to(x.dtype).mul_(1 / (1 - self.p))


class Norm:
    """Batch norm as the spec sets it: where it sits, its momentum and epsilon."""

    def __init__(self, spec: S.NetSpec):
        self.after_relu = spec.bn_order == "conv-relu-bn"
        self.momentum, self.eps = spec.bn_momentum, spec.bn_eps

    def __call__(self, channels: int, dims: int = 2) -> nn.Module:
        cls = BatchNorm2d if dims == 2 else nn.BatchNorm1d
        return cls(channels, eps=self.eps, momentum=self.momentum)

    def around(self, weighted: nn.Module, bn: nn.Module | None, relu: bool) -> list[nn.Module]:
        """A weighted layer with its batch norm and ReLU, in the spec's order."""
        act = [nn.ReLU(inplace=True)] if relu else []
        if bn is None:
            return [weighted, *act]
        return [weighted, *act, bn] if self.after_relu and relu else [weighted, bn, *act]


def _modules(layer: S.Layer, norm: Norm) -> list[nn.Module]:
    if isinstance(layer, S.Conv):
        conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.padding)
        return norm.around(conv, norm(layer.out_channels) if layer.batch_norm else None, relu=True)
    if isinstance(layer, S.Pool):
        return [nn.MaxPool2d(layer.kernel, layer.stride, ceil_mode=True)]
    if isinstance(layer, S.Fire):
        return [Fire(layer, norm)]
    if isinstance(layer, S.Dropout):
        return [Dropout(layer.p)]
    if isinstance(layer, S.Linear):
        linear = nn.Linear(layer.in_features, layer.out_features)
        return norm.around(linear, norm(layer.out_features, dims=1) if layer.batch_norm else None, relu=layer.relu)
    if isinstance(layer, S.GlobalAvgPool):
        return [nn.AdaptiveAvgPool2d((1, 1))]
    if isinstance(layer, S.Flatten):
        return [nn.Flatten()]
    raise TypeError(f"no module for {layer!r}")


class Network(nn.Module):
    """``features`` then ``classifier``, flattened to (batch, classes) logits, as torchvision."""

    def __init__(self, spec: S.NetSpec):
        super().__init__()
        layers = spec.layers()
        self.spec = spec
        norm = Norm(spec)
        self.features = nn.Sequential(*[m for layer in layers.features for m in _modules(layer, norm)])
        self.classifier = nn.Sequential(*[m for layer in layers.classifier for m in _modules(layer, norm)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def init_weights(model: nn.Module, scheme: str) -> None:
    """Xavier-uniform (Keras' default, the study's) or Kaiming-normal weights; zero biases.

    "pytorch" keeps torch's own default initialization. Batch norm starts at scale 1, shift 0.
    """
    if scheme == "pytorch":
        return
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if scheme == "xavier_uniform":
                nn.init.xavier_uniform_(m.weight)
            elif scheme == "kaiming_normal":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                raise ValueError(f"unknown init scheme {scheme!r}")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build(spec: S.NetSpec, seed: int | None = None) -> Network:
    """The torch model for ``spec``, initialized as ``spec.weight_init`` says (seeded, if given)."""
    if seed is not None:
        if not 0 <= seed < 2**63:  # torch seeds are 64-bit; the same range as train's --seed
            raise UsageError(f"--seed must be between 0 and 2**63 - 1, got {seed}")
        torch.manual_seed(seed)
    model = Network(spec)
    init_weights(model, spec.weight_init)
    return model


MODEL_FORMAT = "fireablate-model/1"


def save_model(path: Path, model: Network, extra: dict[str, Any] | None = None, overwrite: bool = False) -> None:
    """One file holding the resolved spec and the weights: what ``train --init`` starts from.

    An existing file at ``path`` is replaced only if it is a fireablate model file (an earlier
    ``build --output``, a run's best.pt) or ``overwrite`` is set: anything else there is the
    user's, and a mistyped ``--output`` must not destroy it.
    """
    path = Path(path)
    if not overwrite and (path.exists() or path.is_symlink()) and not is_model_file(path):
        raise UsageError(f"{path} exists and is not a fireablate model file; choose another --output "
                         "or add --overwrite to replace it")
    payload = {"format": MODEL_FORMAT, "spec": S.to_dict(model.spec), "state_dict": model.state_dict()}
    payload.update(extra or {})
    atomic_torch_save(payload, path)


def _read_payload(path: Path) -> dict[str, Any]:
    """The dict a model file holds, read without running code; UsageError for anything else."""
    if not path.is_file():
        raise UsageError(f"model file not found: {path}")
    try:
        with warnings.catch_warnings():
            # torch warns about pickles of a protocol it did not write before refusing them: that
            # second line would break "one line per error", and the refusal says it all.
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say so in one line
        raise UsageError(f"{path} is not a fireablate model file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise UsageError(f"{path} is not a fireablate model file (saved by 'fireablate build --output')")
    return payload


def is_model_file(path: Path) -> bool:
    """Whether ``path`` is a file that :func:`save_model` wrote (by its format marker)."""
    try:
        _read_payload(Path(path))
    except UsageError:
        return False
    return True


def load_model(path: Path) -> tuple[Network, dict[str, Any]]:
    """The model saved at ``path`` and the whole saved payload."""
    path = Path(path)
    payload = _read_payload(path)
    try:
        model = Network(S.from_dict(payload["spec"]))
        model.load_state_dict(payload["state_dict"])
    except UsageError:  # a spec that cannot be built says which layer and why
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise UsageError(f"{path} is a damaged fireablate model file ({type(exc).__name__})") from None
    return model, payload


def summarize(model: Network) -> list[tuple[str, str, tuple[int, ...], int]]:
    """(module, type, output shape, parameters) per top-level layer, from a real forward pass.

    The shapes are what torch computes, so they check the spec's own size arithmetic.
    """
    spec = model.spec
    rows: list[tuple[str, str, tuple[int, ...], int]] = []
    hooks = []
    for part in ("features", "classifier"):
        for idx, module in getattr(model, part).named_children():
            def hook(mod, inputs, output, name=f"{part}.{idx}"):
                rows.append((name, type(mod).__name__, tuple(output.shape[1:]), sum(p.numel() for p in mod.parameters())))
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, spec.in_channels, spec.input_size, spec.input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return rows


def build_checked(spec: S.NetSpec, seed: int = 0) -> Network:
    """``build``, and a check that torch agrees with the calculator on the parameter count."""
    from .params import count

    model = build(spec, seed=seed)
    expected, actual = count(spec).params, sum(p.numel() for p in model.parameters())
    if actual != expected:  # a bug in fireablate, not the user's input: keep it loud
        raise RuntimeError(f"built model has {actual} parameters but the calculator says {expected}")
    return model
