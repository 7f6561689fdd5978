"""Supervised losses for the downstream classifier, with per-output masking of unknown labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClassificationLoss"]


class ClassificationLoss(nn.Module):
    """BCE (binary, multi-label) or cross-entropy (multi-class) on float target vectors.

    NaN targets (unknown or ignored labels) contribute nothing; the loss is the mean over known
    entries. Computed in float32.

    Args:
        task: ``binary``, ``multiclass`` or ``multilabel``.
        pos_weight: per-output positive weight for BCE (class weighting), or ``None``.
        class_weight: per-class weight for cross-entropy, or ``None``.
    """

    def __init__(self, task: str, pos_weight: torch.Tensor | None = None, class_weight: torch.Tensor | None = None):
        super().__init__()
        self.task = task
        self.register_buffer("pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight).float())
        self.register_buffer("class_weight", None if class_weight is None else torch.as_tensor(class_weight).float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(target.shape)} differ in shape")
        if self.task == "multiclass":
            return F.cross_entropy(logits, target, weight=self.class_weight)
        known = ~torch.isnan(target)
        if not bool(known.any()):
            return logits.sum() * 0.0  # no known label in this batch: no gradient, no NaN
        loss = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(target), reduction="none",
                                                  pos_weight=self.pos_weight)
        return loss[known].mean()
