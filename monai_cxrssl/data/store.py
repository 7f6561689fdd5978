"""A persistent, compact store of preprocessed radiographs, read by every process without a private copy.

:class:`CXRCacheDataset` keeps every decoded image in memory as float32, in every process: about 200 KB per image
at 224 px, so hundreds of thousands of radiographs do not fit. The store keeps them on disk instead, once:

- **built once** from a datalist and the deterministic preprocessing (:func:`build_store`): in parallel threads
  (as MONAI's ``CacheDataset`` decodes; worker processes forked from a process whose PyTorch thread pool has
  started can deadlock), with a progress bar; an unreadable file fails naming it, or with ``skip_unreadable`` is
  counted and left out; **resumable**: a build that was killed continues with the images it had not written yet;
- **compact**: each image quantised to 8 bits (or 16 with ``dtype="uint16"``) at the training resolution, one
  fixed-size record per image in one file (``images.bin``), so a record's place is its index times its size;
- **checked**: the store records the preprocessing's settings and each source file's size and modification time;
  other settings rebuild it, a changed file is decoded again;
- **shared, not copied**: :class:`CXRStoreDataset` reads a record with ``os.pread`` when it is asked for it. The
  operating system's page cache holds the file once for every process of the node; a process's own memory holds
  the index (paths and the kept keys), not the images. It is not memory-mapped: mapped pages a process has read
  count in its resident memory.

Files: ``store.json`` (format, dtype, shape, the preprocessing's fingerprint, the number of images), ``items.json``
(per image: the kept datalist values, the source path and its size and modification time), ``images.bin`` (the
records), ``status.bin`` (one byte per image: 0 not written yet, 1 written, 2 unreadable). A record is marked
written only after it is on disk (``fsync``), so a kill at any moment leaves a store that resumes.

The quantisation error of a pixel in [0, 1] is at most 0.5 / 255 (8 bits) or 0.5 / 65535 (16 bits).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from monai_cxrssl.data.cache import _find_cause, _transform_fingerprint
from monai_cxrssl.exceptions import CXRReadError, DatalistError
from monai_cxrssl.utils import as_bool, atomic_write, map_in_threads

__all__ = ["build_store", "CXRImageStore", "CXRStoreDataset", "STORE_DTYPES", "STORE_FORMAT"]

logger = logging.getLogger(__name__)

#: version of the store's layout; a store of another format is rebuilt
STORE_FORMAT = 1
STORE_DTYPES = {"uint8": (np.uint8, 255.0), "uint16": (np.uint16, 65535.0)}
_PENDING, _WRITTEN, _UNREADABLE = 0, 1, 2
_CHUNK = 64  # images per task of a worker thread (one fsync each)


def _source_stat(path) -> list[int] | None:
    try:
        st = os.stat(path)
    except (OSError, TypeError):
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def _quantise(image, dtype: str) -> np.ndarray:
    kind, scale = STORE_DTYPES[dtype]
    x = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    return np.rint(np.clip(x, 0.0, 1.0) * scale).astype(kind)


def _decode(transform, entry: Mapping, image_key: str):
    """The preprocessed image of ``entry`` (a float array in [0, 1]) and ``None``, or ``None`` and the read error's
    ``(path, reason)``."""
    try:
        item = transform(dict(entry)) if transform is not None else dict(entry)
    except Exception as e:  # MONAI's Compose wraps transform errors in RuntimeError
        read_error = _find_cause(e, CXRReadError)
        if read_error is None:
            raise
        return None, (read_error.path, read_error.reason)
    return item[image_key], None


def _write_chunk(store_dir: str, transform, entries: Sequence[tuple[int, dict]], image_key: str, dtype: str,
                 shape: Sequence[int]) -> list[tuple[int, int, tuple | None]]:
    """Decode, quantise and write ``entries`` (index, entry) into ``images.bin``; fsync; return each one's status."""
    record = int(np.prod(shape)) * np.dtype(STORE_DTYPES[dtype][0]).itemsize
    out = []
    fd = os.open(os.path.join(store_dir, "images.bin"), os.O_WRONLY)
    try:
        for index, entry in entries:
            image, error = _decode(transform, entry, image_key)
            if error is not None:
                out.append((index, _UNREADABLE, error))
                continue
            q = _quantise(image, dtype)
            if tuple(q.shape) != tuple(shape):
                raise DatalistError(f"'{entry.get(image_key)}' preprocesses to shape {tuple(q.shape)}, the store's "
                                    f"images are {tuple(shape)}: the preprocessing must give one size (ResizeCXRd)")
            os.pwrite(fd, np.ascontiguousarray(q).tobytes(), index * record)
            out.append((index, _WRITTEN, None))
        os.fsync(fd)
    finally:
        os.close(fd)
    return out


