"""InfoNCE against a queue of negatives: the loss of MoCo (He et al. 2020; MoCo v2, Chen et al. 2020).

Each query ``q_i`` is classified among ``1 + K`` candidates: its positive key ``k_i`` (the
other view of the same image, from the momentum encoder) and the ``K`` keys of the queue
(earlier batches), with logits ``[q_i . k_i, q_i . queue^T] / T`` and the positive at index 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InfoNCELoss"]


class InfoNCELoss(nn.Module):
    """InfoNCE of queries against their positive keys and a queue of negative keys.

    ``q`` and ``k`` are L2-normalised here; the queue is expected to hold normalised keys
    already (MoCo enqueues normalised keys), and is not renormalised. The logits and the
    cross-entropy are computed in float32 with autocast off (``log_softmax`` inside
    ``cross_entropy``), so bf16/fp16 embeddings and low temperatures stay stable. Gradients
    flow to ``q`` only when ``k`` and the queue come from a momentum encoder without grad.

    Args:
        temperature: softmax temperature (MoCo v1: 0.07; MoCo v2 and MoCo-CXR: 0.2).
    """

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def logits(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        """``(N, 1 + K)`` float32 logits; column 0 is each query's positive."""
        if q.ndim != 2 or q.shape != k.shape:
            raise ValueError(f"expected queries and keys of one shape (N, D), got {tuple(q.shape)} and "
                             f"{tuple(k.shape)}")
        if queue.ndim != 2 or queue.shape[1] != q.shape[1]:
            raise ValueError(f"expected a queue (K, D) with D = {q.shape[1]} (the embedding size), "
                             f"got {tuple(queue.shape)}")
        with torch.autocast(device_type=q.device.type, enabled=False):
            q = F.normalize(q.float(), dim=1)
            k = F.normalize(k.float(), dim=1)
            pos = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
            neg = q @ queue.float().t()  # (N, K)
            return torch.cat([pos, neg], dim=1) / self.temperature

    def forward(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        """Mean InfoNCE of queries ``q`` (N, D) with positives ``k`` (N, D) and negatives ``queue`` (K, D)."""
        logits = self.logits(q, k, queue)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
            return F.cross_entropy(logits, target)
