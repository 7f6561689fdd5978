"""SSL views: the batched augmentation and its MONAI array/dictionary transforms."""

import numpy as np
import pytest
import torch

from monai_cxrssl.data.views import CXRViewAugment, RandCXRView, RandCXRViewd

IDENTITY = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0, rotate_deg=0.0, intensity_prob=0.0,
                blur_prob=0.0, noise_prob=0.0, mean=0.0, std=1.0)


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
