import math

import numpy as np
import pytest
import torch

from fireablate.augment import (
    DIAGONAL_MOVES, augment, eval_views, grid_theta, move, keras_matrices, study_matrices, study_params, warp,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _params(theta=0.0, tx=0.0, ty=0.0, shear=0.0, zx=1.0, zy=1.0):
    return {k: torch.tensor([float(v)]) for k, v in dict(theta=theta, tx=tx, ty=ty, shear=shear, zx=zx, zy=zy).items()}


def _warp_keras(x, h, w, **p):
    return warp(x, grid_theta(keras_matrices(**_params(**p)), h, w))


def _coordinate_image(n, h, w):
    """Channel 0 holds each pixel's row, channel 1 its column. Bilinear sampling of a linear ramp
    is exact, so each output pixel shows the (row, col) of the input point it read; points past
    the edge show the clamped coordinate, as nearest-edge fill reads the edge pixel."""
    r, c = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([r, c])[None].repeat(n, 1, 1, 1)


def _single_pixel(h, w, row, col):
    x = torch.zeros(1, 1, h, w)
    x[0, 0, row, col] = 1.0
    return x


# ---- study: Keras' composition, checked by hand


def test_a_shift_moves_content_by_whole_pixels_in_keras_direction():
    # Keras maps output to input: output (r, c) reads input (r + tx, c + ty), so with tx = 2 rows
    # and ty = -3 columns the bright input pixel (10, 12) shows at output (8, 15).
    y = _warp_keras(_single_pixel(24, 32, 10, 12), 24, 32, tx=2, ty=-3)
    assert torch.allclose(y, _single_pixel(24, 32, 8, 15), atol=1e-5)


def test_rotation_sign_and_the_shift_rotating_with_the_image():
    # 11x11, centre pixel (5, 5). R(90) = [[0, -1], [1, 0]] in (row, col) from the centre, so an
    # output point q reads input R q = (-q_col, q_row). The bright input pixel (2, 5) is at (-3, 0)
    # from the centre.
    x = _single_pixel(11, 11, 2, 5)
    # rotation alone: (-q_col, q_row) = (-3, 0) gives q = (0, 3), output pixel (5, 8)
    assert torch.allclose(_warp_keras(x, 11, 11, theta=90), _single_pixel(11, 11, 5, 8), atol=1e-5)
    # R @ T with t = (2, 0): input = R (q + t) = (-q_col, q_row + 2) = (-3, 0), q = (-2, 3): pixel (3, 8).
    # Were the shift added after the rotation, input = R q + t = (-q_col + 2, q_row) and the pixel
    # would show at (5, 10).
    assert torch.allclose(_warp_keras(x, 11, 11, theta=90, tx=2), _single_pixel(11, 11, 3, 8), atol=1e-5)


def test_shear_and_zoom_by_hand():
    x = _coordinate_image(1, 11, 11)
    # S(30 deg) = [[1, -sin 30], [0, cos 30]]: output (0, 4) from the centre reads (-2, 4 cos 30)
    y = _warp_keras(x, 11, 11, shear=30)
    assert y[0, :, 5, 9].tolist() == pytest.approx([5 - 2, 5 + 4 * math.cos(math.radians(30))], abs=1e-4)
    # Z = diag(zx, zy) scales rows by zx and columns by zy: output (-2, 3) from the centre reads
    # (-2 * 1.5, 3 * 0.5)
    y = _warp_keras(x, 11, 11, zx=1.5, zy=0.5)
    assert y[0, :, 3, 8].tolist() == pytest.approx([5 - 3, 5 + 1.5], abs=1e-4)


def _keras_numpy(theta, tx, ty, shear, zx, zy, h, w):
    """The Keras formulas, written out in numpy: rotation @ shift @ shear @ zoom, offset to the
    image centre, mapping output (row, col) pixels to input ones."""
    a, s = math.radians(theta), math.radians(shear)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    shift = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    shearing = np.array([[1, -math.sin(s), 0], [0, math.cos(s), 0], [0, 0, 1]])
    zoom = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    oy, ox = (h - 1) / 2, (w - 1) / 2
    to_centre = np.array([[1, 0, -oy], [0, 1, -ox], [0, 0, 1]])
    back = np.array([[1, 0, oy], [0, 1, ox], [0, 0, 1]])
    return back @ rot @ shift @ shearing @ zoom @ to_centre


def _read_points(m, h, w):
    """Where each output pixel reads the input under the pixel map m, clamped to the image."""
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    pts = m @ np.stack([r.ravel(), c.ravel(), np.ones(h * w)])
    return np.stack([pts[0].clip(0, h - 1), pts[1].clip(0, w - 1)]).reshape(2, h, w)


def test_fixed_transform_matches_the_keras_formulas_on_a_non_square_image():
    h, w = 24, 32
    p = dict(theta=10, tx=2, ty=-3, shear=15, zx=0.9, zy=1.1)
    y = _warp_keras(_coordinate_image(1, h, w), h, w, **p)[0].numpy()
    np.testing.assert_allclose(y, _read_points(_keras_numpy(**p, h=h, w=w), h, w), atol=1e-3)
    # the order matters at this tolerance: the shift added after the rest is a different map
    moved = _keras_numpy(**{**p, "tx": 0, "ty": 0}, h=h, w=w)
    moved[:2, 2] += [2, -3]
    assert np.abs(y - _read_points(moved, h, w)).max() > 0.3


def test_augment_applies_the_keras_map_of_the_drawn_parameters():
    # the same generator state drives study_params here and augment below
    h, w, n = 24, 32, 8
    drawn = study_params(n, h, w, _gen(3), "cpu")
    y = augment(_coordinate_image(n, h, w), "study", _gen(3)).numpy()
    for i in range(n):
        p = {k: float(v[i]) for k, v in drawn.items()}
        np.testing.assert_allclose(y[i], _read_points(_keras_numpy(**p, h=h, w=w), h, w), atol=1e-3)


# ---- study: the sampled ranges


def _pixel_maps(theta, h, w):
    """Inverts grid_theta: (row, col) pixel matrices A and offsets b about the centre."""
    t = theta.double()
    a = torch.stack([torch.stack([t[:, 1, 1], t[:, 1, 0] * (h / w)], -1),
                     torch.stack([t[:, 0, 1] * (w / h), t[:, 0, 0]], -1)], 1)
    b = torch.stack([t[:, 1, 2] * h / 2, t[:, 0, 2] * w / 2], -1)
    return a, b


def test_study_matrices_stay_in_the_studys_ranges():
    h, w = 24, 32
    a, b = _pixel_maps(study_matrices(5000, (h, w), _gen(), "cpu"), h, w)
    # A = R S Z with S = [[1, -sin s], [0, cos s]]: the first column is R (zx, 0), and
    # A^T A = [[zx^2, -zx zy sin s], [-zx zy sin s, zy^2]]
    zx = a[:, :, 0].norm(dim=1)
    angle = torch.rad2deg(torch.atan2(a[:, 1, 0], a[:, 0, 0]))
    gram = a.transpose(1, 2) @ a
    zy = gram[:, 1, 1].sqrt()
    shear = torch.rad2deg(torch.asin(-gram[:, 0, 1] / (zx * zy)))
    assert angle.abs().max() <= 20 + 1e-4 and angle.abs().max() > 19.5
    # 0.5 degrees; read as radians it would reach 28.6 degrees
    assert shear.abs().max() <= 0.5 + 1e-3 and shear.abs().max() > 0.45
    for z in (zx, zy):
        assert z.min() >= 0.9 - 1e-5 and z.max() <= 1.1 + 1e-5
        assert z.min() < 0.91 and z.max() > 1.09
    # b = R t: the shift, rotated back, is at most 10% of the height in rows and of the width in columns
    rad = torch.deg2rad(angle)
    t_row = torch.cos(rad) * b[:, 0] + torch.sin(rad) * b[:, 1]
    t_col = -torch.sin(rad) * b[:, 0] + torch.cos(rad) * b[:, 1]
    assert t_row.abs().max() <= 0.1 * h + 1e-3 and t_row.abs().max() > 0.095 * h
    assert t_col.abs().max() <= 0.1 * w + 1e-3 and t_col.abs().max() > 0.095 * w
    # composed inside, the shift turns with the rotation and can pass 10% along an image axis
    assert b[:, 1].abs().max() > 0.1 * w + 0.3
    # no flips: no mirror image (positive determinant) and no half turn (rotation bounded above)
    assert torch.linalg.det(a).min() > 0


def test_study_augmentation_is_per_image_and_reproducible():
    x = torch.randn(16, 3, 32, 32)
    a, b = augment(x, "study", _gen(5)), augment(x, "study", _gen(5))
    assert torch.equal(a, b)
    assert not torch.equal(a, augment(x, "study", _gen(6)))
    # the same image, augmented twice in one batch, comes out differently
    twin = augment(x[:1].repeat(2, 1, 1, 1), "study", _gen(0))
    assert not torch.allclose(twin[0], twin[1])
    # border fill: no zeros are introduced into a constant image
    ones = augment(torch.ones(4, 3, 32, 32), "study", _gen(0))
    torch.testing.assert_close(ones, torch.ones_like(ones))


def test_study_takes_a_channels_last_batch():
    x = torch.randn(4, 3, 32, 32)
    y = augment(x.contiguous(memory_format=torch.channels_last), "study", _gen(2))
    torch.testing.assert_close(y, augment(x, "study", _gen(2)))


# ---- flipcrop


def _flipcrop_candidates(x, pad=4):
    """Every crop of the zero-padded batch at offsets -pad..pad on each axis, as is and mirrored
    left-right: (N, 2 * (2 * pad + 1) ** 2, C, H, W), and the (row shift, col shift, flipped)
    of each."""
    n, c, h, w = x.shape
    padded = torch.zeros(n, c, h + 2 * pad, w + 2 * pad)
    padded[:, :, pad:pad + h, pad:pad + w] = x
    crops, labels = [], []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, :, dy:dy + h, dx:dx + w]
            crops += [crop, crop.flip(-1)]
            labels += [(dy - pad, dx - pad, False), (dy - pad, dx - pad, True)]
    return torch.stack(crops, 1), labels


