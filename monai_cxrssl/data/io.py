"""Reading chest radiographs (DICOM, PNG/JPEG/BMP/TIFF, NIfTI, MetaImage/NRRD) into one convention.

Whatever the file format, :func:`read_cxr` returns a ``float32`` array of shape ``(H, W)`` with
values in ``[0, 1]``:

- **air is dark, bone is bright**: DICOM ``MONOCHROME1`` images (lowest value displayed white) are
  inverted, so every image looks like ``MONOCHROME2``;
- **rows stay rows**: ``array[row, col]`` is the pixel that pydicom (``ds.pixel_array``) and PIL
  (``numpy.asarray(image)``) show at that row and column; nothing is transposed. Note that MONAI's
  own ``LoadImage`` swaps the axes of PNG/JPEG files (``reverse_indexing``); this reader does not;
- **one channel**: colour-encoded files (common for PNG/JPEG exports of radiographs, RGB/YBR DICOM) are
  reduced to their luminance; files with colour *content* too, counted, unless ``colour="refuse"``.

How values are brought to ``[0, 1]`` depends on what the file says about them:

==========================  ==================================================================
file                        intensity scaling
==========================  ==================================================================
DICOM, VOI LUT or window    Modality LUT (rescale slope/intercept or LUT), then the VOI LUT or
                            the first window (centre/width), scaled by the output range of
                            that VOI transform (so the window maps to ``[0, 1]``)
DICOM, no VOI (or           Modality LUT, then for unsigned data without a modality transform
``apply_voi=False``)        the range that ``BitsStored`` allows, ``[0, 2**BitsStored - 1]``
                            (a 12-bit image is divided by 4095 whatever its content, so
                            exposure differences are kept); otherwise (signed data, rescaled or
                            LUT-mapped values) the image's own min/max
PNG/JPEG/BMP/TIFF           the range of the pixel type: 8 bit / 255, 16 bit / 65535 (32-bit
                            integer images, PIL mode ``"I"``, are treated as 16 bit when their
                            values fit in ``[0, 65535]``); other integer or float images: min/max
NIfTI, MetaImage, NRRD      the image's own min/max (these formats carry no display range)
==========================  ==================================================================

A constant image scaled by its own min/max becomes all zeros. Every failure to read a file
(missing, truncated, corrupt, undecodable or of an unsupported kind) raises
:class:`~monai_cxrssl.exceptions.CXRReadError` naming the file and what was expected.
"""

from __future__ import annotations

import logging
import threading
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from monai_cxrssl.exceptions import CXRReadError

__all__ = ["CXRReader", "DICOM_HEADER_KEYWORDS", "READERS", "parse_dicom", "read_cxr", "read_dicom_header"]

logger = logging.getLogger(__name__)

CXRReader = Literal["dicom", "pil", "nifti", "itk"]
#: Names accepted by the ``reader`` argument of :func:`read_cxr`.
READERS: tuple[str, ...] = ("dicom", "pil", "nifti", "itk")

#: Keywords returned by :func:`read_dicom_header`.
DICOM_HEADER_KEYWORDS = (
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsStored",
    "ViewPosition",
)

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_ITK_SUFFIXES = frozenset({".mha", ".mhd", ".nrrd", ".nhdr"})
_PIL_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".jp2", ".webp"})
# PNG, JPEG, BMP, little/big-endian TIFF, GIF
_PIL_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"GIF8")
_DICOM_MAGIC_OFFSET = 128  # 128-byte preamble, then b"DICM"

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# colour encodings that pydicom decodes to RGB; reduced to luminance (colour content: see read_cxr)
_RGB_LIKE = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")

# ITU-R 601-2 luma, the weights PIL uses for RGB -> "L"
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)
# colour content is "grey" when the channels agree within this fraction of the full range ...
_GREY_TOLERANCE = 0.02
# ... on all but this fraction of the pixels (lossy JPEG leaves small chroma errors at edges)
_GREY_OUTLIER_FRACTION = 0.01

_colour_warning_issued = False
#: what :func:`read_cxr` does with colour content (channels that clearly differ), the same for DICOM and PNG/JPEG
COLOUR_POLICIES = ("convert", "refuse")
#: files whose colour content was converted to luminance in this process (read by the caching dataset for its count)
colour_converted: list[str] = []
_colour_lock = threading.Lock()


