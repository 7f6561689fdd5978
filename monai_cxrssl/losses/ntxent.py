"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (and MICLe)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_cxrssl.distributed import gather_with_grad, get_rank

__all__ = ["NTXentLoss"]


class NTXentLoss(nn.Module):
    """NT-Xent over two batches of embeddings whose rows ``i`` are positive pairs.

    Each of the ``2N`` embeddings is classified against all others (its positive and
    ``2N - 2`` negatives). Computed in float32 with ``log_softmax`` (stable at low
    temperatures and under bf16 autocast). In a multi-process run the negatives are gathered
    from every process, with gradients flowing to the local embeddings.

    Args:
        temperature: softmax temperature (SimCLR: 0.1-0.5).
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        if z1.shape != z2.shape or z1.ndim != 2:
            raise ValueError(f"expected two (N, D) embeddings of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
        n = z1.shape[0]
        with torch.autocast(device_type=z1.device.type, enabled=False):  # similarities in float32, also under autocast
            z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2N, D), local
            z_all = gather_with_grad(z)  # (W * 2N, D)
            offset = get_rank() * 2 * n
            logits = z @ z_all.t() / self.temperature
            idx = torch.arange(2 * n, device=z.device)
            logits[idx, offset + idx] = float("-inf")  # an embedding is not its own negative
            target = offset + (idx + n) % (2 * n)
            return F.cross_entropy(logits, target)
