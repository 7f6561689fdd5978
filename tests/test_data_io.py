"""Tests of monai_cxrssl.data.io: real DICOM/JPEG/PNG radiographs, generated files, bad input."""

from __future__ import annotations

import logging

import itk
import nibabel
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from monai_cxrssl.data import io as cxr_io
from monai_cxrssl.data.io import read_cxr, read_dicom_header
from monai_cxrssl.exceptions import CXRReadError

J2K = "cr_chest_pa_mono1_j2k.dcm"
NOMETA = "cr_chest_pa_mono1_10bit_nometa.dcm"
SIIM = "cr_chest_pa_mono2_jpeg_siim.dcm"
REAL_DICOMS = (J2K, NOMETA, SIIM)
WINDOWED = (J2K, NOMETA)

# header facts from shared/data/README.md
EXPECTED_HEADER = {
    J2K: ("MONOCHROME1", 1955, 1841, 15),
    NOMETA: ("MONOCHROME1", 440, 440, 10),
    SIIM: ("MONOCHROME2", 1024, 1024, 8),
}


# ----------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def real_images(dicom_dir):
    """Each real DICOM read once per ``apply_voi`` (the JPEG 2000 file takes ~0.5 s to decode)."""
    return {(name, voi): read_cxr(dicom_dir / name, apply_voi=voi) for name in REAL_DICOMS for voi in (True, False)}


def region_mean(image: np.ndarray, row: float, col: float, half_h: float, half_w: float) -> float:
    """Mean over a box centred at fractional (row, col) of the image, half sizes as fractions."""
    h, w = image.shape
    rows = slice(int(h * (row - half_h)), int(h * (row + half_h)))
    cols = slice(int(w * (col - half_w)), int(w * (col + half_w)))
    return float(image[rows, cols].mean())


def write_dicom(path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None, **attrs):
    """Write an uncompressed explicit-VR little-endian DICOM with ``pixels`` (H, W) or (H, W, 3)."""
    pixels = np.ascontiguousarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def asymmetric_image() -> np.ndarray:
    """5 x 8 image, values 0..39 in raster order: any transposition or flip changes it."""
    return np.arange(40, dtype=np.float32).reshape(5, 8)


# ----------------------------------------------------------------------------------------------
# real DICOM files


@pytest.mark.shared_data
@pytest.mark.parametrize("name", REAL_DICOMS)
def test_real_dicom_decodes_to_header_shape_in_unit_range(real_images, dicom_dir, name):
    header = read_dicom_header(dicom_dir / name)
    photometric, rows, cols, bits = EXPECTED_HEADER[name]
    assert (header["PhotometricInterpretation"], header["Rows"], header["Columns"], header["BitsStored"]) == (
        photometric,
        rows,
        cols,
        bits,
    )
    assert header["ViewPosition"] == "PA"
    for voi in (True, False):
        image = real_images[name, voi]
        assert image.shape == (rows, cols)
        assert image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert image.std() > 0.1, "a radiograph is not constant"


@pytest.mark.shared_data
@pytest.mark.parametrize("name", REAL_DICOMS)
def test_real_dicom_lungs_darker_than_mediastinum(real_images, name):
    """Air is dark: both lung fields are clearly darker than the central mediastinum/spine strip.

    On the raw MONOCHROME1 values (no inversion) the difference has the opposite sign, so this
    check fails if the inversion is dropped.
    """
    for voi in (True, False):
        image = real_images[name, voi]
        left_lung = region_mean(image, 0.45, 0.3, 0.05, 0.05)
        right_lung = region_mean(image, 0.45, 0.7, 0.05, 0.05)
        mediastinum = region_mean(image, 0.45, 0.5, 0.1, 0.03)
        assert mediastinum - max(left_lung, right_lung) > 0.15, (name, voi, left_lung, right_lung, mediastinum)


