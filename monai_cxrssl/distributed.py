"""Helpers over ``torch.distributed``: process group set-up, rank/world queries, gathering.

Everything except :func:`init_process_group` is a no-op in a single process, so methods and
losses call it unconditionally. Multi-process runs use PyTorch's own stack: ``torchrun`` sets
the environment, :func:`init_process_group` reads it (NCCL on CUDA, Gloo on CPU), the trainer
wraps the method in ``DistributedDataParallel``, the sampler shards the data.

A process that stops responding (stopped, hung, swapped out) would make the others wait in their next
collective for the group's timeout: :func:`init_process_group` sets it (``dist_timeout_s`` in the
bundles, 10 minutes by default rather than Gloo's 30), and every process beats a :class:`Heartbeat`
into the group's store, so that the trainer ends a timed-out step with an error naming the silent
ranks (:func:`describe_silent_ranks`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = ["is_distributed", "get_rank", "get_world_size", "is_main_process", "init_process_group",
           "destroy_process_group", "gather_with_grad", "gather_no_grad", "local_device", "Heartbeat",
           "describe_silent_ranks", "DEFAULT_TIMEOUT_S"]

#: seconds a collective waits for every process (PyTorch's NCCL default; Gloo's is 30 minutes)
DEFAULT_TIMEOUT_S = 600.0
_timeout_s: float | None = None


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0, or a single process: the one that logs and writes files."""
    return get_rank() == 0


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available (and made current), else the CPU."""
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def init_process_group(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Join the process group described by ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``...).

    Args:
        backend: ``nccl`` or ``gloo``; default NCCL when CUDA is available, else Gloo.
        timeout_s: how long a collective (a step's gradient reduction, a gather) waits for every
            process before the run ends naming the silent ones. Every process must also reach the
            first step within it, after building its data cache.

    Returns:
        ``True`` when a group was initialised; ``False`` when the environment has no
        ``WORLD_SIZE`` (plain ``python``: the run stays single-process).
    """
    if dist.is_initialized():
        return True
    if "WORLD_SIZE" not in os.environ:
        return False
    timeout_s = float(timeout_s)
    if not timeout_s > 0:
        raise ValueError(f"dist_timeout_s must be a positive number of seconds, got {timeout_s}")
    global _timeout_s
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    _timeout_s = timeout_s
    logger.info("process group: rank %d of %d (backend %s, local rank %s, timeout %.0f s)", dist.get_rank(),
                dist.get_world_size(), backend, os.environ.get("LOCAL_RANK", "?"), timeout_s)
    return True


def _beat_interval_s() -> float:
    """Seconds between heartbeats: a tenth of the group's timeout, at most 5 s."""
    return min(5.0, (_timeout_s or DEFAULT_TIMEOUT_S) / 10)


def _store():
    """The process group's key-value store (the one ``torchrun`` set up), or ``None``."""
    try:
        return dist.PrefixStore("monai_cxrssl/heartbeat/", dist.distributed_c10d._get_default_store())
    except Exception:  # noqa: BLE001 -- a private PyTorch API: without it there is no heartbeat, nothing else changes
        return None


class Heartbeat:
    """This process's sign of life: a daemon thread writes the time into the group's store every
    ``interval_s`` seconds. A process waiting in a collective releases the GIL and keeps beating; one
    that is stopped or killed does not (nor does one that hangs holding the GIL).

    Args:
        interval_s: seconds between beats (default: a tenth of the group's timeout, at most 5 s).
    """

    def __init__(self, interval_s: float | None = None):
        self.interval_s = float(interval_s or _beat_interval_s())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Heartbeat:
        store = _store() if is_distributed() else None
        if store is None or self._thread is not None:
            return self
        rank = get_rank()

        def beat():
            while True:
                try:
                    store.set(str(rank), repr(time.time()))
                except Exception:  # noqa: BLE001 -- the store went with the group: nothing left to beat for
                    return
                if self._stop.wait(self.interval_s):
                    return

        self._thread = threading.Thread(target=beat, name="monai_cxrssl-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()


def describe_silent_ranks(waited_at: str, max_age_s: float | None = None) -> str | None:
    """Why a collective timed out, when some processes stopped beating: ``"rank 1 stopped responding
    ..."``, or ``None`` when every process still beats (or no heartbeat is kept).

    Args:
        waited_at: where this process waited (e.g. ``"iteration 12"``), for the message.
        max_age_s: a beat older than this means silence (default: three heartbeat intervals).
    """
    store = _store() if is_distributed() else None
    if store is None:
        return None
    max_age_s = max_age_s or 3 * _beat_interval_s()
    now, silent = time.time(), []
    for rank in range(get_world_size()):
        try:
            store.wait([str(rank)], timedelta(seconds=2))
            age = now - float(store.get(str(rank)).decode())
        except Exception:  # noqa: BLE001 -- never beat, or the store is gone for it
            age = None
        if rank != get_rank() and (age is None or age > max_age_s):
            silent.append((rank, age))
    if not silent:
        return None
    who = ", ".join(f"rank {r} ({'no heartbeat at all' if a is None else f'last heartbeat {a:.0f} s ago'})"
                    for r, a in silent)
    return (f"{who} stopped responding (stopped, hung or killed) while rank {get_rank()} waited for "
            f"{'it' if len(silent) == 1 else 'them'} at {waited_at} for the process group's timeout of "
            f"{_timeout_s or DEFAULT_TIMEOUT_S:.0f} s (setting dist_timeout_s). The run stops here: find what "
            f"stopped that process (out of memory, a debugger, SIGSTOP, a hung disk), then resume with "
            f"--resume true")


def destroy_process_group() -> None:
    """Leave the process group once every process is here and no collective is left to free.

    The barrier makes every rank finish its collectives; the short sleep releases the GIL so that the
    Gloo worker threads can free those finished operations (that needs the GIL: their tensors are Python
    objects). Otherwise the group's destructor, run later with the GIL held when the last reference (e.g.
    a DDP reducer) goes, can wait forever for a worker that waits for the GIL (seen with torch 2.13).
    """
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
            time.sleep(0.2)
        dist.destroy_process_group()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process along dim 0 (rank order), keeping gradients to the local part."""
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every process) from every process along dim 0, in rank order."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)
