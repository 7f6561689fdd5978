"""MONAI transforms for chest radiographs: loading, aspect-preserving resizing, normalisation.

Each array transform has a dictionary counterpart (suffix ``d``) following MONAI conventions
(``keys``, ``allow_missing_keys``). Images are channel-first ``(C, H, W)`` with ``H`` the rows, as
produced by :class:`LoadCXR` (``C = 1``).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.utils import to_affine_nd
from monai.transforms import MapTransform, NormalizeIntensity, Transform
from monai.utils import ImageMetaKey, TransformBackends
from monai.utils.type_conversion import convert_to_dst_type, convert_to_tensor

from monai_cxrssl.data.io import CXRReader, read_cxr

__all__ = ["LoadCXR", "LoadCXRd", "ResizeCXR", "ResizeCXRd", "NormalizeCXR", "NormalizeCXRd"]


class LoadCXR(Transform):
    """Load a chest radiograph as a ``(1, H, W)`` ``float32`` :class:`~monai.data.MetaTensor` in ``[0, 1]``.

    Reading is done by :func:`monai_cxrssl.data.io.read_cxr` (DICOM, PNG/JPEG/BMP/TIFF, NIfTI,
    MetaImage/NRRD): air is dark, bone bright, rows are rows (unlike MONAI's ``LoadImage``, PNG and
    JPEG axes are not swapped), colour-encoded grey files become one channel.

    The metadata holds ``filename_or_obj`` (the path as given, as a string), ``original_shape`` and
    ``spatial_shape`` (both ``(H, W)`` as read, as MONAI readers store ``spatial_shape``) and
    ``original_channel_dim = nan`` (the file had no channel axis; MONAI's "no_channel"). The affine
    is MONAI's default identity: pixel spacing is not read.

    Args:
        apply_voi: for DICOM, apply the stored VOI LUT or window (see :func:`read_cxr`).
        image_only: if True return only the image; otherwise ``(image, image.meta)`` as MONAI's
            ``LoadImage`` does.
        reader: force a reader (``"dicom"``, ``"pil"``, ``"nifti"``, ``"itk"``); by default it is
            chosen from the file's content and name.
        colour: colour content (DICOM or PNG/JPEG alike): ``"convert"`` to luminance (counted and warned
            about) or ``"refuse"`` (a read error); see :func:`read_cxr`.

    Raises:
        CXRReadError: the file cannot be read (see :func:`read_cxr`).

    Example::

        image = LoadCXR()("/data/cxr/0001.dcm")  # MetaTensor, shape (1, H, W)
    """

    def __init__(self, apply_voi: bool = True, image_only: bool = True, reader: CXRReader | None = None,
                 colour: str = "convert") -> None:
        self.apply_voi = apply_voi
        self.image_only = image_only
        self.reader = reader
        self.colour = colour

    def __call__(self, filename: str | os.PathLike) -> MetaTensor | tuple[MetaTensor, dict]:
        """Read ``filename``; see the class documentation."""
        array = read_cxr(filename, apply_voi=self.apply_voi, reader=self.reader, colour=self.colour)
        shape = np.asarray(array.shape)
        meta = {
            ImageMetaKey.FILENAME_OR_OBJ: str(filename),
            "original_shape": shape,
            "spatial_shape": shape.copy(),
            "original_channel_dim": float("nan"),
        }
        image = MetaTensor(torch.from_numpy(array)[None], meta=meta)
        return image if self.image_only else (image, image.meta)


class LoadCXRd(MapTransform):
    """Dictionary-based :class:`LoadCXR`: replace each path under ``keys`` by its image MetaTensor.

    The metadata travels inside the MetaTensor (no separate ``*_meta_dict`` entry). A file that
    cannot be read raises :class:`~monai_cxrssl.exceptions.CXRReadError`; skipping unreadable
    items is the dataset's business, not this transform's.

    Args:
        keys: keys of the items holding file paths.
        apply_voi: for DICOM, apply the stored VOI LUT or window (see :func:`read_cxr`).
        reader: force a reader; by default it is chosen per file.
        colour: ``"convert"`` colour content to luminance or ``"refuse"`` it (see :class:`LoadCXR`).
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        apply_voi: bool = True,
        reader: CXRReader | None = None,
        allow_missing_keys: bool = False,
        colour: str = "convert",
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadCXR(apply_voi=apply_voi, image_only=True, reader=reader, colour=colour)

    def __call__(self, data: Mapping[Hashable, str | os.PathLike]) -> dict[Hashable, MetaTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


InterpolationMode = Literal["bilinear", "bicubic", "area", "nearest", "nearest-exact"]


class ResizeCXR(Transform):
    """Resize to ``size x size`` keeping the aspect ratio, by padding with air or centre cropping.

    - ``mode="pad"`` (letterbox): scale so that the **long** side equals ``size``, then pad the
      short side symmetrically with 0 (air, black). Nothing of the image is lost.
    - ``mode="crop"``: scale so that the **short** side equals ``size``, then crop the long side
      symmetrically. No padding appears.

    When the margin is odd the extra row/column of padding goes to the bottom/right, and a crop
    keeps the extra row/column at the bottom/right. Resampling uses
    :func:`torch.nn.functional.interpolate` (``align_corners=False``), with ``antialias=True``
    for bilinear/bicubic downsampling so that large DICOMs don't alias. Bicubic can overshoot
    the input range slightly; bilinear and area cannot.

    Input: a channel-first ``(C, H, W)`` array, tensor or MetaTensor. Output: the same kind, of
    shape ``(C, size, size)`` and type ``float32``. For a MetaTensor the metadata is kept and the
    affine is updated for the scaling and the pad/crop offset, so output pixels keep pointing at
    the right place (the operation is not recorded for inversion).

    Args:
        size: side of the square output, in pixels.
        mode: ``"pad"`` or ``"crop"`` (see above).
        interp: interpolation mode of ``F.interpolate``: ``"bilinear"`` (default), ``"bicubic"``,
            ``"area"``, ``"nearest"`` or ``"nearest-exact"``.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, size: int, mode: Literal["pad", "crop"] = "pad", interp: InterpolationMode = "bilinear") -> None:
        if int(size) != size or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}.")
        if mode not in ("pad", "crop"):
            raise ValueError(f"mode must be 'pad' or 'crop', got {mode!r}.")
        if interp not in InterpolationMode.__args__:
            raise ValueError(f"interp must be one of {InterpolationMode.__args__}, got {interp!r}.")
        self.size = int(size)
        self.mode = mode
        self.interp = interp

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Resize a ``(C, H, W)`` image to ``(C, size, size)``; see the class documentation."""
        if img.ndim != 3:
            raise ValueError(f"ResizeCXR expects a channel-first (C, H, W) image, got shape {tuple(img.shape)}.")
        x = convert_to_tensor(img, dtype=torch.float32, track_meta=False)
        height, width = x.shape[1:]
        scale = self.size / (max(height, width) if self.mode == "pad" else min(height, width))
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        if (new_h, new_w) != (height, width):
            smooth = self.interp in ("bilinear", "bicubic")
            x = F.interpolate(
                x[None],
                size=(new_h, new_w),
                mode=self.interp,
                align_corners=False if smooth else None,
                antialias=smooth and (new_h < height or new_w < width),
            )[0]
        if self.mode == "pad":
            top, left = (self.size - new_h) // 2, (self.size - new_w) // 2
            x = F.pad(x, (left, self.size - new_w - left, top, self.size - new_h - top), value=0.0)
        else:
            row, col = (new_h - self.size) // 2, (new_w - self.size) // 2
            x = x[:, row : row + self.size, col : col + self.size]
            top, left = -row, -col  # a crop is a negative pad
        out, *_ = convert_to_dst_type(x, img, dtype=torch.float32)
        if isinstance(out, MetaTensor):
            out.affine = _resized_affine(out.affine, (new_h / height, new_w / width), (top, left))
        return out


def _resized_affine(affine: torch.Tensor, scale: tuple[float, float], offset: tuple[int, int]) -> torch.Tensor:
    """Affine of an image scaled by ``scale`` (``align_corners=False``) then shifted by ``offset`` pixels.

    Output pixel ``i`` (per axis) sits at resized pixel ``i - offset``, i.e. at input pixel
    ``(i - offset + 0.5) / scale - 0.5``; the new affine is the old one composed with that map.
    """
    output_to_input = np.eye(3)
    for axis in range(2):
        output_to_input[axis, axis] = 1.0 / scale[axis]
        output_to_input[axis, 2] = (0.5 - offset[axis]) / scale[axis] - 0.5
    rank = affine.shape[-1] - 1
    spatial = to_affine_nd(2, affine.detach().cpu().numpy()) @ output_to_input
    return torch.as_tensor(to_affine_nd(rank, spatial), dtype=affine.dtype, device=affine.device)


class ResizeCXRd(MapTransform):
    """Dictionary-based :class:`ResizeCXR`.

    Args:
        keys: keys of the images to resize.
        size: side of the square output, in pixels.
        mode: ``"pad"`` (keep everything, pad with air) or ``"crop"`` (fill, crop the long side).
        interp: interpolation mode of ``F.interpolate`` (default ``"bilinear"``, antialiased when
            downsampling).
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = ResizeCXR.backend

    def __init__(
        self,
        keys: KeysCollection,
        size: int,
        mode: Literal["pad", "crop"] = "pad",
        interp: InterpolationMode = "bilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.resizer = ResizeCXR(size=size, mode=mode, interp=interp)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizer(d[key])
        return d


#: relative standard deviation below which an image counts as constant in :class:`NormalizeCXR`
_CONSTANT_STD = 1e-6


class NormalizeCXR(NormalizeIntensity):
    """Standardise intensities: ``(x - mean) / std`` with fixed statistics, or per image.

    - ``mean`` and ``std`` given: dataset statistics, e.g. MoCo-CXR's ``mean=0.502, std=0.0856``
      for ``[0, 1]`` radiographs.
    - both ``None`` (default): each image is brought to zero mean and unit standard deviation
      over all its pixels and channels (population std; a constant image is only centred).

    The output is a ``float32`` tensor (a MetaTensor, metadata kept, while MONAI's meta tracking is
    on, its default), whatever the input kind, as with MONAI's transform.
    This is MONAI's :class:`~monai.transforms.NormalizeIntensity` with ``nonzero=False`` and
    ``channel_wise=False`` (zeros are real pixels in a radiograph).

    Args:
        mean: value subtracted, or None for the image's own mean.
        std: positive value divided by, or None for the image's own standard deviation.
            ``mean`` and ``std`` are given together or not at all.
    """

    def __init__(self, mean: float | None = None, std: float | None = None) -> None:
        if (mean is None) != (std is None):
            raise ValueError(f"give both mean and std, or neither; got mean={mean!r}, std={std!r}.")
        if std is not None and not std > 0:
            raise ValueError(f"std must be positive, got {std!r}.")
        super().__init__(subtrahend=mean, divisor=std, nonzero=False, channel_wise=False, dtype=np.float32)
        self.mean = mean
        self.std = std

    @staticmethod
    def _std(x: NdarrayOrTensor) -> float:
        """Population std of the image; 0 (so the image is only centred) when it is constant up to rounding.

        A constant float32 image has a std of ~1e-8 rather than 0 (the mean is rounded), which
        would blow the rounding errors up to +-1.
        """
        std = NormalizeIntensity._std(x)
        return 0.0 if std <= _CONSTANT_STD * max(1.0, abs(NormalizeIntensity._mean(x))) else std


class NormalizeCXRd(MapTransform):
    """Dictionary-based :class:`NormalizeCXR`.

    Args:
        keys: keys of the images to normalise.
        mean: value subtracted, or None (with ``std=None``) for per-image standardisation.
        std: positive value divided by, or None.
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = NormalizeCXR.backend

    def __init__(
        self,
        keys: KeysCollection,
        mean: float | None = None,
        std: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = NormalizeCXR(mean=mean, std=std)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d
