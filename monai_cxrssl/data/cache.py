"""Decoded and preprocessed radiographs, kept once: in memory, and optionally on disk.

:class:`CXRCacheDataset` decodes and preprocesses every image once, when it is built (before
training starts): a corrupt file fails there, naming the file, or, with
``skip_unreadable=True``, is dropped with a logged count. Epochs then read tensors from memory.
With a ``cache_dir`` the preprocessed tensors are also kept on disk (MONAI ``PersistentDataset``
style), so the next run at the same settings skips decoding too. The files hold tensors and plain
Python values only (a ``MetaTensor`` is stored as its array and its metadata) and are read with
``torch.load(weights_only=True)``: a file planted in the cache folder cannot run code.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from monai.data import CacheDataset, MetaTensor
from monai.transforms import Compose, RandomizableTrait, Transform

from monai_cxrssl.checkpoints import atomic_save
from monai_cxrssl.exceptions import CXRReadError, DatalistError
from monai_cxrssl.utils import as_bool

__all__ = ["CXRCacheDataset", "to_cache_record", "from_cache_record"]

logger = logging.getLogger(__name__)

#: version of the disk cache's file format; part of every file's name, so that files of another format are not read
CACHE_FORMAT = 2
_META = "__cxrssl_metatensor__"
_NDARRAY = "__cxrssl_ndarray__"


class CXRCacheDataset(CacheDataset):
    """MONAI ``CacheDataset`` that can drop unreadable radiographs, with an optional disk cache.

    Args:
        data: datalist entries.
        transform: the deterministic preprocessing is cached; random transforms run per epoch.
        skip_unreadable: drop entries whose image raises :class:`CXRReadError` while caching
            (logged with their count and first paths); otherwise the first such error is raised.
        cache_dir: also keep each preprocessed item in this folder (written atomically), and read
            it from there on later runs instead of decoding. An item's file name hashes the entry,
            the image file's size and modification time, and the settings of the deterministic
            transforms, so a changed image or image size is decoded afresh. ``None`` or ``""``:
            memory only.
        kwargs: passed to ``CacheDataset`` (``cache_rate``, ``num_workers``, ``progress``...).
    """

    def __init__(self, data: Sequence[dict], transform=None, skip_unreadable: bool = False,
                 cache_dir: str | os.PathLike | None = None, image_key: str = "image", **kwargs):
        self.skip_unreadable = as_bool(skip_unreadable, "skip_unreadable")
        self.unreadable: list[str] = []
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.image_key = image_key
        self.disk_hits = 0
        self._transform_key = _transform_fingerprint(transform) if self.cache_dir else ""
        kwargs.setdefault("progress", False)
        from monai_cxrssl.data import io as cxr_io

        n_converted = len(cxr_io.colour_converted)
        super().__init__(data=data, transform=transform, **kwargs)
        converted = cxr_io.colour_converted[n_converted:]
        if converted:  # the same policy for DICOM and PNG/JPEG: counted here (colour='refuse' makes them errors)
            logger.warning("%d of %d image(s) had colour content and were converted to luminance, e.g. %s "
                           "(LoadCXRd colour='refuse' refuses them)", len(converted), len(self._cache),
                           "; ".join(converted[:3]))
        if self.cache_dir is not None:
            logger.info("disk cache %s: %d of %d item(s) read from it, the rest decoded and written",
                        self.cache_dir, self.disk_hits, len(self._cache))

    def item_values(self, key: str) -> list:
        """``key``'s value in each cached item (``None`` where an item has none), without copying the items: e.g.
        MICLe's patient ids, aligned with the images whatever was skipped as unreadable."""
        cached = [item.get(key) if isinstance(item, dict) else None for item in self._cache]
        return cached + [self[i].get(key) for i in range(len(cached), len(self))]  # (a cache_rate below 1)

    def _disk_path(self, item: dict) -> Path:
        stat = ()
        image = item.get(self.image_key) if isinstance(item, dict) else None
        if isinstance(image, (str, os.PathLike)) and os.path.exists(image):
            st = os.stat(image)
            stat = (st.st_size, st.st_mtime_ns)
        blob = json.dumps([item, stat, self._transform_key, CACHE_FORMAT], sort_keys=True, default=str).encode()
        return self.cache_dir / f"{hashlib.sha256(blob).hexdigest()}.pt"

    def _load_cache_item(self, idx: int):
        if self.cache_dir is None:
            return self._decode_item(idx)
        path = self._disk_path(self.data[idx])
        if path.is_file():
            try:
                # tensors and plain values only: a file planted in the cache cannot run code when read
                item = from_cache_record(torch.load(path, map_location="cpu", weights_only=True))
                self.disk_hits += 1
                return item
            except Exception as e:  # truncated, foreign or unsafe file: decode again and overwrite it
                logger.warning("disk cache file %s is unreadable (%s); decoding the image again", path, e)
        item = self._decode_item(idx)
        if item is not None:
            try:
                record = to_cache_record(item)
            except TypeError as e:  # something the safe format cannot hold: keep the item in memory only
                logger.warning("item %d is kept in memory only, not in the disk cache: %s", idx, e)
            else:
                atomic_save(record, path)
        return item

    def _decode_item(self, idx: int):
        try:
            return super()._load_cache_item(idx)
        except Exception as e:  # MONAI's Compose wraps transform errors in RuntimeError
            read_error = _find_cause(e, CXRReadError)
            if read_error is None:
                raise
            if not self.skip_unreadable:
                raise read_error from None
            self.unreadable.append(f"{read_error.path}: {read_error.reason}")
            return None

    def set_data(self, data: Sequence) -> None:
        self.unreadable = []
        super().set_data(data)
        if not self.unreadable:
            return
        keep = [i for i, item in enumerate(self._cache) if item is not None]
        n_bad = len(self._cache) - len(keep)
        if not keep:
            raise DatalistError(f"none of the {len(self._cache)} images could be read; first: {self.unreadable[:3]}")
        self.data = [self.data[i] for i in keep] + list(self.data[len(self._cache):])
        self._cache = [self._cache[i] for i in keep]
        self.cache_num = len(self._cache)
        logger.warning("skipped %d unreadable image(s) of %d; first: %s", n_bad, n_bad + len(keep),
                       "; ".join(self.unreadable[:3]))