def build_store(data: Sequence[Mapping], transform, store_dir: str | os.PathLike, dtype: str = "uint8",
                keep_keys: Sequence[str] = ("patient_id",), skip_unreadable: bool = False, num_workers: int = 2,
                image_key: str = "image", progress: bool = True) -> Path:
    """Build the store of ``data`` in ``store_dir``, or bring an existing one up to date (see the module docstring).

    Args:
        data: datalist entries (each with ``image_key``).
        transform: the deterministic preprocessing (load, resize) giving one ``(C, H, W)`` image in [0, 1] per entry.
        store_dir: the store's folder (created).
        dtype: ``"uint8"`` or ``"uint16"``.
        keep_keys: datalist keys kept with each image and returned with it (e.g. ``patient_id``, MICLe's groups).
        skip_unreadable: leave unreadable images out (counted and logged) instead of failing on the first.
        num_workers: decoding threads (0 or 1: in the calling thread).
        image_key: the entries' image key.
        progress: show a progress bar (tqdm).

    Returns:
        the store's folder.

    Raises:
        DatalistError: empty ``data``, an unknown ``dtype``, images of different sizes, or none readable.
        CXRReadError: an unreadable image (without ``skip_unreadable``), naming the file.
    """
    if dtype not in STORE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(STORE_DTYPES)}, got {dtype!r}")
    entries = [dict(e) for e in data]
    if not entries:
        raise DatalistError("the datalist to store is empty")
    skip_unreadable = as_bool(skip_unreadable, "skip_unreadable")
    root = Path(store_dir)
    root.mkdir(parents=True, exist_ok=True)
    settings = {"format": STORE_FORMAT, "dtype": dtype, "transform": _transform_fingerprint(transform),
                "image_key": image_key, "keep_keys": list(keep_keys), "n": len(entries)}
    items = [{"source": str(e.get(image_key)), "stat": _source_stat(e.get(image_key)),
              **{k: e[k] for k in keep_keys if k in e}} for e in entries]
    status, shape = _open_status(root, settings, items)
    if status is not None and shape is not None and bool(np.isin(status, (_WRITTEN, _UNREADABLE)).all()) and (
            skip_unreadable or not (status == _UNREADABLE).any()):
        logger.info("image store %s is up to date (%d images)", root, int((status == _WRITTEN).sum()))
        if (status == _UNREADABLE).any():
            logger.warning("skipped %d unreadable image(s) of %d (found by an earlier build); first: %s",
                           int((status == _UNREADABLE).sum()), len(entries),
                           entries[int(np.flatnonzero(status == _UNREADABLE)[0])].get(image_key))
        return root  # nothing to decode: written by nobody, so every node may check a store on shared storage
    if status is None:  # a new store (or one of other settings or data): start afresh
        status = np.zeros(len(entries), dtype=np.uint8)
        for name in ("images.bin", "status.bin", "store.json", "items.json"):
            (root / name).unlink(missing_ok=True)
        shape = None
    pending = [int(i) for i in np.flatnonzero(status != _WRITTEN) if status[i] != _UNREADABLE or not skip_unreadable]
    if shape is None:  # the first readable image gives the records' shape
        for i in list(pending):
            image, error = _decode(transform, entries[i], image_key)
            if error is None:
                shape = [int(s) for s in _quantise(image, dtype).shape]
                break
            if not skip_unreadable:
                raise CXRReadError(*error)
            status[i] = _UNREADABLE
            pending.remove(i)
        if shape is None:
            raise DatalistError(f"none of the {len(entries)} images could be read")
    record = int(np.prod(shape)) * np.dtype(STORE_DTYPES[dtype][0]).itemsize
    with open(root / "images.bin", "ab") as f:  # (sparse) room for every record
        if f.tell() < record * len(entries):
            f.truncate(record * len(entries))
    with atomic_write(root / "items.json", "w", encoding="utf-8") as f:
        json.dump(items, f)
    _write_status(root, status)
    with atomic_write(root / "store.json", "w", encoding="utf-8") as f:
        json.dump({**settings, "shape": shape}, f, indent=1)

    reused = len(entries) - len(pending)
    logger.info("image store %s: %d of %d image(s) already there, %d to decode (%s, %s)", root, reused, len(entries),
                len(pending), dtype, "x".join(map(str, shape)))
    to_do = set(pending)
    unreadable = [f"{entries[i].get(image_key)}: unreadable (found by an earlier build)"
                  for i in np.flatnonzero(status == _UNREADABLE) if int(i) not in to_do]
    if pending:
        unreadable += _run_chunks(root, transform, entries, pending, status, image_key, dtype, shape, skip_unreadable,
                                  num_workers, progress)
    n_ok = int((status == _WRITTEN).sum())
    if n_ok == 0:
        raise DatalistError(f"none of the {len(entries)} images could be read; first: {unreadable[:3]}")
    if unreadable:
        logger.warning("skipped %d unreadable image(s) of %d; first: %s", len(unreadable), len(entries),
                       "; ".join(unreadable[:3]))
    return root