def read_cxr(path: str | os.PathLike, *, apply_voi: bool = True, reader: CXRReader | None = None,
             colour: str = "convert") -> np.ndarray:
    """Read one chest radiograph as a ``float32`` ``(H, W)`` array in ``[0, 1]``, air dark, rows as rows.

    Args:
        path: a DICOM file (any name; files without the 128-byte preamble and file meta header are
            read too), a PNG/JPEG/BMP/TIFF image, a NIfTI file (``.nii``/``.nii.gz``) or a file ITK
            reads (``.mha``, ``.mhd``, ``.nrrd``, ``.nhdr``).
        apply_voi: for DICOM only: apply the VOI LUT or the first window (centre/width) stored in
            the file, as a viewer would. When ``False``, or when the file has none, values are
            scaled by the range ``BitsStored`` allows (see the module documentation).
        reader: force a reader, one of :data:`READERS` (``"dicom"``, ``"pil"``, ``"nifti"``,
            ``"itk"``). By default it is chosen from the file's content (DICOM ``DICM`` marker,
            PNG/JPEG/BMP/TIFF/GIF signatures) and name (NIfTI and ITK suffixes, image suffixes);
            anything else is tried as DICOM.

    Returns:
        ``numpy.ndarray`` of ``float32``, shape ``(rows, columns)``, values in ``[0, 1]``.

    Conventions by format:
        - DICOM: Modality LUT, then VOI (if ``apply_voi``), then scaling, then inversion of
          ``MONOCHROME1``. ``RGB``/``YBR_*`` files are reduced to luminance as PNG/JPEG are (below).
          Multi-frame files, ``PALETTE COLOR`` and other photometric interpretations are rejected.
          The Presentation LUT is not applied: ``PhotometricInterpretation`` alone decides the
          polarity.
        - PNG/JPEG/BMP/TIFF: grey (``1``, ``L``, ``LA``, ``I;16``, ``I``, ``F``) is read as is;
          colour images (``RGB``, ``RGBA``, palette ...) are reduced to luminance (alpha is
          dropped). Multi-frame images are rejected.
        - Colour *content* (channels that clearly differ, in DICOM and PNG/JPEG alike): with
          ``colour="convert"`` (default) converted to luminance, recorded and warned about (the caching
          dataset logs how many); with ``colour="refuse"`` a :class:`CXRReadError` (dropped and counted
          with ``skip_unreadable``). EXIF orientation
          is ignored, as by PIL.
        - NIfTI: the voxel array is read in storage order, ignoring the affine. NIfTI's first axis
          is ``x``, i.e. the column, so the 2D array is transposed (``data.T``) to get
          ``[row, column]``; an image written as ``nibabel.Nifti1Image(image.T, affine)`` reads
          back as ``image``. Singleton axes are dropped.
        - ITK formats: ``itk.array_from_image`` is already ``[row, column]``; singleton axes are
          dropped. Vector (multi-component) images are rejected.

    Raises:
        CXRReadError: the file is missing, truncated, corrupt, cannot be decoded, is not 2D,
            has colour DICOM content, several frames, an unsupported photometric
            interpretation, or non-finite values.
        ValueError: ``reader`` is not one of :data:`READERS`.
    """
    if reader is not None and reader not in READERS:
        raise ValueError(f"reader must be one of {READERS} or None, got {reader!r}.")
    if colour not in COLOUR_POLICIES:
        raise ValueError(f"colour must be one of {COLOUR_POLICIES}, got {colour!r}")
    path = _existing_file(path)
    try:
        reader = reader or _detect_reader(path)
        if reader == "dicom":
            values, (low, high), invert = _read_dicom_values(path, apply_voi, colour=colour)
        else:
            values, (low, high) = (_read_pil_values(path, colour=colour) if reader == "pil"
                                   else _read_volume_values(path, reader))
            invert = False
    except CXRReadError:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as err:  # noqa: B036 - decoders raise many types, native ones even BaseExceptions
        # (a Rust decoder's panic is pyo3's PanicException, a BaseException): every one is a read error of this
        # file, so that a caching thread never dies of it (its pool would wait forever for the result)
        how = f"with the {reader!r} reader " if reader else ""
        raise CXRReadError(path, f"corrupt or unsupported file, failed {how}({type(err).__name__}: {err})") from err
    image = _scale_to_unit(values, low, high)
    return 1.0 - image if invert else image


