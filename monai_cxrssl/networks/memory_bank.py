"""A memory bank: a fixed-size queue of embeddings from earlier batches (MoCo's negatives; NNCLR's support set).

The keys and the write pointer are buffers, so a checkpoint saves and resumes them, and
``DistributedDataParallel`` leaves them alone: every process writes the same gathered keys, so the
banks stay equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MemoryBank"]


class MemoryBank(nn.Module):
    """``size`` embeddings of dimension ``dim``, overwritten oldest first.

    Args:
        size: number of embeddings kept, ``K``.
        dim: embedding dimension.
        normalize: start from random unit vectors (MoCo) rather than zeros.

    The keys are :attr:`keys` (``(K, D)``, float32) and the next row written is :attr:`ptr`.
    """

    def __init__(self, size: int, dim: int, normalize: bool = True):
        super().__init__()
        if int(size) < 1:
            raise ValueError(f"the memory bank's size must be >= 1 (the number of embeddings kept), got {size}")
        if int(dim) < 1:
            raise ValueError(f"the memory bank's embedding dimension must be >= 1, got {dim}")
        start = torch.randn(int(size), int(dim))
        self.register_buffer("keys", F.normalize(start, dim=1) if normalize else torch.zeros_like(start))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (N, D) at the pointer, wrapping around, and advance it.

        The same as writing them one by one: when ``N`` exceeds the bank's size, only the last ``K`` remain.
        """
        if keys.ndim != 2 or keys.shape[1] != self.keys.shape[1]:
            raise ValueError(f"expected keys (N, {self.keys.shape[1]}), got {tuple(keys.shape)}")
        size, n = self.size, keys.shape[0]
        ptr = int(self.ptr)
        if n > size:
            ptr, keys = (ptr + n - size) % size, keys[n - size:]
        idx = (ptr + torch.arange(keys.shape[0], device=self.keys.device)) % size
        self.keys.index_copy_(0, idx, keys.to(self.keys))
        self.ptr.fill_((ptr + keys.shape[0]) % size)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.keys.shape[1]}"
