"""Distribution shift: how much does a trained classifier's AUC drop on another dataset?

:func:`shift_report` compares the predictions of one model on its own test set (the training
distribution) and on a shifted test set (another hospital, another population, another scanner),
both written by :class:`~monai_cxrssl.evaluation.PredictionReport`. The drop ``AUC(own) - AUC(shifted)``
gets a bootstrap interval in which each test set is resampled on its own, by patient
(:func:`~monai_cxrssl.evaluation.stats.independent_bootstrap_auc_diff`). Multi-label: only the
findings with both classes in both sets are compared (the others are listed).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from monai_cxrssl.evaluation.report import read_predictions
from monai_cxrssl.evaluation.stats import independent_bootstrap_auc_diff
from monai_cxrssl.utils import atomic_write

__all__ = ["shift_report"]

logger = logging.getLogger(__name__)


def _groups(pred: dict):
    return pred["patients"] if all(pred["patients"]) else None


def shift_report(own_predictions: str | Path, shifted_predictions: str | Path, *, output: str | Path | None = None,
                 n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0, shifted_name: str = "shifted",
                 mapping: dict | None = None) -> dict:
    """The AUC drop from a model's own test set to a shifted one, with its bootstrap interval.

    Args:
        own_predictions: ``predictions.csv`` of the model on its own test set.
        shifted_predictions: ``predictions.csv`` of the same model on the shifted test set (same outputs,
            labels mapped to the model's classes, see :func:`monai_cxrssl.data.shifted_test_items`).
        output: optional JSON file to write the report to (atomically).
        n_resamples, confidence, seed: of the bootstrap.
        shifted_name: a name for the shifted set, for the log.
        mapping: the label mapping used, recorded in the report.

    Returns:
        ``{"auc_own", "auc_shifted", "drop", "ci_low", "ci_high", "p_value", "n_images": [own, shifted],
        "n_patients": [...], "outputs", "compared_outputs", "excluded_outputs", "per_output", ...}``;
        ``drop > 0`` means the model is worse on the shifted set; ``ci_low``/``ci_high`` bound the drop.

    Raises:
        FileNotFoundError, ValueError: a missing or unreadable predictions file, different outputs, or
            no output with both classes in both sets.
    """
    own, shifted = read_predictions(own_predictions), read_predictions(shifted_predictions)
    if own["outputs"] != shifted["outputs"]:
        raise ValueError(f"'{own_predictions}' has outputs {own['outputs']} but '{shifted_predictions}' has "
                         f"{shifted['outputs']}: evaluate the same model, with labels mapped to its classes")
    binary = len(own["outputs"]) == 1
    ya, yb = own["targets"], shifted["targets"]
    ka, kb = ~np.isnan(ya), ~np.isnan(yb)
    args = {}
    if binary:
        ya, yb, sa, sb = ya[:, 0], yb[:, 0], own["probs"][:, 0], shifted["probs"][:, 0]
        ka, kb = ka[:, 0], kb[:, 0]
        if not ka.all() or not kb.all():
            raise ValueError("a binary test set has images without a label; leave them out of its list")
    else:
        sa, sb = own["probs"], shifted["probs"]
        args = {"mask_a": ka, "mask_b": kb, "names": own["outputs"]}
    res = independent_bootstrap_auc_diff(np.where(np.isnan(ya), 0, ya), sa, np.where(np.isnan(yb), 0, yb), sb,
                                         groups_a=_groups(own), groups_b=_groups(shifted), n_resamples=n_resamples,
                                         confidence=confidence, seed=seed, **args)
    report = {
        "auc_own": res["auc_a"], "auc_shifted": res["auc_b"], "drop": res["diff"], "ci_low": res["ci_low"],
        "ci_high": res["ci_high"], "p_value": res["p_value"], "std": res["std"],
        "n_valid_resamples": res["n_valid_resamples"], "n_resamples": n_resamples, "confidence": confidence,
        "resampling": res["resampling"], "n_images": [len(own["images"]), len(shifted["images"])],
        "n_patients": [len(set(g)) if (g := _groups(p)) is not None else None for p in (own, shifted)],
        "outputs": own["outputs"],
        "excluded_outputs": res.get("excluded", []),
        "compared_outputs": [o for o in own["outputs"] if o not in res.get("excluded", [])],
        "own_predictions": str(own_predictions), "shifted_predictions": str(shifted_predictions),
        "shifted_name": shifted_name, "mapping": mapping,
        "definition": "drop = AUC(own test set) - AUC(shifted test set); percentile bootstrap interval with each "
                      "test set resampled independently (by patient when every image has a patient id); "
                      "multi-label: macro mean over the outputs with both classes in both sets",
    }
    if not binary:
        report["per_output"] = {k: ({"drop": v["diff"], "ci_low": v["ci_low"], "ci_high": v["ci_high"],
                                     "auc_own": v["auc_a"], "auc_shifted": v["auc_b"]} if v["diff"] is not None
                                    else None) for k, v in res["per_finding"].items()}
    pct = round(100 * confidence)
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    logger.info("distribution shift to %s: AUC %s on the own test set, %s on the shifted one; drop %s "
                "(%d%% CI %s to %s)", shifted_name, fmt(report["auc_own"]), fmt(report["auc_shifted"]),
                fmt(report["drop"]), pct, fmt(report["ci_low"]), fmt(report["ci_high"]))
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(output, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    return report