def read_dicom_header(path: str | os.PathLike) -> dict[str, Any]:
    """Read the identifiers and image description of a DICOM file without decoding its pixels.

    The file is parsed with ``force=True`` (files without preamble/file meta header work) and
    ``stop_before_pixels=True``.

    Args:
        path: a DICOM file.

    Returns:
        dict with the keys of :data:`DICOM_HEADER_KEYWORDS`: ``PatientID``, ``StudyInstanceUID``,
        ``SeriesInstanceUID``, ``SOPInstanceUID``, ``PhotometricInterpretation`` (``str``),
        ``Rows``, ``Columns``, ``BitsStored`` (``int``) and ``ViewPosition`` (``str``). An
        attribute that is absent or empty is ``None``.

    Raises:
        CXRReadError: the file is missing, cannot be parsed as DICOM, or has no ``Rows``/``Columns``
            (it is not a DICOM image).
    """
    path = _existing_file(path)
    ds = _read_dicom_dataset(path, stop_before_pixels=True)
    return {keyword: _plain_value(ds.get(keyword)) for keyword in DICOM_HEADER_KEYWORDS}


# ----------------------------------------------------------------------------------------------
# dispatch


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise CXRReadError(path, "file not found")
    if not path.is_file():
        raise CXRReadError(path, "not a regular file (expected an image file, got a directory or device)")
    return path


def _detect_reader(path: Path) -> CXRReader:
    name = path.name.lower()
    if name.endswith(_NIFTI_SUFFIXES):
        return "nifti"
    if path.suffix.lower() in _ITK_SUFFIXES:
        return "itk"
    with open(path, "rb") as stream:
        head = stream.read(_DICOM_MAGIC_OFFSET + 4)
    if head[_DICOM_MAGIC_OFFSET:] == b"DICM":
        return "dicom"
    if head.startswith(_PIL_MAGIC) or path.suffix.lower() in _PIL_SUFFIXES:
        return "pil"
    return "dicom"  # .dcm, no suffix, or unknown: DICOM without preamble has no signature