@pytest.mark.parametrize("pad", [4, 2])
def test_flipcrop_gives_exact_padded_crops_flipped_half_the_time(pad):
    """The recipe's crop_pad is how far images move: every offset out to it, none beyond."""
    # non-square, so rows and columns cannot be confused; random values, so each crop is unique
    x = torch.rand(3000, 2, 6, 10) + 0.5
    y = augment(x, "flipcrop", _gen(1), crop_pad=pad)
    assert y.shape == x.shape and y.dtype == x.dtype
    candidates, labels = _flipcrop_candidates(x, pad=4)
    match = (candidates == y[:, None]).flatten(2).all(2)
    # each output is exactly (bit for bit) one crop at an offset in [-4, 4], flipped or not
    assert torch.equal(match.sum(1), torch.ones(len(x), dtype=torch.long))
    drawn = [labels[i] for i in match.int().argmax(1).tolist()]
    assert 0.45 < np.mean([flip for _, _, flip in drawn]) < 0.55
    # every offset comes up, out to `pad` pixels either way on both axes, and none further
    assert {(dy, dx) for dy, dx, _ in drawn} == {(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)}


def test_flipcrop_is_reproducible_and_per_image():
    x = torch.randn(64, 3, 8, 8)
    a = augment(x, "flipcrop", _gen(5))
    assert torch.equal(a, augment(x, "flipcrop", _gen(5)))
    assert not torch.equal(a, augment(x, "flipcrop", _gen(6)))
    twins = augment(x[:1].repeat(64, 1, 1, 1), "flipcrop", _gen(0))
    assert len({tuple(t.flatten().tolist()) for t in twins}) > 30