def _run_chunks(root, transform, entries, pending, status, image_key, dtype, shape, skip_unreadable, num_workers,
                progress) -> list[str]:
    chunks = [[(i, entries[i]) for i in pending[k:k + _CHUNK]] for k in range(0, len(pending), _CHUNK)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pending), desc=f"image store {root.name}", unit="img")
    unreadable: list[str] = []

    def done(results):
        for index, state, error in results:
            if state == _UNREADABLE:
                if not skip_unreadable:
                    raise CXRReadError(*error)
                unreadable.append(f"{error[0]}: {error[1]}")
            status[index] = state
        _write_status(root, status, [r[0] for r in results])
        if bar is not None:
            bar.update(len(results))

    try:
        map_in_threads(lambda chunk: _write_chunk(str(root), transform, chunk, image_key, dtype, shape), chunks,
                       num_workers, done, name="image-store")
    finally:
        if bar is not None:
            bar.close()
    return unreadable


def _read_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _open_status(root: Path, settings: dict, items: list[dict]) -> tuple[np.ndarray | None, list[int] | None]:
    """The status and record shape of an existing store of these settings and sources (changed files set back to
    pending), or ``(None, None)`` when there is none to continue (then it is rebuilt, and the reason logged)."""
    meta_path = root / "store.json"
    if not meta_path.is_file():
        return None, None
    try:
        meta = _read_json(meta_path)
        old_items = _read_json(root / "items.json")
        status = np.fromfile(root / "status.bin", dtype=np.uint8)
    except (OSError, ValueError) as e:
        logger.warning("image store %s is unreadable (%s): rebuilding it", root, e)
        return None, None
    changed = [k for k in settings if meta.get(k) != settings[k]]
    if changed or len(status) != len(items) or [i["source"] for i in old_items] != [i["source"] for i in items]:
        logger.warning("image store %s was built with other %s: rebuilding it", root,
                       ", ".join(changed) if changed else "images")
        return None, None
    stale = [i for i, (old, new) in enumerate(zip(old_items, items)) if old.get("stat") != new["stat"]]
    if stale:
        logger.info("image store %s: %d source file(s) changed since they were stored; decoding them again", root,
                    len(stale))
        status[stale] = _PENDING
    return status, meta.get("shape")


def _write_status(root: Path, status: np.ndarray, indices: Sequence[int] | None = None) -> None:
    path = root / "status.bin"
    if indices is None or not path.is_file():
        with atomic_write(path) as f:
            f.write(status.tobytes())
        return
    fd = os.open(path, os.O_WRONLY)
    try:
        for i in indices:
            os.pwrite(fd, bytes([int(status[i])]), int(i))
    finally:
        os.close(fd)


class CXRImageStore:
    """A built store, opened for reading (see the module docstring).

    Args:
        store_dir: the folder :func:`build_store` wrote.
    """

    def __init__(self, store_dir: str | os.PathLike):
        self.root = Path(store_dir)
        if not (self.root / "store.json").is_file():
            raise DatalistError(f"'{self.root}' is not an image store (no store.json): build it with build_store")
        self.meta = _read_json(self.root / "store.json")
        if self.meta.get("format") != STORE_FORMAT:
            raise DatalistError(f"image store '{self.root}' has format {self.meta.get('format')}, this version reads "
                                f"{STORE_FORMAT}: build it again")
        self.dtype = self.meta["dtype"]
        self.shape = tuple(self.meta["shape"])
        kind, self.scale = STORE_DTYPES[self.dtype]
        self.kind = np.dtype(kind)
        self.record = int(np.prod(self.shape)) * self.kind.itemsize
        status = np.fromfile(self.root / "status.bin", dtype=np.uint8)
        if (status == _PENDING).any():
            raise DatalistError(f"image store '{self.root}' is incomplete ({int((status == _PENDING).sum())} image(s) "
                                f"not written): run the build again, it resumes")
        #: store positions of the readable images, in datalist order
        self.positions = np.flatnonzero(status == _WRITTEN)
        items = _read_json(self.root / "items.json")
        self.items = [items[i] for i in self.positions]
        self._fd: int | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.positions)

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # one descriptor per process (DataLoader workers fork)
            self._fd, self._pid = os.open(self.root / "images.bin", os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, index: int) -> np.ndarray:
        """The stored (quantised) image ``index`` of the readable images, shaped ``(C, H, W)``."""
        position = int(self.positions[index])
        raw = os.pread(self._file(), self.record, position * self.record)
        if len(raw) != self.record:
            raise DatalistError(f"image store '{self.root}' is truncated at image {position}")
        return np.frombuffer(raw, dtype=self.kind).reshape(self.shape)

    def image(self, index: int) -> torch.Tensor:
        """Image ``index`` as float32 in [0, 1]."""
        return torch.from_numpy(self.read(index).astype(np.float32)).div_(self.scale)

    def __getstate__(self):  # a DataLoader worker opens its own descriptor
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __del__(self):
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass


