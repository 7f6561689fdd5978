"""Negative cosine similarity: the loss of BYOL (Grill et al. 2020) and SimSiam (Chen and He 2021).

``loss(p, z) = 2 - 2 * cos(p, z)``, averaged over the batch: the squared distance between the L2-normalised
prediction ``p`` and target ``z`` (BYOL, equation 2). Gradients flow into ``p`` only: the target comes from a
momentum encoder (BYOL) or is detached (SimSiam) by the caller. Computed in float32 with autocast off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NegativeCosineSimilarity"]


class NegativeCosineSimilarity(nn.Module):
    """``2 - 2 * cos(p, z)`` averaged over the batch (0 when every prediction points at its target, 4 when opposite)."""

    def forward(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if p.ndim != 2 or p.shape != z.shape:
            raise ValueError(f"expected predictions and targets of one shape (N, D), got {tuple(p.shape)} and "
                             f"{tuple(z.shape)}")
        with torch.autocast(device_type=p.device.type, enabled=False):
            cos = (F.normalize(p.float(), dim=1) * F.normalize(z.float(), dim=1)).sum(dim=1)
            return (2 - 2 * cos).mean()
