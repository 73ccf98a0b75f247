import math

import torch

from fireablate.augment import augment, flipcrop_matrices, study_matrices


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_flipcrop_moves_whole_pixels_exactly():
    x = torch.arange(64 * 3, dtype=torch.float32).view(3, 1, 8, 8) + 1  # no zeros, so padding shows
    y = augment(x, "flipcrop", _gen())
    for src, out in zip(x[:, 0], y[:, 0]):
        # every kept value is one of the image's own, in the image's own row order
        kept = out[out != 0]
        assert set(kept.tolist()) <= set(src.flatten().tolist())
        assert (out != 0).sum() >= 4 * 4  # at most 4 pixels shifted off each axis


def test_flipcrop_flips_half_the_batch_and_shifts_at_most_4_pixels():
    theta = flipcrop_matrices(4000, 32, _gen(), "cpu")
    flips = (theta[:, 0, 0] < 0).float().mean()
    assert 0.45 < flips < 0.55
    shifts = theta[:, :, 2] * 32 / 2
    assert torch.equal(shifts, shifts.round()) and shifts.abs().max() == 4


def test_study_matrices_stay_in_the_studys_ranges():
    theta = study_matrices(5000, 32, _gen(), "cpu")
    a, c = theta[:, 0, 0], theta[:, 1, 0]
    zoom_x = torch.sqrt(a**2 + c**2)
    angle = torch.rad2deg(torch.atan2(c, a))
    assert angle.abs().max() <= 20.0 + 1e-4 and angle.abs().max() > 19
    assert zoom_x.min() >= 0.9 - 1e-6 and zoom_x.max() <= 1.1 + 1e-6
    assert theta[:, :, 2].abs().max() <= 0.2 + 1e-6  # 10% of the image in [-1, 1] units
    # no flips: the determinant stays positive
    assert (theta[:, 0, 0] * theta[:, 1, 1] - theta[:, 0, 1] * theta[:, 1, 0]).min() > 0


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


def test_none_is_identity():
    x = torch.randn(2, 3, 8, 8)
    assert augment(x, "none", _gen()) is x


def test_identity_matrix_reproduces_the_image():
    # the sampling convention (align_corners=False) maps pixel centres onto themselves
    x = torch.randn(1, 3, 32, 32)
    theta = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
    grid = torch.nn.functional.affine_grid(theta, [1, 3, 32, 32], align_corners=False)
    y = torch.nn.functional.grid_sample(x, grid, mode="bilinear", align_corners=False)
    torch.testing.assert_close(x, y)
    assert math.isclose(float(grid[0, 0, 0, 0]), -1 + 1 / 32)
