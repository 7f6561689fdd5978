"""SSL views: the batched augmentation and its MONAI array/dictionary transforms."""

import numpy as np
import pytest
import torch

from monai_cxrssl.data.views import CXRViewAugment, RandCXRView, RandCXRViewd

IDENTITY = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0, rotate_deg=0.0, intensity_prob=0.0,
                blur_prob=0.0, noise_prob=0.0)


def _marker_image(size=32):
    x = torch.zeros(1, 1, size, size)
    x[..., 2:6, 4:10] = 1.0  # a bright block near the top-left corner
    return x


def test_identity_parameters_reproduce_the_image():
    aug = CXRViewAugment(out_size=32, **IDENTITY)
    x = torch.rand(3, 1, 32, 32)
    y = aug(x, np.random.RandomState(0))
    assert torch.allclose(y, x, atol=1e-5)


def test_flip_mirrors_columns_and_keeps_rows():
    aug = CXRViewAugment(out_size=32, **{**IDENTITY, "flip_prob": 1.0})
    x = _marker_image()
    y = aug(x, np.random.RandomState(0))
    assert torch.allclose(y, torch.flip(x, dims=[-1]), atol=1e-5)


def test_crop_keeps_orientation():
    # a centred half-size crop of an image with a marker in the top rows keeps it in the top rows
    aug = CXRViewAugment(out_size=32, **{**IDENTITY, "scale": (0.999, 1.0)})
    x = _marker_image()
    y = aug(x, np.random.RandomState(1))[0, 0]
    rows = y.sum(dim=1)
    assert rows[:16].sum() > 10 * rows[16:].sum()


def test_rotation_bounded_and_output_shape():
    aug = CXRViewAugment(out_size=24, rotate_deg=10)
    p = aug.sample(1000, np.random.RandomState(0))
    assert np.abs(np.rad2deg(p["angle"])).max() <= 10.0 + 1e-4
    assert 0 < p["w"].min() and p["w"].max() <= 1 and p["h"].max() <= 1
    y = aug(torch.rand(4, 1, 64, 48), np.random.RandomState(0))
    assert y.shape == (4, 1, 24, 24) and torch.isfinite(y).all()


