"""Ignite handler writing per-image predictions and, with labels, AUCs with bootstrap confidence intervals."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ignite.engine import Engine, Events

from monai_cxrssl.evaluation.metrics import probabilities
from monai_cxrssl.evaluation.stats import bootstrap_auc_ci, sensitivity_specificity
from monai_cxrssl.utils import atomic_write

__all__ = ["PredictionReport", "output_names", "read_predictions", "PREDICTIONS_CSV", "METRICS_JSON"]

#: the files :class:`PredictionReport` writes in its ``output_dir``
PREDICTIONS_CSV, METRICS_JSON = "predictions.csv", "metrics.json"

logger = logging.getLogger(__name__)


def output_names(task: str, classes: Sequence[str] | None, num_outputs: int) -> list[str]:
    """Names of the classifier's outputs: the positive class for a binary task, else the classes."""
    classes = list(classes or [])
    if task == "binary":
        return [classes[-1] if classes else "positive"]
    return classes if len(classes) == num_outputs else [str(i) for i in range(num_outputs)]


def read_predictions(path: str | Path) -> dict:
    """Read a labelled ``predictions.csv`` as :class:`PredictionReport` writes it.

    Returns:
        ``{"images", "patients", "outputs", "probs" (N, K), "targets" (N, K, NaN = unknown)}``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: no rows, columns other than ``image, patient_id, prob_<output>..., target_<output>...``
            (e.g. predictions on an unlabelled list), or an unreadable value; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise ValueError(f"'{path}' holds no predictions")
    header = rows[0]
    probs = [c[len("prob_"):] for c in header if c.startswith("prob_")]
    targets = [c[len("target_"):] for c in header if c.startswith("target_")]
    if not probs or targets != probs or header[:2] != ["image", "patient_id"]:
        raise ValueError(f"'{path}': expected columns image, patient_id, prob_<output>..., target_<output>... "
                         f"(evaluation on a labelled test list), found {header}")
    k = len(probs)
    body = rows[1:]
    try:
        p = np.array([[float(v) for v in r[2:2 + k]] for r in body], dtype=np.float64)
        y = np.array([[float(v) if v != "" else np.nan for v in r[2 + k:2 + 2 * k]] for r in body], dtype=np.float64)
    except (ValueError, IndexError) as e:
        raise ValueError(f"'{path}': unreadable row ({e})") from None
    return {"images": [r[0] for r in body], "patients": [r[1] for r in body], "outputs": probs, "probs": p, "targets": y}


class RunCollector:
    """Base of the evaluation handlers that gather every iteration's output and write once the run completes:
    :meth:`reset` at the start, :meth:`collect` after each iteration, :meth:`write` at the end."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        raise NotImplementedError

    def collect(self, engine: Engine) -> None:
        raise NotImplementedError

    def write(self, engine: Engine | None = None):
        raise NotImplementedError


