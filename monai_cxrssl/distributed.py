"""Helpers over ``torch.distributed``: process group set-up, rank/world queries, gathering.

Everything except :func:`init_process_group` is a no-op in a single process, so methods and
losses call it unconditionally. Multi-process runs use PyTorch's own stack: ``torchrun`` sets
the environment, :func:`init_process_group` reads it (NCCL on CUDA, Gloo on CPU), the trainer
wraps the method in ``DistributedDataParallel``, the sampler shards the data.
"""

from __future__ import annotations

import logging
import os
import time

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = ["is_distributed", "get_rank", "get_world_size", "is_main_process", "init_process_group",
           "destroy_process_group", "gather_with_grad", "gather_no_grad", "local_device"]


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


def init_process_group(backend: str | None = None) -> bool:
    """Join the process group described by ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``...).

    Args:
        backend: ``nccl`` or ``gloo``; default NCCL when CUDA is available, else Gloo.

    Returns:
        ``True`` when a group was initialised; ``False`` when the environment has no
        ``WORLD_SIZE`` (plain ``python``: the run stays single-process).
    """
    if dist.is_initialized():
        return True
    if "WORLD_SIZE" not in os.environ:
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend=backend)
    logger.info("process group: rank %d of %d (backend %s, local rank %s)", dist.get_rank(), dist.get_world_size(),
                backend, os.environ.get("LOCAL_RANK", "?"))
    return True


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