def test_flipcrop_takes_channels_last_and_feeds_a_conv():
    x = torch.randn(8, 3, 32, 32)
    y = augment(x.contiguous(memory_format=torch.channels_last), "flipcrop", _gen(2))
    assert torch.equal(y, augment(x, "flipcrop", _gen(2)))
    # the result is laid out channels_last, the layout training feeds the model
    assert y.is_contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1).to(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(conv(y), conv(y.contiguous()))


# ---- none and the sampling convention


def test_none_is_identity():
    x = torch.randn(2, 3, 8, 8)
    assert augment(x, "none", _gen()) is x


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown augmentation 'mixup'"):
        augment(torch.zeros(1, 1, 4, 4), "mixup", _gen())


def test_identity_matrix_reproduces_the_image():
    # the sampling convention (align_corners=False) maps pixel centres onto themselves
    x = torch.randn(1, 3, 32, 32)
    theta = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
    grid = torch.nn.functional.affine_grid(theta, [1, 3, 32, 32], align_corners=False)
    y = torch.nn.functional.grid_sample(x, grid, mode="bilinear", align_corners=False)
    torch.testing.assert_close(x, y)
    assert math.isclose(float(grid[0, 0, 0, 0]), -1 + 1 / 32)


# ---- test-time views


def test_move_shifts_by_whole_pixels_with_zeros_coming_in():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    assert move(x, 1, 0).tolist() == [[[[0, 0, 0], [0, 1, 2], [3, 4, 5]]]]  # down one row
    assert move(x, 0, -1).tolist() == [[[[1, 2, 0], [4, 5, 0], [7, 8, 0]]]]  # left one column
    assert move(x, -1, 1).tolist() == [[[[0, 3, 4], [0, 6, 7], [0, 0, 0]]]]  # up and right
    assert move(x, 0, 0).equal(x)


@pytest.mark.parametrize("mirror, moves", [(False, 0), (True, 0), (True, 2), (True, 4), (False, 4)])
def test_eval_views_are_the_image_its_moves_and_their_mirrors(mirror, moves):
    """What a recipe's test-time views are: each image, moved along the first diagonals (a pair
    along one diagonal first, so two moves stay centred), and with mirror each of those flipped."""
    x = torch.randn(2, 3, 5, 7)
    images = [x, x.flip(3)] if mirror else [x]
    expected = [move(im, dy, dx) for im in images for dy, dx in ((0, 0), *DIAGONAL_MOVES[:moves])]
    views = eval_views(x, mirror, moves)
    assert len(views) == (1 + moves) * (1 + mirror) and all(v.equal(e) for v, e in zip(views, expected))
    assert DIAGONAL_MOVES[:2] == ((1, 1), (-1, -1)) and len(set(DIAGONAL_MOVES)) == 4