def _scale_to_unit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low -> 0`` and ``high -> 1`` linearly, clip to ``[0, 1]``; all zeros when ``low == high``."""
    if high == low:
        return np.zeros(values.shape, dtype=np.float32)
    scaled = (np.asarray(values, dtype=np.float64) - low) / (high - low)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def _min_max(values: np.ndarray) -> tuple[float, float]:
    return float(values.min()), float(values.max())


def _rgb_to_grey(rgb: np.ndarray, full_scale: float, path: Path, *, colour: str) -> np.ndarray:
    """Luminance of an ``(H, W, >=3)`` array (channels after the third, e.g. alpha, are ignored).

    Content is grey when the three channels agree within ``_GREY_TOLERANCE * full_scale`` on all
    but ``_GREY_OUTLIER_FRACTION`` of the pixels. Colour content raises with ``colour="refuse"``;
    with ``"convert"`` it is converted, recorded in :data:`colour_converted` and warned about (once
    per process; the caching dataset logs the count).
    """
    global _colour_warning_issued
    rgb = np.asarray(rgb[..., :3], dtype=np.float64)
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    if np.mean(spread > _GREY_TOLERANCE * full_scale) > _GREY_OUTLIER_FRACTION:
        if colour == "refuse":
            raise CXRReadError(path, "colour content (its colour channels differ); expected a grey radiograph "
                                     "(colour='convert' reduces it to luminance)")
        with _colour_lock:
            colour_converted.append(str(path))
        if not _colour_warning_issued:
            _colour_warning_issued = True
            logger.warning(
                "'%s' has colour content; converting it to luminance (a radiograph is expected to be grey). "
                "This warning is shown once.",
                path,
            )
    return rgb @ _LUMA_WEIGHTS


# ----------------------------------------------------------------------------------------------
# DICOM


def parse_dicom(path: str | os.PathLike, *, stop_before_pixels: bool = True) -> Dataset:
    """The one place a DICOM file is parsed (``pydicom.dcmread`` with ``force=True``: files without preamble or
    file meta header work); what :func:`read_cxr`, :func:`read_dicom_header` and the datalist builders read.

    Raises:
        CXRReadError: pydicom cannot parse the file (its error named).
    """
    try:
        return pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
    except Exception as err:  # pydicom raises many kinds of errors on garbage
        raise CXRReadError(path, f"not a readable DICOM file ({type(err).__name__}: {err})") from err


def _read_dicom_dataset(path: Path, stop_before_pixels: bool) -> Dataset:
    """Parse with ``force=True``, check it is an image, and give it a transfer syntax if it has none."""
    ds = parse_dicom(path, stop_before_pixels=stop_before_pixels)
    if len(ds) == 0:  # pydicom gives up on e.g. a truncated encapsulated Pixel Data with only a warning
        marker = "has the DICM marker but " if getattr(ds, "preamble", None) is not None else ""
        raise CXRReadError(path, f"file {marker}has no parsable DICOM data element: truncated, corrupt or not DICOM")
    if "Rows" not in ds or "Columns" not in ds:
        raise CXRReadError(path, "not a DICOM image: no Rows/Columns attributes (expected a DICOM radiograph)")
    if "TransferSyntaxUID" not in ds.file_meta:
        _set_transfer_syntax_from_encoding(ds)
    return ds


def _set_transfer_syntax_from_encoding(ds: Dataset) -> None:
    """Files without file meta header: record the encoding pydicom parsed them with (default implicit VR LE)."""
    if not isinstance(getattr(ds, "file_meta", None), FileMetaDataset):
        ds.file_meta = FileMetaDataset()
    implicit_vr, little_endian = ds.original_encoding
    if implicit_vr is False:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little_endian is not False else ExplicitVRBigEndian
    else:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian


def _read_dicom_values(path: Path, apply_voi: bool, colour: str = "convert") -> tuple[np.ndarray, tuple[float, float], bool]:
    """Pixel values after Modality LUT (and VOI), the range to scale them by, and whether to invert."""
    ds = _read_dicom_dataset(path, stop_before_pixels=False)
    photometric = _check_dicom_image(ds, path)
    try:
        pixels = ds.pixel_array
    except Exception as err:
        syntax = ds.file_meta.TransferSyntaxUID
        raise CXRReadError(
            path, f"cannot decode the pixel data ({syntax.name}; truncated or corrupt?): {type(err).__name__}: {err}"
        ) from err
    if pixels.shape[:2] != (ds.Rows, ds.Columns):
        raise CXRReadError(path, f"decoded pixels have shape {pixels.shape}, header says {ds.Rows} x {ds.Columns}")
    if photometric in _RGB_LIKE:
        stored_max = 2 ** int(ds.BitsStored) - 1
        return _rgb_to_grey(pixels, stored_max, path, colour=colour), (0.0, float(stored_max)), False

    values = apply_modality_lut(pixels, ds)
    voi = _apply_dicom_voi(values, ds) if apply_voi else None
    if voi is not None:
        values, value_range = voi
    elif _has_modality_transform(ds) or ds.get("PixelRepresentation", 0) != 0 or values.dtype.kind == "f":
        value_range = _min_max(values)
    else:
        value_range = (0.0, float(2 ** int(ds.BitsStored) - 1))
    return values, value_range, photometric == "MONOCHROME1"


def _check_dicom_image(ds: Dataset, path: Path) -> str:
    """Reject what :func:`read_cxr` does not support; return the photometric interpretation."""
    if not any(keyword in ds for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise CXRReadError(path, "DICOM file has no pixel data (expected a DICOM radiograph)")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise CXRReadError(path, f"multi-frame DICOM ({frames} frames); expected a single-frame radiograph")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    samples = int(ds.get("SamplesPerPixel") or 1)
    if photometric in _MONOCHROME and samples == 1:
        return photometric
    if photometric in _RGB_LIKE and samples == 3:
        return photometric
    raise CXRReadError(
        path,
        f"unsupported PhotometricInterpretation {photometric or 'missing'!r} with SamplesPerPixel {samples}; "
        "expected MONOCHROME1/MONOCHROME2 (1 sample) or RGB/YBR (3 samples)",
    )


def _has_modality_transform(ds: Dataset) -> bool:
    return bool(ds.get("ModalityLUTSequence")) or ("RescaleSlope" in ds and "RescaleIntercept" in ds)


def _has_voi_lut_sequence(ds: Dataset) -> bool:
    sequence = ds.get("VOILUTSequence")
    return bool(sequence) and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]


def _apply_dicom_voi(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, tuple[float, float]] | None:
    """Apply the first VOI LUT (preferred, as pydicom's ``apply_voi_lut`` does) or window.

    Returns the transformed values and the range the transform can output: black and white of
    the window (pydicom maps a window to the ``BitsStored`` range, or its rescaled version), or
    the smallest and largest entry of the LUT (LUT descriptors often overstate the bit depth).
    ``None`` when the file has neither.
    """
    if _has_voi_lut_sequence(ds):
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        first_mapped, entries = int(descriptor[1]), int(descriptor[0]) or 2**16
        if values.dtype.kind == "f":  # a LUT indexes integers; rescaled values are integral in practice
            values = np.rint(values).astype(np.int64)
        table = apply_voi(np.arange(first_mapped, first_mapped + entries), ds)
        return apply_voi(values, ds), _min_max(table)
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        # every window function (linear, linear exact, sigmoid) outputs its black at -inf, its white at +inf
        black, white = apply_windowing(np.array([-np.inf, np.inf]), ds)
        return apply_windowing(values, ds), (float(black), float(white))
    return None


def _plain_value(value: Any) -> Any:
    """pydicom value -> ``int``/``str``; ``None`` for absent or empty values."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return int(value)
    return str(value)


# ----------------------------------------------------------------------------------------------
# PIL (PNG, JPEG, BMP, TIFF, ...)

def _read_pil_values(path: Path, colour: str = "convert") -> tuple[np.ndarray, tuple[float, float]]:
    with Image.open(path) as image:
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            raise CXRReadError(path, f"multi-frame image ({frames} frames); expected a single radiograph")
        image.load()  # decode now: truncated data fails here
        if image.mode in ("1", "LA"):  # bilevel -> 0/255, grey + alpha -> grey
            image = image.convert("L")
        if image.mode not in ("L", "I", "F") and not image.mode.startswith("I;16"):  # colour or palette
            rgb = np.asarray(image.convert("RGB"))
            return _rgb_to_grey(rgb, 255.0, path, colour=colour), (0.0, 255.0)
        values = np.asarray(image)
    if values.dtype == np.uint8:
        return values, (0.0, 255.0)
    if values.dtype.kind in "ui" and values.min() >= 0 and values.max() <= 65535:  # I;16* and 16-bit data in "I"
        return values, (0.0, 65535.0)
    return values, _finite_min_max(values, path)


# ----------------------------------------------------------------------------------------------
# NIfTI (nibabel) and MetaImage/NRRD (ITK)


def _read_volume_values(path: Path, reader: str) -> tuple[np.ndarray, tuple[float, float]]:
    if reader == "nifti":
        import nibabel

        data = np.asanyarray(nibabel.load(path).dataobj)
        image = _squeeze_to_2d(data, path).T  # NIfTI axis 0 is x (columns), axis 1 is y (rows)
    else:
        import itk

        itk_image = itk.imread(str(path))
        if itk_image.GetNumberOfComponentsPerPixel() != 1:
            raise CXRReadError(
                path, f"{itk_image.GetNumberOfComponentsPerPixel()} components per pixel; expected a scalar image"
            )
        image = _squeeze_to_2d(itk.array_from_image(itk_image), path)  # [..., row, column]
    return image, _finite_min_max(image, path)


def _squeeze_to_2d(data: np.ndarray, path: Path) -> np.ndarray:
    image = np.squeeze(data)
    if image.ndim != 2 or data.dtype.fields is not None:
        expected = "expected a 2D scalar image (or 3D with one slice)"
        raise CXRReadError(path, f"array of shape {data.shape} and type {data.dtype}; {expected}")
    return image


def _finite_min_max(values: np.ndarray, path: Path) -> tuple[float, float]:
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise CXRReadError(path, "image contains NaN or infinite values; expected finite intensities")
    return _min_max(values)
