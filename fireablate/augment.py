"""Augmentation of whole batches on the training device: one affine matrix per image, one sample.

Every augmentation here is an affine map, so a batch is transformed by building an (N, 2, 3)
matrix stack and calling ``grid_sample`` once, with no per-image Python.

- ``study``: the study's Keras ImageDataGenerator settings: rotation up to 20 degrees, width and
  height shift up to 10%, shear up to 0.5 degrees (Keras gives ``shear_range`` in degrees), zoom
  0.9-1.1 on each axis, bilinear sampling with nearest-edge fill, no flips.
- ``flipcrop``: pad 4 pixels and crop back at a random offset, plus a random horizontal flip;
  whole-pixel shifts sampled with nearest so pixels move exactly; padding is zero after
  normalization, that is the training mean colour.
- ``none``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENTS = ("study", "flipcrop", "none")


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


def study_matrices(n: int, size: int, g: torch.Generator, device) -> torch.Tensor:
    """(n, 2, 3) maps from output to input coordinates in grid_sample's [-1, 1] units."""
    rot = torch.deg2rad(_uniform(n, -20.0, 20.0, g, device))
    shear = torch.deg2rad(_uniform(n, -0.5, 0.5, g, device))
    zx = _uniform(n, 0.9, 1.1, g, device)
    zy = _uniform(n, 0.9, 1.1, g, device)
    # a shift of 10% of the image is 0.2 in [-1, 1] units
    tx = _uniform(n, -0.2, 0.2, g, device)
    ty = _uniform(n, -0.2, 0.2, g, device)
    cos, sin = torch.cos(rot), torch.sin(rot)
    # rotation @ shear @ zoom, the order Keras composes them in
    a = cos * zx
    b = (-cos * torch.sin(shear) - sin * torch.cos(shear)) * zy
    c = sin * zx
    d = (-sin * torch.sin(shear) + cos * torch.cos(shear)) * zy
    return torch.stack([torch.stack([a, b, tx], 1), torch.stack([c, d, ty], 1)], 1)


def flipcrop_matrices(n: int, size: int, g: torch.Generator, device, pad: int = 4) -> torch.Tensor:
    flip = torch.where(torch.rand(n, generator=g, device=device) < 0.5, -1.0, 1.0)
    shift = torch.randint(-pad, pad + 1, (2, n), generator=g, device=device).float() * (2.0 / size)
    zero, one = torch.zeros(n, device=device), torch.ones(n, device=device)
    return torch.stack([torch.stack([flip, zero, shift[0]], 1), torch.stack([zero, one, shift[1]], 1)], 1)


def augment(x: torch.Tensor, kind: str, g: torch.Generator) -> torch.Tensor:
    """``x``: a normalized float batch (N, C, H, W) on any device; ``g`` a generator on that device."""
    if kind == "none":
        return x
    n, _, h, w = x.shape
    if kind == "study":
        theta, mode, pad_mode = study_matrices(n, w, g, x.device), "bilinear", "border"
    elif kind == "flipcrop":
        theta, mode, pad_mode = flipcrop_matrices(n, w, g, x.device), "nearest", "zeros"
    else:
        raise ValueError(f"unknown augmentation {kind!r}")
    grid = F.affine_grid(theta.to(x.dtype), [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode=pad_mode, align_corners=False)
