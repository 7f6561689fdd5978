"""Tests of monai_cxrssl.data.transforms: LoadCXR(d), ResizeCXR(d), NormalizeCXR(d)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from PIL import Image

from monai_cxrssl.data.transforms import LoadCXR, LoadCXRd, NormalizeCXR, NormalizeCXRd, ResizeCXR, ResizeCXRd
from monai_cxrssl.exceptions import CXRReadError


def marker_image(height: int = 100, width: int = 50) -> torch.Tensor:
    """(1, H, W) grey 0.5 image with a bright 20 x 10 block whose top-left is at row 10, column 30."""
    image = torch.full((1, height, width), 0.5)
    image[0, 10:30, 30:40] = 1.0
    return image


def bright_box(image: torch.Tensor, threshold: float = 0.75) -> tuple[int, int, int, int]:
    """(first row, last row, first col, last col) of the pixels above ``threshold``."""
    rows, cols = torch.nonzero(image[0] > threshold, as_tuple=True)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


# ----------------------------------------------------------------------------------------------
# LoadCXR


def test_load_png_gives_channel_first_metatensor(tmp_path):
    pixels = np.arange(6 * 9, dtype=np.uint8).reshape(6, 9) * 4
    path = tmp_path / "x.png"
    Image.fromarray(pixels).save(path)
    image = LoadCXR()(path)
    assert isinstance(image, MetaTensor)
    assert image.shape == (1, 6, 9) and image.dtype == torch.float32
    np.testing.assert_allclose(image[0].numpy(), pixels / 255.0, atol=1e-7)
    assert image.meta["filename_or_obj"] == str(path)
    assert tuple(image.meta["original_shape"]) == (6, 9)

    image, meta = LoadCXR(image_only=False)(str(path))
    assert meta is image.meta and meta["filename_or_obj"] == str(path)


@pytest.mark.shared_data
def test_load_real_files(dicom_dir, kermany_dir, nih_dir):
    cases = [
        (sorted(kermany_dir.glob("test/*/*.jpeg"))[0], (224, 224)),
        (sorted(nih_dir.glob("test/*/*.png"))[0], (64, 64)),
        (dicom_dir / "cr_chest_pa_mono1_10bit_nometa.dcm", (440, 440)),
    ]
    for path, shape in cases:
        image = LoadCXR()(path)
        assert image.shape == (1, *shape) and image.dtype == torch.float32, path
        assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.05
        assert image.meta["filename_or_obj"] == str(path)


@pytest.mark.shared_data
def test_dict_pipeline_on_real_dicom(dicom_dir):
    path = dicom_dir / "cr_chest_pa_mono2_jpeg_siim.dcm"
    pipeline = Compose([LoadCXRd("image"), ResizeCXRd("image", 128), NormalizeCXRd("image")])
    out = pipeline({"image": str(path), "label": 1})
    image = out["image"]
    assert out["label"] == 1
    assert isinstance(image, MetaTensor) and image.shape == (1, 128, 128) and image.dtype == torch.float32
    assert image.meta["filename_or_obj"] == str(path)
    assert abs(float(image.mean())) < 1e-4 and abs(float(image.std(unbiased=False)) - 1) < 1e-3


def test_load_dict_raises_read_error_and_allows_missing_keys(tmp_path):
    with pytest.raises(CXRReadError, match="file not found"):
        LoadCXRd("image")({"image": str(tmp_path / "absent.png")})
    Image.fromarray(np.zeros((3, 4), dtype=np.uint8)).save(tmp_path / "a.png")
    out = LoadCXRd(["image", "other"], allow_missing_keys=True)({"image": tmp_path / "a.png"})
    assert out["image"].shape == (1, 3, 4) and "other" not in out


# ----------------------------------------------------------------------------------------------
# ResizeCXR


def test_resize_pad_keeps_aspect_and_marker_position():
    out = ResizeCXR(40, mode="pad")(marker_image())  # 100 x 50 -> 40 x 20, padded by 10 columns each side
    assert out.shape == (1, 40, 40) and out.dtype == torch.float32
    assert torch.all(out[0, :, :10] == 0) and torch.all(out[0, :, 30:] == 0), "padding is air (0)"
    assert torch.all(out[0, :, 11:29] > 0.4), "the image fills the full height, centred"
    top, bottom, left, right = bright_box(out)
    # marker: rows 10..29 -> 4..11, columns 30..39 -> 12..15, then +10 columns of padding
    assert (top, bottom, left, right) == (4, 11, 22, 25)


def test_resize_crop_keeps_aspect_and_marker_position():
    out = ResizeCXR(40, mode="crop")(marker_image())  # 100 x 50 -> 80 x 40, 20 rows cropped top and bottom
    assert out.shape == (1, 40, 40)
    assert torch.all(out > 0.4), "no padding in crop mode"
    top, bottom, left, right = bright_box(out)
    # marker: rows 10..29 -> 8..23 -> minus 20 cropped rows -> 0..3 (partly cut), columns 30..39 -> 24..31
    assert (top, bottom, left, right) == (0, 3, 24, 31)


def test_resize_rows_stay_rows_for_wide_image():
    wide = marker_image().transpose(1, 2).contiguous()  # 50 x 100, marker at rows 30..39, columns 10..29
    out = ResizeCXR(40, mode="pad")(wide)
    assert out.shape == (1, 40, 40)
    assert torch.all(out[0, :10] == 0) and torch.all(out[0, 30:] == 0), "a wide image is padded above and below"
    assert bright_box(out) == (22, 25, 4, 11)


def test_resize_upsamples_and_accepts_numpy_and_other_interpolations():
    small = np.random.default_rng(0).random((1, 10, 5)).astype(np.float64)
    for interp in ("bilinear", "bicubic", "area", "nearest"):
        out = ResizeCXR(30, interp=interp)(small)
        assert isinstance(out, np.ndarray) and out.shape == (1, 30, 30) and out.dtype == np.float32


def test_resize_square_input_of_target_size_is_unchanged():
    image = torch.rand(1, 16, 16)
    torch.testing.assert_close(ResizeCXR(16)(image), image)
    torch.testing.assert_close(ResizeCXR(16, mode="crop")(image), image)


def test_resize_downsampling_is_antialiased():
    stripes = torch.zeros(1, 400, 400)
    stripes[0, :, ::2] = 1.0  # one-pixel stripes: alias-free downsampling gives a flat 0.5
    out = ResizeCXR(50)(stripes)
    assert torch.allclose(out, torch.full_like(out, 0.5), atol=0.02)


def test_resize_metatensor_keeps_meta_and_updates_affine():
    image = MetaTensor(marker_image(), meta={"filename_or_obj": "x.png"})
    out = ResizeCXR(40, mode="pad")(image)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "x.png"
    # 100 x 50 -> 40 x 20 (scale 0.4) + 10 columns of padding on the left. Output pixel (0, 10) is the
    # first resized pixel; its centre, 0.5 / 0.4 - 0.5 = 0.75, is at input (0.75, 0.75).
    # Output pixel (39, 29) is the last one: (39.5 / 0.4 - 0.5, 19.5 / 0.4 - 0.5) = (98.25, 48.25).
    affine = out.affine.numpy()
    np.testing.assert_allclose((affine @ np.array([0.0, 10.0, 0.0, 1.0]))[:2], [0.75, 0.75])
    np.testing.assert_allclose((affine @ np.array([39.0, 29.0, 0.0, 1.0]))[:2], [98.25, 48.25])
    crop = ResizeCXR(40, mode="crop")(image)  # 100 x 50 -> 80 x 40 (scale 0.8), 20 rows cropped at the top
    np.testing.assert_allclose((crop.affine.numpy() @ np.array([0.0, 0.0, 0.0, 1.0]))[:2], [25.125, 0.125])


def test_resize_dict_and_argument_checks():
    out = ResizeCXRd(["a", "b"], 8, allow_missing_keys=True)({"a": torch.rand(1, 16, 4)})
    assert out["a"].shape == (1, 8, 8)
    with pytest.raises(ValueError, match="size"):
        ResizeCXR(0)
    with pytest.raises(ValueError, match="mode"):
        ResizeCXR(8, mode="stretch")
    with pytest.raises(ValueError, match="interp"):
        ResizeCXR(8, interp="lanczos")
    with pytest.raises(ValueError, match="channel-first"):
        ResizeCXR(8)(torch.rand(16, 16))


# ----------------------------------------------------------------------------------------------
# NormalizeCXR


def test_normalize_with_fixed_statistics():
    image = torch.tensor([[[0.502, 0.502 + 0.0856], [0.0, 1.0]]])
    out = NormalizeCXR(mean=0.502, std=0.0856)(image)
    assert out.dtype == torch.float32 and out.shape == image.shape
    torch.testing.assert_close(out, (image - 0.502) / 0.0856)
    assert abs(float(out[0, 0, 1]) - 1.0) < 1e-5


def test_normalize_per_image():
    image = torch.rand(1, 32, 16, dtype=torch.float64) * 0.3 + 0.2
    out = NormalizeCXR()(image)
    assert out.dtype == torch.float32
    assert abs(float(out.mean())) < 1e-5 and abs(float(out.std(unbiased=False)) - 1) < 1e-4
    constant = NormalizeCXR()(torch.full((1, 4, 4), 0.7))
    assert torch.all(constant.abs() < 1e-6), "a constant image is only centred, rounding errors are not blown up"


def test_normalize_keeps_metatensor_and_dict_version():
    image = MetaTensor(torch.rand(1, 8, 8), meta={"filename_or_obj": "y.dcm"})
    out = NormalizeCXRd("image", mean=0.5, std=0.25)({"image": image})["image"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "y.dcm"
    torch.testing.assert_close(out.as_tensor(), (image.as_tensor() - 0.5) / 0.25)


def test_normalize_argument_checks():
    with pytest.raises(ValueError, match="both mean and std"):
        NormalizeCXR(mean=0.5)
    with pytest.raises(ValueError, match="positive"):
        NormalizeCXR(mean=0.5, std=0.0)