def to_cache_record(x, where: str = "item"):
    """``x`` as tensors and plain Python values that ``torch.load(weights_only=True)`` reads back.

    A ``MetaTensor`` becomes its array, metadata and applied operations; a NumPy array a tensor; NumPy
    scalars, enums and paths plain values. Anything else raises ``TypeError`` naming where it is.
    """
    if isinstance(x, MetaTensor):
        return {_META: True, "array": x.as_tensor(), "meta": to_cache_record(dict(x.meta), f"{where}.meta"),
                "applied_operations": to_cache_record(list(x.applied_operations), f"{where}.applied_operations")}
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise TypeError(f"{where} is a NumPy array of Python objects")
        return {_NDARRAY: True, "array": torch.from_numpy(np.ascontiguousarray(x))}
    if isinstance(x, enum.Enum):
        return to_cache_record(x.value, where)
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (str, int, float, bool, type(None))):
        return x
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if isinstance(x, dict):
        if not all(isinstance(k, (str, int)) for k in x):
            raise TypeError(f"{where} has keys that are not strings or integers")
        return {k: to_cache_record(v, f"{where}.{k}") for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_cache_record(v, f"{where}[{i}]") for i, v in enumerate(x))
    raise TypeError(f"{where} is a {type(x).__qualname__}, which the disk cache does not store")


def from_cache_record(x):
    """The item :func:`to_cache_record` stored (MetaTensors and NumPy arrays rebuilt)."""
    if isinstance(x, dict):
        if x.get(_META) is True:
            return MetaTensor(x["array"], meta=from_cache_record(x["meta"]),
                              applied_operations=from_cache_record(x["applied_operations"]))
        if x.get(_NDARRAY) is True:
            return x["array"].numpy()
        return {k: from_cache_record(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(from_cache_record(v) for v in x)
    return x


def _transform_fingerprint(transform) -> str:
    """A stable description of the deterministic (cached) part of a transform chain: class names and settings."""
    if transform is None:
        return ""
    chain = transform.flatten().transforms if isinstance(transform, Compose) else [transform]
    parts = []
    for t in chain:
        if isinstance(t, RandomizableTrait) or not isinstance(t, Transform):
            break
        parts.append([type(t).__qualname__, _settings(t)])
    return json.dumps(parts, sort_keys=True, default=str)


def _settings(obj, depth: int = 0):
    """Plain settings of a transform (numbers, strings, sequences, nested transforms), for fingerprinting."""
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, (list, tuple)):
        return [_settings(v, depth + 1) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _settings(v, depth + 1) for k, v in obj.items()}
    if depth < 3 and hasattr(obj, "__dict__"):
        return {"_type": type(obj).__qualname__,
                **{k: _settings(v, depth + 1) for k, v in sorted(vars(obj).items())
                   if not k.startswith("_") and k not in ("R",)}}
    return type(obj).__qualname__


def _find_cause(err: BaseException, kind: type) -> BaseException | None:
    """The first exception of type ``kind`` in ``err``'s chain of causes, if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kind):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
