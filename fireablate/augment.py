"""Augmentation of whole batches on the training device, with no per-image Python.

- ``study``: the study's Keras ``ImageDataGenerator(rotation_range=20, width_shift_range=0.1,
  height_shift_range=0.1, shear_range=0.5, zoom_range=[0.9, 1.1])``, composed the way Keras'
  ``apply_affine_transform`` composes it: one matrix per image, rotation @ shift @ shear @ zoom in
  (row, col) pixel coordinates about the image centre, mapping output pixels to the input pixels
  they are read from. Bilinear sampling (Keras' ``order=1``) with nearest-edge fill (Keras'
  default ``fill_mode='nearest'``), no flips. One ``grid_sample`` per batch.
- ``flipcrop``: pad a few pixels (the recipe's ``crop_pad``, 4 by default) and crop back at a
  random offset, plus a random horizontal flip;
  pixels move by whole pixels exactly; padding is zero after normalization, that is the training
  mean colour. Done by indexing, not by sampling.
- ``none``.

``eval_views``: the views a recipe judges a test image by (its mirror, one-pixel moves), whose
logits are averaged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import Recipe


# The study's ImageDataGenerator settings, in Keras' own units.
ROTATION_DEG = 20.0  # rotation_range: uniform in [-20, 20] degrees
SHIFT_FRACTION = 0.1  # height_shift_range and width_shift_range: a fraction of the height / width
SHEAR_DEG = 0.5  # shear_range: Keras reads it in degrees (np.deg2rad in apply_affine_transform)
ZOOM = (0.9, 1.1)  # zoom_range: the row and column factors drawn independently


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


def study_params(n: int, h: int, w: int, g: torch.Generator, device) -> dict[str, torch.Tensor]:
    """One draw per image, named and scaled as Keras' ``get_random_transform`` names them.

    ``tx`` is the height shift in pixels (it moves rows), ``ty`` the width shift (it moves
    columns); ``zx`` scales rows and ``zy`` columns.
    """
    return {
        "theta": _uniform(n, -ROTATION_DEG, ROTATION_DEG, g, device),
        "tx": _uniform(n, -SHIFT_FRACTION, SHIFT_FRACTION, g, device) * h,
        "ty": _uniform(n, -SHIFT_FRACTION, SHIFT_FRACTION, g, device) * w,
        "shear": _uniform(n, -SHEAR_DEG, SHEAR_DEG, g, device),
        "zx": _uniform(n, ZOOM[0], ZOOM[1], g, device),
        "zy": _uniform(n, ZOOM[0], ZOOM[1], g, device),
    }


def keras_matrices(theta, tx, ty, shear, zx, zy) -> torch.Tensor:
    """(n, 3, 3) homogeneous maps, rotation @ shift @ shear @ zoom, as Keras composes them.

    Coordinates are (row, col) pixels measured from the image centre, and the map goes from an
    output pixel to the input point it reads (scipy's ``affine_transform`` convention). Because
    the shift sits between rotation and shear, it is rotated with the image rather than added
    after it. Angles are in degrees, shifts in pixels.

    Keras versions differ in two details, both left out here. keras-preprocessing up to 1.1.2
    centred the map at size / 2 + 0.5, a pixel past the true centre (size - 1) / 2 used here and
    by later Keras; that adds a sub-pixel shift (under 0.5 pixel at 20 degrees). Later Keras
    (keras-preprocessing after 1.1.2, Keras 3's legacy ImageDataGenerator) swaps the matrix to
    (x, y) order, which for square images changes only the shear's direction.
    """
    rot, sh = torch.deg2rad(theta), torch.deg2rad(shear)
    zero, one = torch.zeros_like(rot), torch.ones_like(rot)

    def mat(*rows):
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    cos, sin = torch.cos(rot), torch.sin(rot)
    rotation = mat((cos, -sin, zero), (sin, cos, zero), (zero, zero, one))
    shift = mat((one, zero, tx), (zero, one, ty), (zero, zero, one))
    shearing = mat((one, -torch.sin(sh), zero), (zero, torch.cos(sh), zero), (zero, zero, one))
    zoom = mat((zx, zero, zero), (zero, zy, zero), (zero, zero, one))
    return rotation @ shift @ shearing @ zoom


def grid_theta(m: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Keras' centred (row, col) pixel maps (n, 3, 3) as ``affine_grid`` matrices (n, 2, 3).

    With ``align_corners=False`` pixel i sits at -1 + (2i + 1) / size, so the centre pixel
    coordinate (size - 1) / 2 is 0 and one pixel is 2 / size: a centred pixel coordinate is the
    grid coordinate times size / 2 (h / 2 for rows, w / 2 for columns). ``affine_grid`` also
    orders coordinates (x, y) = (col, row), the reverse of Keras' (row, col), hence the swapped
    entries. Height and width scale separately, so non-square images map correctly.
    """
    a, b = m[:, :2, :2], m[:, :2, 2]
    x_row = torch.stack([a[:, 1, 1], a[:, 1, 0] * (h / w), b[:, 1] * (2 / w)], -1)
    y_row = torch.stack([a[:, 0, 1] * (w / h), a[:, 0, 0], b[:, 0] * (2 / h)], -1)
    return torch.stack([x_row, y_row], 1)


def study_matrices(n: int, size, g: torch.Generator, device) -> torch.Tensor:
    """(n, 2, 3) ``affine_grid`` matrices (align_corners=False) of the study's random transform.

    ``size`` is the side of a square image or (height, width). Each matrix maps output to input
    coordinates in grid_sample's [-1, 1] (x, y) units; ``keras_matrices`` has the same map in
    Keras' (row, col) pixels.
    """
    h, w = (size, size) if isinstance(size, int) else size
    p = study_params(n, h, w, g, device)
    return grid_theta(keras_matrices(**p), h, w)


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Samples ``x`` through ``affine_grid`` matrices the way Keras' defaults do.

    Bilinear is Keras' ``order=1``; 'border' padding repeats the edge pixel, as
    ``fill_mode='nearest'`` does.
    """
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def flipcrop(x: torch.Tensor, g: torch.Generator, pad: int) -> torch.Tensor:
    """Pad by ``pad`` zeros, crop back at a random offset, flip half the images left-right.

    Gathered by index rather than sampled: a ``grid_sample`` in fp32 for what is only an integer
    shift was measurably costly per training step, and indexing moves pixels exactly.
    """
    n, _, h, w = x.shape
    dev = x.device
    flip = torch.rand(n, generator=g, device=dev) < 0.5
    top, left = torch.randint(0, 2 * pad + 1, (2, n), generator=g, device=dev)
    # (N, H, W, C) view, so each gathered element is one pixel's channels side by side; for the
    # channels_last batches training passes this is already the memory order
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, pad, pad, pad, pad))
    rows = top[:, None] + torch.arange(h, device=dev)
    cols = torch.arange(w, device=dev)
    cols = left[:, None] + torch.where(flip[:, None], w - 1 - cols, cols)
    out = padded[torch.arange(n, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]
    # back to (N, C, H, W) shape; the memory stays channels_last, which conv layers take as is
    return out.permute(0, 3, 1, 2)


# The one-pixel moves (rows, columns) of test-time views, the two along one diagonal first, so that
# the first two still average out to the image where it is.
DIAGONAL_MOVES = ((1, 1), (-1, -1), (1, -1), (-1, 1))


def move(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x`` (N, C, H, W) moved by ``dy`` rows and ``dx`` columns, zeros coming in at the edges:
    after normalization that is the mean colour, what flipcrop pads with in training."""
    h, w = x.shape[-2:]
    p = max(abs(dy), abs(dx))
    return F.pad(x, (p, p, p, p))[..., p - dy:p - dy + h, p - dx:p - dx + w]


def eval_views(x: torch.Tensor, mirror: bool, moves: int = 0) -> list[torch.Tensor]:
    """The views a recipe judges each test image by, its logits averaged over them: the image, the
    image moved one pixel along the first ``moves`` of ``DIAGONAL_MOVES``, and with ``mirror`` each
    of those mirrored left-right."""
    images = (x, x.flip(3)) if mirror else (x,)
    return [im for image in images for im in (image, *(move(image, dy, dx) for dy, dx in DIAGONAL_MOVES[:moves]))]


def augment(x: torch.Tensor, kind: str, g: torch.Generator, crop_pad: int = Recipe.crop_pad) -> torch.Tensor:
    """``x``: a normalized float batch (N, C, H, W) on any device; ``g`` a generator on that device;
    ``crop_pad``: how far ``flipcrop`` moves images (the recipe's ``crop_pad``)."""
    if kind == "none":
        return x
    if kind == "study":
        n, _, h, w = x.shape
        return warp(x, study_matrices(n, (h, w), g, x.device))
    if kind == "flipcrop":
        return flipcrop(x, g, crop_pad)
    raise ValueError(f"unknown augmentation {kind!r}")