def test_same_seed_same_views_different_seed_different_views():
    aug = CXRViewAugment(out_size=32)
    x = torch.rand(4, 1, 40, 40)
    g = lambda s: torch.Generator().manual_seed(s)
    a = aug(x, np.random.RandomState(5), g(1))
    b = aug(x, np.random.RandomState(5), g(1))
    c = aug(x, np.random.RandomState(6), g(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_blur_smooths():
    aug = CXRViewAugment(out_size=64, **{**IDENTITY, "blur_prob": 1.0, "blur_sigma": (0.03, 0.03)})
    x = torch.rand(2, 1, 64, 64)
    y = aug(x, np.random.RandomState(0))
    assert y.std() < 0.5 * x.std()
    assert torch.allclose(y.mean(), x.mean(), atol=0.02)


def test_batched_and_per_sample_paths_agree():
    kwargs = dict(out_size=32, noise_prob=0.0)
    aug = CXRViewAugment(**kwargs)
    x = torch.rand(3, 1, 48, 48)
    params = aug.sample(3, np.random.RandomState(3))
    batched = aug.apply(x, params)
    for i in range(3):
        one = aug.apply(x[i : i + 1], {k: v[i : i + 1] for k, v in params.items()})
        assert torch.allclose(batched[i], one[0], atol=1e-5)
    t = RandCXRView(aug)
    t.set_random_state(seed=7)
    assert t(x[0]).shape == (1, 32, 32)


def test_dict_transform_views_are_independent_and_reproducible():
    x = torch.rand(1, 48, 48)
    t = RandCXRViewd(keys="image", view_keys=("v1", "v2"), out_size=32)
    t.set_random_state(seed=11)
    a = t({"image": x})
    t.set_random_state(seed=11)
    b = t({"image": x})
    assert torch.equal(a["v1"], b["v1"]) and torch.equal(a["v2"], b["v2"])
    assert not torch.allclose(a["v1"], a["v2"])
    assert torch.equal(a["image"], x)


def test_bad_arguments():
    with pytest.raises(ValueError, match="scale"):
        CXRViewAugment(scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="batch"):
        CXRViewAugment(out_size=8)(torch.rand(1, 8, 8), np.random.RandomState(0))


def _ramp(size=64, b=1):
    """An image whose value is its normalised column position (0 at the left, 1 at the right)."""
    cols = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    return cols.view(1, 1, 1, size).expand(b, 1, size, size).contiguous()


def test_crops_stay_inside_the_image_and_their_area_within_the_scale_range():
    aug = CXRViewAugment(out_size=16, scale=(0.3, 1.0), ratio=(3 / 4, 4 / 3))
    p = aug.sample(5000, np.random.RandomState(0))
    area = p["w"] * p["h"]  # crop area as a fraction of the image ((2w)(2h) / 2^2 in [-1, 1] units)
    assert area.max() <= 1.0 + 1e-6 and area.min() >= 0.3 * 0.8  # clipping to the image only shrinks a side
    assert np.mean(area >= 0.3 - 1e-6) > 0.95
    assert (np.abs(p["cx"]) + p["w"] <= 1 + 1e-5).all() and (np.abs(p["cy"]) + p["h"] <= 1 + 1e-5).all()
    # applied to a ramp (value = column position), a view spans exactly the crop's columns
    geo = CXRViewAugment(out_size=32, **{**IDENTITY, "scale": (0.3, 1.0), "ratio": (3 / 4, 4 / 3)})
    x = _ramp(64, b=8)
    q = geo.sample(8, np.random.RandomState(1))
    y = geo.apply(x, q)
    for i in range(8):
        left, right = (q["cx"][i] - q["w"][i] + 1) / 2, (q["cx"][i] + q["w"][i] + 1) / 2
        assert abs(float(y[i].min()) - left) < 0.03 and abs(float(y[i].max()) - right) < 0.03
        assert bool((y[i, 0, :, 1:] >= y[i, 0, :, :-1] - 1e-5).all())  # not flipped: still increasing


def test_intensities_stay_in_range():
    aug = CXRViewAugment(out_size=32, noise_prob=0.0, intensity_prob=1.0, brightness=0.3,
                         contrast=0.5, gamma=0.5)
    y = aug(torch.rand(64, 1, 40, 40), np.random.RandomState(0))
    assert y.min() >= -1e-6 and y.max() <= 1 + 1e-6
    noisy = CXRViewAugment(out_size=32, noise_prob=1.0, noise_std=0.03)
    y = noisy(torch.rand(64, 1, 40, 40), np.random.RandomState(0), torch.Generator().manual_seed(0))
    assert y.min() > -6 * 0.03 and y.max() < 1 + 6 * 0.03
    # views stay in the image's range: the network input's normalisation is ViewBatch's alone
    with pytest.raises(TypeError):
        CXRViewAugment(out_size=40, mean=0.5)


def test_per_sample_transform_and_batched_views_are_equal_in_distribution():
    # the MONAI per-sample path (e.g. in DataLoader workers) and the trainer's batched path draw
    # from the same distribution: compare summary statistics of many views of one image
    x = _ramp(48)
    x[..., 20:28, 10:16] = 1.0
    aug = CXRViewAugment(out_size=24)
    n = 256
    batched = aug(x.expand(n, 1, 48, 48), np.random.RandomState(0), torch.Generator().manual_seed(0))
    t = RandCXRView(aug)
    t.set_random_state(seed=1)
    single = torch.stack([t(x[0]) for _ in range(n)])
    for stat in (lambda v: v.mean(dim=(1, 2, 3)), lambda v: v.std(dim=(1, 2, 3)),
                 lambda v: v[..., :12].mean(dim=(1, 2, 3)) - v[..., 12:].mean(dim=(1, 2, 3)),  # flip balance
                 lambda v: (v[..., 1:] - v[..., :-1]).abs().mean(dim=(1, 2, 3))):  # noise and blur
        a, b = stat(batched), stat(single)
        assert abs(float(a.mean() - b.mean())) < 4 * float(torch.sqrt((a.var() + b.var()) / n)) + 1e-3
    # the mean view is symmetric-ish (half the views flipped) and the same for both paths
    assert (batched.mean(0) - single.mean(0)).abs().mean() < 0.1