class PredictionReport(RunCollector):
    """Collect an evaluator's predictions; write ``predictions.csv`` and, with labels, ``metrics.json``.

    Metrics: per-output ROC AUC (one-vs-rest for multi-class) with a percentile bootstrap CI
    (patient-level resampling when every image has a ``patient_id``), the macro mean with its
    CI, and sensitivity/specificity at ``threshold``. Unknown labels (NaN) are masked per output.

    Args:
        output_dir: where to write.
        task: ``binary``, ``multiclass`` or ``multilabel``.
        classes: class or finding names.
        with_metrics: compute metrics when the batches carry targets.
        n_resamples, confidence, seed: bootstrap settings.
        threshold: probability threshold for sensitivity/specificity.
        path_key, group_key: batch keys of the image path and of the patient id.
    """

    def __init__(self, output_dir, task: str, classes: Sequence[str] | None = None, with_metrics: bool = True,
                 n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0, threshold: float = 0.5,
                 path_key: str = "path", group_key: str = "patient_id"):
        self.output_dir = Path(output_dir)
        self.task = task
        self.classes = list(classes or [])
        self.with_metrics = with_metrics
        self.n_resamples, self.confidence, self.seed, self.threshold = int(n_resamples), confidence, seed, threshold
        self.path_key, self.group_key = path_key, group_key
        self.metrics: dict | None = None
        self.reset()

    def reset(self, engine: Engine | None = None) -> None:
        self._probs, self._targets, self._paths, self._groups = [], [], [], []

    def collect(self, engine: Engine) -> None:
        out, batch = engine.state.output, engine.state.batch
        probs = probabilities(torch.as_tensor(out["pred"]).detach(), self.task).cpu().numpy()
        self._probs.append(probs)
        target = out.get("label")
        if target is not None:
            self._targets.append(torch.as_tensor(target).detach().float().cpu().numpy())
        n = probs.shape[0]
        self._paths += [str(p) for p in batch.get(self.path_key, [""] * n)]
        self._groups += [str(g) for g in batch.get(self.group_key, [""] * n)]

    def write(self, engine: Engine | None = None) -> dict | None:
        probs = np.concatenate(self._probs)
        names = output_names(self.task, self.classes, probs.shape[1])
        targets = np.concatenate(self._targets) if len(self._targets) == len(self._probs) and self._targets else None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.output_dir / PREDICTIONS_CSV, "w", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["image", "patient_id"] + [f"prob_{n}" for n in names]
                       + ([f"target_{n}" for n in names] if targets is not None else []))
            for i in range(probs.shape[0]):
                row = [self._paths[i], self._groups[i]] + [repr(float(p)) for p in probs[i]]  # exact: no ties from rounding
                if targets is not None:
                    row += ["" if np.isnan(t) else int(t) for t in targets[i]]
                w.writerow(row)
        logger.info("wrote %d predictions to %s", probs.shape[0], self.output_dir / PREDICTIONS_CSV)
        if targets is None or not self.with_metrics:
            return None
        self.metrics = self.compute(probs, targets, names)
        with atomic_write(self.output_dir / METRICS_JSON, "w", encoding="utf-8") as f:
            json.dump(self.metrics, f, indent=1)
        logger.info("AUC %.4f (%d%% CI %.4f-%.4f, %s-level bootstrap, %d resamples); metrics in %s",
                    self.metrics["auc"], round(100 * self.confidence), self.metrics["ci_low"], self.metrics["ci_high"],
                    self.metrics["resampling"], self.n_resamples, self.output_dir / METRICS_JSON)
        return self.metrics

    def compute(self, probs: np.ndarray, targets: np.ndarray, names: list[str]) -> dict:
        """The metrics dictionary (see the class docstring)."""
        known = ~np.isnan(targets)
        y = np.where(known, targets, 0).astype(int)
        groups = self._groups if all(self._groups) else None
        if probs.shape[1] == 1:
            ci = bootstrap_auc_ci(y[known[:, 0], 0], probs[known[:, 0], 0],
                                  groups=None if groups is None else [g for g, k in zip(groups, known[:, 0]) if k],
                                  n_resamples=self.n_resamples, confidence=self.confidence, seed=self.seed)
            per = {names[0]: {k: ci[k] for k in ("auc", "ci_low", "ci_high", "std", "n_valid_resamples")}}
        else:
            ci = bootstrap_auc_ci(y, probs, groups=groups, n_resamples=self.n_resamples, confidence=self.confidence,
                                  seed=self.seed, mask=known, names=names)
            per = ci["per_finding"]
        sens_spec = {}
        for k, name in enumerate(names):
            rows = known[:, k]
            if rows.any():
                sens_spec[name] = sensitivity_specificity(y[rows, k], probs[rows, k], threshold=self.threshold)
        return {
            "task": self.task,
            "n_images": int(probs.shape[0]),
            "n_patients": len(set(groups)) if groups is not None else None,
            "resampling": ci.get("resampling", "row"),
            "n_resamples": self.n_resamples,
            "confidence": self.confidence,
            "auc": ci["auc"],
            "ci_low": ci["ci_low"],
            "ci_high": ci["ci_high"],
            "per_output": per,
            "excluded_outputs": ci.get("excluded", []),
            "threshold": self.threshold,
            "sensitivity_specificity": sens_spec,
        }
