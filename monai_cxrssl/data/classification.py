"""The data of a classification run: which entries train, validate and test, and their targets.

:class:`ClassificationData` resolves a data source (datalist, dataset folder or the synthetic
demo), infers the task and classes from the datalist, draws the label fraction, and checks
every target, all before any training starts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from monai_cxrssl.data.datalist import check_datalist, split_keys
from monai_cxrssl.data.dataset import resolve_datalist
from monai_cxrssl.data.splits import label_fraction as draw_label_fraction
from monai_cxrssl.data.splits import patient_split
from monai_cxrssl.data.targets import TASKS, check_targets, infer_task, positive_weights
from monai_cxrssl.exceptions import DatalistError

__all__ = ["ClassificationData"]

logger = logging.getLogger(__name__)


class ClassificationData:
    """Entries and targets of a classification run.

    Args:
        dataset_dir, datalist, demo_dir: the data source (see :func:`~monai_cxrssl.data.dataset.resolve_datalist`).
        task: ``binary``, ``multiclass``, ``multilabel``, or ``auto``: the datalist's ``task``, or
            when it states none (a plain MONAI datalist), inferred from the labels and logged
            (:func:`~monai_cxrssl.data.targets.infer_task`).
        classes: class or finding names; default: the datalist's ``classes``, else named after the
            labels (``"0"``, ``"1"``, ...).
        uncertain: policy for uncertain multi-label values (``ones``, ``zeros``, ``ignore``).
        label_fraction: fraction of the training entries whose labels are used (stratified, nested
            across fractions for one seed, every class present).
        seed: seed of the label-fraction draw (and of the validation carve-out).
        val_fraction: when the datalist has no ``validation`` list, this fraction of the training
            patients is set aside for validation (patient-level, stratified, before the label fraction).
        check_files: check that every image file exists.

    Attributes:
        train_items, val_items, test_items: checked entries.
        task, classes, num_outputs: the target definition.
        pos_weight: negatives/positives per output over the drawn training labels (BCE class weighting).
    """

    def __init__(self, dataset_dir: str | os.PathLike | None = None, datalist: str | os.PathLike | None = None,
                 demo_dir: str | os.PathLike | None = None, task: str = "auto", classes: Sequence[str] | None = None,
                 uncertain: str = "ignore", label_fraction: float = 1.0, seed: int = 0, val_fraction: float = 0.1,
                 check_files: bool = True):
        dl, self.source = resolve_datalist(dataset_dir, datalist, demo_dir)
        entries = [e for k in split_keys(dl) for e in dl[k]]
        self.task = dl.get("task") if task in ("auto", "", None) else task
        self.classes = list(classes) if classes else list(dl.get("classes") or [])
        if self.task in ("auto", "", None):
            self.task, self.classes, reason = infer_task(entries, self.classes, f"'{self.source}'")
            logger.info("the datalist states no task: inferred %s from its labels (%s); classes %s",
                        self.task, reason, self.classes)
        if self.task not in TASKS:
            raise DatalistError(f"'{self.source}': task {self.task!r} is not a classification task; expected one of "
                                f"{TASKS} (set task explicitly, or a datalist 'task')")
        if self.task != "binary" and len(self.classes) < 2:
            _, self.classes, _ = infer_task(entries, self.classes, f"'{self.source}'")
            logger.info("no class names given: named the %s outputs after the labels: %s", self.task, self.classes)
        if self.task == "binary":
            self.num_outputs = 1
        elif len(self.classes) >= 2:
            self.num_outputs = len(self.classes)
        else:
            raise DatalistError(f"'{self.source}': a {self.task} task needs its class names ('classes'), got {self.classes}")
        if self.task == "multilabel":  # a list under 'label' is the multi-label vector
            dl = {k: ([{**e, "labels": e["label"]} if "labels" not in e and "label" in e else e for e in v]
                      if k in split_keys(dl) else v) for k, v in dl.items()}
        self.uncertain = uncertain
        self.label_key = "labels" if self.task == "multilabel" else "label"
        if not 0.0 < float(label_fraction) <= 1.0:
            raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}")

        training = list(dl.get("training") or [])
        validation = list(dl.get("validation") or [])
        if not training:
            raise DatalistError(f"'{self.source}' has no training entries")
        self._check(training, "training", check_files)
        if not validation:
            split = patient_split(training, val_fraction=val_fraction, test_fraction=0.0, seed=seed,
                                  stratify_key=self.label_key)
            training, validation = split["training"], split["validation"]
            logger.info("no validation list: set aside %d of %d training entries by patient (val_fraction=%s)",
                        len(validation), len(training) + len(validation), val_fraction)
        self.val_items = self._check(validation, "validation", check_files)
        self.test_items = self._check(list(dl.get("test") or []), "test", check_files, allow_empty=True)
        self.label_fraction = float(label_fraction)
        self.seed = int(seed)
        self.train_items = (training if self.label_fraction >= 1.0 else
                            draw_label_fraction(training, self.label_fraction, seed=seed, stratify_key=self.label_key))
        y = check_targets(self.train_items, self.task, self.num_outputs, uncertain, f"{self.source}:training")
        self._require_both_classes(y, f"the training labels at label_fraction={self.label_fraction} (seed {seed})")
        self.pos_weight = positive_weights(y)
        logger.info("classification data from %s: task %s, %d output(s), %d/%d/%d train/val/test entries "
                    "(label fraction %s)", self.source, self.task, self.num_outputs, len(self.train_items),
                    len(self.val_items), len(self.test_items), self.label_fraction)

    def _check(self, items, split, check_files, allow_empty=False):
        if not items:
            if allow_empty:
                return []
            raise DatalistError(f"'{self.source}': the {split} list is empty")
        check_datalist(items, required_keys=("image", self.label_key), check_files=check_files,
                       source=f"{self.source}:{split}")
        check_targets(items, self.task, self.num_outputs, self.uncertain, f"{self.source}:{split}")
        return [{"patient_id": "", **e} for e in items]  # every entry has the key (empty: unknown)

    def _require_both_classes(self, y: np.ndarray, what: str) -> None:
        if self.task == "multiclass":
            missing = [self.classes[k] for k in range(self.num_outputs) if not (y[:, k] == 1).any()]
            if missing:
                raise DatalistError(f"{what} contain no example of class(es) {missing}")
            return
        names = self.classes if self.task == "multilabel" else [self.classes[-1] if self.classes else "positive"]
        for k in range(self.num_outputs):
            col = y[:, k][~np.isnan(y[:, k])]
            if not ((col == 1).any() and (col == 0).any()):
                raise DatalistError(f"{what} have no {'positive' if not (col == 1).any() else 'negative'} "
                                    f"example of '{names[k]}'; raise label_fraction or drop that output")

    def targets(self, split: str) -> np.ndarray:
        """Target matrix ``(N, num_outputs)`` of ``train``, ``val`` or ``test`` (NaN = unknown)."""
        items = {"train": self.train_items, "val": self.val_items, "test": self.test_items}[split]
        return check_targets(items, self.task, self.num_outputs, self.uncertain, split)