class CXRStoreDataset(Dataset):
    """The training dataset of a large datalist: images from an image store, built (or brought up to date) first.

    It takes the arguments of :class:`~monai_cxrssl.data.CXRCacheDataset` that the pretraining bundles give it, so
    that one overlay swaps it in (each pretraining bundle's ``configs/image_store.json``); items are ``{"image": (C, H, W) float32 in
    [0, 1], <kept keys>}``.

    Args:
        data: datalist entries.
        transform: the deterministic preprocessing; its last ``SelectItemsd`` names the keys kept beside the image
            (``keep_keys`` of the bundles); without one, every key of the entries is kept.
        store_dir: the store's folder.
        dtype: ``"uint8"`` or ``"uint16"``.
        skip_unreadable: leave unreadable images out, counted (else the first fails, naming it).
        num_workers: decoding threads of the build.
        progress: progress bar of the build.

    Under torchrun, rank 0 builds the store (or checks it) while the other processes wait; then the first process
    of every other node does the same with the folder its node sees: on shared storage it finds the store up to
    date and writes nothing, on a node-local disk it builds that node's copy.
    """

    def __init__(self, data: Sequence[Mapping], transform, store_dir: str | os.PathLike, dtype: str = "uint8",
                 skip_unreadable: bool = False, num_workers: int = 2, progress: bool = True,
                 image_key: str = "image", **kwargs):
        if not store_dir:
            raise DatalistError("CXRStoreDataset needs a store_dir (the folder of the image store)")
        if kwargs:
            logger.info("CXRStoreDataset ignores %s", sorted(kwargs))
        selected = _selected_keys(transform)
        if selected is None:  # no selection: every key of the entries, as the in-memory cache keeps them
            selected = list(dict.fromkeys(k for e in data for k in e))
        keep = [k for k in selected if k != image_key]
        from monai_cxrssl.distributed import get_rank, get_world_size

        def build():
            build_store(data, _without_selection(transform), store_dir, dtype=dtype, keep_keys=keep,
                        skip_unreadable=skip_unreadable, num_workers=num_workers, image_key=image_key,
                        progress=progress)

        if get_rank() == 0:
            build()
        if get_world_size() > 1:  # the other processes open it once rank 0 has built it
            torch.distributed.barrier()
            # several nodes: each node's first process checks the store its node sees, which on shared storage is
            # rank 0's (up to date: nothing is written) and on a node-local disk is built there
            if get_rank() != 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0:
                build()
            torch.distributed.barrier()
        self.store = CXRImageStore(store_dir)
        self.image_key = image_key
        self.keep_keys = keep
        #: the datalist entries of the stored images (unreadable ones left out)
        self.data = [dict(data[int(i)]) for i in self.store.positions]

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> dict:
        item = self.store.items[index]
        return {self.image_key: self.store.image(index), **{k: item[k] for k in self.keep_keys if k in item}}

    def item_values(self, key: str) -> list:
        """``key``'s value of each image (``None`` where it has none), from the index: no image is read."""
        return [item.get(key) for item in self.store.items]


def _selected_keys(transform) -> list[str] | None:
    """The keys the preprocessing's last ``SelectItemsd`` keeps, or ``None`` when it selects none."""
    from monai.transforms import Compose, SelectItemsd

    chain = transform.flatten().transforms if isinstance(transform, Compose) else [transform]
    for t in reversed(chain):
        if isinstance(t, SelectItemsd):
            return [str(k) for k in t.keys]
    return None


def _without_selection(transform):
    """The preprocessing without its ``SelectItemsd`` (the store keeps the selected keys in its index)."""
    from monai.transforms import Compose, SelectItemsd

    if not isinstance(transform, Compose):
        return transform
    return Compose([t for t in transform.flatten().transforms if not isinstance(t, SelectItemsd)])
