"""Small shared helpers: atomic file writes and tolerant parsing of command-line values."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "as_bool", "check_free_space", "remove_stale_temporaries", "format_bytes"]

logger = logging.getLogger(__name__)

#: the temporary files of :func:`atomic_write` (``mkstemp(prefix=".NAME.", suffix=".tmp")``)
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KB'`` (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def check_free_space(folder: str | os.PathLike, needed: int, what: str) -> None:
    """Raise ``OSError(ENOSPC)`` naming ``what``, the folder, the space needed and the space free, if it lacks room.

    ``folder`` (or its nearest existing parent) is where the file will be written.
    """
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"not enough disk space for {what} in '{folder}': it needs about "
                                    f"{format_bytes(needed)}, and the disk holding it has {format_bytes(free)} free; "
                                    f"free some space or write elsewhere")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` leaves when its process is killed mid-write.

    Call it when a run starts, before anything writes in ``folder``; returns the files removed (logged).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and _TEMPORARY.match(p.name):
            try:
                p.unlink()
                removed.append(p)
            except OSError as e:
                logger.warning("could not remove the leftover temporary file %s: %s", p, e)
    if removed:
        logger.warning("removed %d temporary file(s) left by an interrupted write in %s: %s", len(removed), folder,
                       ", ".join(p.name for p in removed[:5]))
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None,
                 permissions: int = 0o644) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success flush it to disk and rename it over ``path`` (with
    ``permissions``; the temporary file is its owner's alone).

    A crash or an exception at any moment leaves either the old file or the new one, never a
    truncated one; the temporary file is removed on failure. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, permissions)  # mkstemp creates 0o600
        os.replace(tmp, path)
    except BaseException as e:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            free = shutil.disk_usage(path.parent).free
            raise OSError(errno.ENOSPC, f"could not write '{path}': no space left on the disk holding it "
                                        f"({format_bytes(written)} written before the failure, "
                                        f"{format_bytes(free)} free now); the previous file, if any, is intact"
                          ) from e
        raise


_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


def as_bool(value: Any, name: str = "value") -> bool:
    """A boolean from a config or command-line value (``--progress false`` arrives as the string ``'false'``).

    Raises:
        ValueError: naming ``name`` when the value is not recognisably true or false.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{name} must be true or false, got {value!r}")


def map_in_threads(fn: Callable, items: Iterable, num_workers: int, on_result: Callable | None = None,
                   name: str = "cxrssl") -> None:
    """``fn(item)`` for every item in ``num_workers`` threads (in this thread for 0 or 1), handing each result to
    ``on_result`` in the items' order; the first exception cancels what has not started yet and is raised.

    Threads, not processes: the work is file and network I/O or decoding that releases the GIL, and worker
    processes forked from a process whose PyTorch thread pool has started can deadlock."""
    if int(num_workers) <= 1:
        for item in items:
            result = fn(item)
            if on_result is not None:
                on_result(result)
        return
    with ThreadPoolExecutor(int(num_workers), thread_name_prefix=name) as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            for future in futures:
                result = future.result()
                if on_result is not None:
                    on_result(result)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
