"""Ignite metrics for the classifier's validation: macro AUC over outputs, unknown labels masked."""

from __future__ import annotations

import numpy as np
import torch

from ignite.metrics import Metric

from monai_cxrssl.evaluation.stats import multilabel_auc

__all__ = ["MacroAUC", "probabilities"]


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Logits -> probabilities: softmax over classes (multi-class), else an independent sigmoid per output."""
    logits = logits.float()
    return torch.softmax(logits, dim=1) if task == "multiclass" else torch.sigmoid(logits)


class MacroAUC(Metric):
    """Mean ROC AUC over outputs (one-vs-rest for multi-class), NaN targets excluded per output.

    Outputs whose known labels hold one class only are left out of the mean (see
    :func:`~monai_cxrssl.evaluation.stats.multilabel_auc`). The engine output must give
    ``(logits, targets)`` through ``output_transform``.

    Args:
        task: ``binary``, ``multiclass`` or ``multilabel``.
        output_transform: as in Ignite.
    """

    def __init__(self, task: str, output_transform=lambda out: (out["pred"], out["label"]), device="cpu"):
        self.task = task
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []

    def update(self, output) -> None:
        logits, target = output
        self._scores.append(probabilities(torch.as_tensor(logits).detach(), self.task).cpu().numpy())
        self._targets.append(torch.as_tensor(target).detach().float().cpu().numpy())

    def compute(self) -> float:
        if not self._scores:
            raise RuntimeError("MacroAUC needs at least one batch before compute()")
        y = np.concatenate(self._targets)
        s = np.concatenate(self._scores)
        known = ~np.isnan(y)
        result = multilabel_auc(np.where(known, y, 0), s, mask=known)
        return float("nan") if result["macro"] is None else float(result["macro"])