@pytest.mark.shared_data
def test_real_dicom_without_file_meta_needs_force_and_reads(dicom_dir, real_images):
    path = dicom_dir / NOMETA
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(path)  # no preamble / file meta: plain pydicom refuses it
    header = read_dicom_header(path)
    assert header["SOPInstanceUID"] and header["StudyInstanceUID"]
    assert header["PatientID"] is None  # absent in this file

    # independent check of the VOI and scaling: window 550/1024 (linear), 10 bits stored, inverted
    ds = pydicom.dcmread(path, force=True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    raw = ds.pixel_array.astype(np.float64)
    windowed = np.clip((raw - (550 - 0.5)) / (1024 - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(real_images[NOMETA, True], 1 - windowed, atol=1e-6)
    np.testing.assert_allclose(real_images[NOMETA, False], 1 - raw / 1023, atol=1e-6)


@pytest.mark.shared_data
def test_real_dicom_apply_voi_changes_only_windowed_files(real_images):
    for name in WINDOWED:
        assert np.abs(real_images[name, True] - real_images[name, False]).mean() > 0.01, name
    np.testing.assert_array_equal(real_images[SIIM, True], real_images[SIIM, False])  # no window stored


@pytest.mark.shared_data
def test_real_dicom_header_reads_all_files(dicom_dir):
    for name in REAL_DICOMS:
        header = read_dicom_header(dicom_dir / name)
        assert set(header) == set(cxr_io.DICOM_HEADER_KEYWORDS)
        assert isinstance(header["Rows"], int) and isinstance(header["SOPInstanceUID"], str)


# ----------------------------------------------------------------------------------------------
# real JPEG / PNG files (3-channel, grey content)


@pytest.mark.shared_data
def test_kermany_jpeg_reads_as_one_grey_channel(kermany_dir):
    path = sorted(kermany_dir.glob("train/*/*.jpeg"))[0]
    image = read_cxr(path)
    rgb = np.asarray(Image.open(path))
    assert rgb.shape == (224, 224, 3)
    assert image.shape == (224, 224) and image.dtype == np.float32
    np.testing.assert_allclose(image, rgb[..., 0] / 255.0, atol=1e-5)  # grey content: luminance == channel


@pytest.mark.shared_data
def test_nih_png_reads_as_one_grey_channel_including_rgba(nih_dir):
    paths = sorted(nih_dir.glob("*/*/*.png"))
    rgba = next(p for p in paths if Image.open(p).mode == "RGBA")  # a few files of the subset carry alpha
    for path in (paths[0], rgba):
        image = read_cxr(path)
        channel = np.asarray(Image.open(path))[..., 0]
        assert image.shape == (64, 64)
        np.testing.assert_allclose(image, channel / 255.0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# generated PNG / TIFF


def test_png_8bit_gradient(tmp_path):
    pixels = np.tile(np.arange(256, dtype=np.uint8), (10, 1))  # 10 rows x 256 columns
    path = tmp_path / "grad8.png"
    Image.fromarray(pixels).save(path)
    image = read_cxr(path)
    assert image.shape == (10, 256)
    np.testing.assert_allclose(image, pixels / 255.0, atol=1e-7)


def test_png_16bit_gradient(tmp_path):
    pixels = np.tile(np.linspace(0, 65535, 300).astype(np.uint16), (7, 1))
    path = tmp_path / "grad16.png"
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode.startswith("I;16")
    image = read_cxr(path)
    assert image.shape == (7, 300) and image.dtype == np.float32
    np.testing.assert_allclose(image, pixels / 65535.0, atol=1e-7)


def test_32bit_integer_tiff_uses_16bit_range_when_it_fits(tmp_path):
    small = np.tile(np.arange(0, 60000, 1000, dtype=np.int32), (3, 1))
    path = tmp_path / "i32.tif"
    Image.fromarray(small, mode="I").save(path)
    np.testing.assert_allclose(read_cxr(path), small / 65535.0, atol=1e-7)

    large = small * 10  # beyond 16 bits: min-max
    Image.fromarray(large, mode="I").save(path)
    np.testing.assert_allclose(read_cxr(path), (large - large.min()) / (large.max() - large.min()), atol=1e-6)


def test_rgb_png_with_grey_content_equals_grey(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "rgb.png")
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_allclose(read_cxr(tmp_path / "rgb.png"), read_cxr(tmp_path / "grey.png"), atol=1e-6)


def test_colour_png_is_converted_with_one_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(cxr_io, "_colour_warning_issued", False)
    colour = np.zeros((8, 8, 3), dtype=np.uint8)
    colour[..., 0] = 200  # pure red
    Image.fromarray(colour).save(tmp_path / "red.png")
    with caplog.at_level(logging.WARNING, logger=cxr_io.__name__):
        first = read_cxr(tmp_path / "red.png")
        read_cxr(tmp_path / "red.png")
    np.testing.assert_allclose(first, 0.299 * 200 / 255, atol=1e-6)
    warnings = [r for r in caplog.records if "colour content" in r.getMessage()]
    assert len(warnings) == 1 and "red.png" in warnings[0].getMessage()


def test_content_decides_over_extension(tmp_path):
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(pixels).save(tmp_path / "image.png")
    (tmp_path / "png_named.dcm").write_bytes((tmp_path / "image.png").read_bytes())
    np.testing.assert_allclose(read_cxr(tmp_path / "png_named.dcm"), pixels / 255.0, atol=1e-7)
    write_dicom(tmp_path / "dicom_named.img", pixels)
    np.testing.assert_allclose(read_cxr(tmp_path / "dicom_named.img"), pixels / 255.0, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# generated DICOM


def test_monochrome1_is_the_inverse_of_monochrome2(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 4096, (6, 9), dtype=np.uint16)
    mono1 = read_cxr(write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1", bits_stored=12))
    mono2 = read_cxr(write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2", bits_stored=12))
    assert mono2.shape == (6, 9)
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    np.testing.assert_allclose(mono2, pixels / 4095.0, atol=1e-6)


def test_12bit_without_window_is_scaled_by_4095_not_by_its_max(tmp_path):
    pixels = np.tile(np.arange(0, 2001, 100, dtype=np.uint16), (4, 1))
    image = read_cxr(write_dicom(tmp_path / "12bit.dcm", pixels, bits_stored=12))
    np.testing.assert_allclose(image, pixels / 4095.0, atol=1e-6)
    assert image.max() < 0.5


def test_rescale_slope_intercept_without_and_with_window(tmp_path):
    pixels = np.tile(np.arange(0, 1001, 50, dtype=np.uint16), (3, 1))
    rescaled = pixels * 2.0 - 1000.0  # -1000 .. 1000
    path = write_dicom(tmp_path / "rescale.dcm", pixels, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000)
    # no window: rescaled values are scaled by their own min/max
    np.testing.assert_allclose(read_cxr(path), (rescaled + 1000) / 2000, atol=1e-6)

    center, width = 200.0, 801.0  # in rescaled units
    path = write_dicom(
        tmp_path / "rescale_window.dcm",
        pixels,
        bits_stored=12,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=center,
        WindowWidth=width,
    )
    expected = np.clip((rescaled - (center - 0.5)) / (width - 1) + 0.5, 0, 1)  # DICOM linear window
    np.testing.assert_allclose(read_cxr(path), expected, atol=1e-6)
    np.testing.assert_allclose(read_cxr(path, apply_voi=False), (rescaled + 1000) / 2000, atol=1e-6)


def test_voi_lut_sequence_is_scaled_by_its_table_range(tmp_path):
    lut = np.sqrt(np.arange(4096) / 4095.0) * 4095  # 12-bit table although the descriptor says 16 bits
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = np.rint(lut).astype("<u2").tobytes()  # OW
    pixels = np.tile(np.arange(0, 4096, 256, dtype=np.uint16), (2, 1))
    path = write_dicom(tmp_path / "voilut.dcm", pixels, bits_stored=12, VOILUTSequence=[item])
    np.testing.assert_allclose(read_cxr(path), np.rint(lut[pixels]) / 4095.0, atol=1e-6)


def test_rgb_dicom_with_grey_content_reads(tmp_path):
    grey = np.random.default_rng(2).integers(0, 256, (5, 7), dtype=np.uint8)
    path = write_dicom(tmp_path / "rgb_grey.dcm", np.stack([grey] * 3, axis=-1), "RGB")
    np.testing.assert_allclose(read_cxr(path), grey / 255.0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# NIfTI and ITK orientation round trips


@pytest.mark.parametrize("singleton", [False, True])
def test_nifti_round_trip_keeps_orientation(tmp_path, singleton):
    image = asymmetric_image()
    data = image.T[..., None] if singleton else image.T  # NIfTI axis 0 = x = columns
    path = tmp_path / "image.nii.gz"
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), path)
    np.testing.assert_allclose(read_cxr(path), image / image.max(), atol=1e-6)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_itk_round_trip_keeps_orientation(tmp_path, suffix):
    image = asymmetric_image()
    path = tmp_path / f"image{suffix}"
    itk.imwrite(itk.image_from_array(image), str(path))  # ITK arrays are [row, column]
    np.testing.assert_allclose(read_cxr(path), image / image.max(), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# bad input: every failure is a CXRReadError naming the file


def assert_read_error(path, *words: str, reader=None):
    with pytest.raises(CXRReadError) as info:
        read_cxr(path, reader=reader)
    message = str(info.value)
    assert str(path) in message and info.value.path == str(path)
    for word in words:
        assert word in message, message
    return info.value


def test_missing_file(tmp_path):
    assert_read_error(tmp_path / "absent.dcm", "file not found")
    with pytest.raises(CXRReadError, match="file not found"):
        read_dicom_header(tmp_path / "absent.dcm")


def test_directory_is_not_an_image(tmp_path):
    assert_read_error(tmp_path, "not a regular file")


@pytest.mark.shared_data
@pytest.mark.parametrize("name", [NOMETA, SIIM, J2K])
@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")
def test_truncated_real_dicom(tmp_path, dicom_dir, name):
    data = (dicom_dir / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    assert_read_error(path, "truncated")


def test_garbage_bytes_with_dcm_extension(tmp_path):
    path = tmp_path / "garbage.dcm"
    path.write_bytes(np.random.default_rng(3).bytes(5000))
    assert_read_error(path)
    with pytest.raises(CXRReadError, match="garbage.dcm"):
        read_dicom_header(path)


def test_truncated_and_garbage_png(tmp_path):
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    assert_read_error(tmp_path / "truncated.png")
    (tmp_path / "garbage.png").write_bytes(b"not an image at all" * 10)
    assert_read_error(tmp_path / "garbage.png")


def test_header_of_a_png_is_an_error(tmp_path):
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(CXRReadError, match="x.png"):
        read_dicom_header(tmp_path / "x.png")


def test_colour_content_has_one_policy_for_dicom_and_png_with_a_count(tmp_path, caplog):
    from monai.transforms import Compose

    from monai_cxrssl.data import CXRCacheDataset, LoadCXRd

    colour = np.zeros((6, 6, 3), dtype=np.uint8)
    colour[..., 2] = 255  # blue
    dcm = write_dicom(tmp_path / "blue.dcm", colour, "RGB")
    png = tmp_path / "blue.png"
    Image.fromarray(colour).save(png)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((6, 6), 90, np.uint8)).save(grey)
    # converted to luminance alike (the default) ...
    expected = 0.114  # pure blue's luma, in [0, 1]
    assert np.allclose(read_cxr(dcm), read_cxr(png)) and np.allclose(read_cxr(png), expected, atol=0.01)
    # ... or refused alike
    for path in (dcm, png):
        with pytest.raises(CXRReadError, match=r"colour content .*expected a grey radiograph"):
            read_cxr(path, colour="refuse")
    items = [{"image": str(p)} for p in (dcm, png, grey)]
    with caplog.at_level(logging.WARNING):
        ds = CXRCacheDataset(items, Compose([LoadCXRd("image")]), num_workers=1)
    assert len(ds) == 3 and "2 of 3 image(s) had colour content and were converted to luminance" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ds = CXRCacheDataset(items, Compose([LoadCXRd("image", colour="refuse")]), num_workers=1, skip_unreadable=True)
    assert len(ds) == 1 and "skipped 2 unreadable image(s) of 3" in caplog.text


def test_palette_colour_dicom_is_rejected(tmp_path):
    path = write_dicom(tmp_path / "palette.dcm", np.zeros((4, 4), dtype=np.uint8), "PALETTE COLOR")
    assert_read_error(path, "PALETTE COLOR", "MONOCHROME")


def test_multi_frame_dicom_is_rejected(tmp_path):
    pixels = np.zeros((2, 4, 4), dtype=np.uint8)
    path = write_dicom(tmp_path / "frames.dcm", pixels.reshape(8, 4), NumberOfFrames=2)
    assert_read_error(path, "multi-frame", "2 frames")


def test_dicom_without_pixel_data_is_rejected(tmp_path):
    path = write_dicom(tmp_path / "nopixels.dcm", np.zeros((4, 4), dtype=np.uint8))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    assert_read_error(path, "no pixel data")


def test_nifti_that_is_not_2d_or_not_finite_is_rejected(tmp_path):
    nibabel.save(nibabel.Nifti1Image(np.zeros((4, 5, 3), dtype=np.float32), np.eye(4)), tmp_path / "vol.nii")
    assert_read_error(tmp_path / "vol.nii", "expected a 2D")
    nan = asymmetric_image()
    nan[0, 0] = np.nan
    nibabel.save(nibabel.Nifti1Image(nan.T, np.eye(4)), tmp_path / "nan.nii")
    assert_read_error(tmp_path / "nan.nii", "NaN")


def test_forced_reader_failure_and_unknown_reader(tmp_path):
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "x.png")
    assert_read_error(tmp_path / "x.png", reader="nifti")
    with pytest.raises(ValueError, match="reader must be one of"):
        read_cxr(tmp_path / "x.png", reader="opencv")


class _Panic(BaseException):
    """What a Rust decoder's panic reaches Python as (pyo3's PanicException derives from BaseException)."""


def test_a_native_decoder_panic_is_a_read_error_and_the_cache_does_not_hang(tmp_path, monkeypatch):
    import threading

    from monai.transforms import Compose

    from monai_cxrssl.data import CXRCacheDataset, LoadCXRd, ResizeCXRd

    good = tmp_path / "good.png"
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(good)
    bad = tmp_path / "damaged_rle.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(bad)
    real = cxr_io._read_pil_values

    def decoder(path, **kw):
        if "damaged" in str(path):
            raise _Panic("called `Result::unwrap()` on an `Err` value: RLE segment out of bounds")
        return real(path, **kw)

    monkeypatch.setattr(cxr_io, "_read_pil_values", decoder)
    with pytest.raises(CXRReadError, match=r"damaged_rle.png.*_Panic.*RLE segment"):
        read_cxr(bad)
    items = [{"image": str(good)}, {"image": str(bad)}, {"image": str(good)}]
    transform = Compose([LoadCXRd("image"), ResizeCXRd("image", 8)])
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        ds=CXRCacheDataset(items, transform, skip_unreadable=True, num_workers=2)), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "building the cache hung on a decoder panic"
    assert len(result["ds"]) == 2 and "damaged_rle.png" in result["ds"].unreadable[0]
