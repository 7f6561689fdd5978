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
from monai_cxrssl.data.sources import resolve_datalist
from monai_cxrssl.data.splits import label_fraction as draw_label_fraction
from monai_cxrssl.data.splits import patient_split
from monai_cxrssl.data.targets import TASKS, check_targets, infer_task, positive_weights
from monai_cxrssl.exceptions import DatalistError

__all__ = ["ClassificationData"]

logger = logging.getLogger(__name__)


class ClassificationData:
    """Entries and targets of a classification run.

    Args:
        dataset_dir, datalist, demo_dir: the data source (see :func:`~monai_cxrssl.data.sources.resolve_datalist`).
        task: ``binary``, ``multiclass``, ``multilabel``, or ``auto``: the datalist's ``task``, or
            when it states none (a plain MONAI datalist), inferred from the labels and logged
            (:func:`~monai_cxrssl.data.targets.infer_task`).
        classes: class or finding names; default: the datalist's ``classes``, else named after the
            labels (``"0"``, ``"1"``, ...).
        uncertain: policy for uncertain multi-label values (``ones``, ``zeros``, ``ignore``).
        label_fraction: the share of the datalist's labelled entries (training and validation lists
            together) that the run uses, ALL its labels included: a stratified draw, nested across
            fractions for one seed, every class present. Below 1 the validation set is drawn from these
            labelled entries (see ``val_fraction``), so that model selection uses no label outside the
            budget. At 1 a datalist's own validation list is kept as it is (unless ``val_fraction`` is 0).
        seed: seed of the label-fraction draw (and of the validation carve-out).
        val_fraction: the share of the labelled entries set aside for validation (by patient, stratified),
            whenever the datalist's validation list is not used as it is (a label fraction below 1, or no
            validation list). The validation set then holds at least one positive and one negative example
            of every output (binary, multi-label) or an example of every class (multi-class), patients being
            moved from training to validation when the stratified split leaves one out; a multi-label
            finding for which that is impossible is left out of the validation AUC (logged), and when no
            output can be validated the error says so. ``0``: no validation (a datalist's validation list
            then trains too), a fixed schedule, and the model of the last epoch is the one saved.
        check_files: check that every image file exists.
        patient_overlap: what to do when test patients also appear in the training or validation entries of
            the datalist (test AUCs would be optimistic): ``"warn"`` (logged, with a count and examples),
            ``"error"`` (a :class:`~monai_cxrssl.exceptions.DatalistError`), or ``"ignore"``. Entries without a
            patient id cannot be compared.

    Attributes:
        train_items, val_items, test_items: checked entries.
        n_labels: the labels the run uses: training + validation entries (its label budget).
        n_patients: the patients these labels come from (an entry without a patient id counts as one).
        task, classes, num_outputs: the target definition.
        pos_weight: negatives/positives per output over the drawn training labels (BCE class weighting).
    """

    def __init__(self, dataset_dir: str | os.PathLike | None = None, datalist: str | os.PathLike | None = None,
                 demo_dir: str | os.PathLike | None = None, task: str = "auto", classes: Sequence[str] | None = None,
                 uncertain: str = "ignore", label_fraction: float = 1.0, seed: int = 0, val_fraction: float = 0.1,
                 check_files: bool = True, patient_overlap: str = "warn"):
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

        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.label_fraction = float(label_fraction)
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)

        training = list(dl.get("training") or [])
        validation = list(dl.get("validation") or [])
        if not training:
            raise DatalistError(f"'{self.source}' has no training entries")
        self._check(training, "training", check_files)
        if validation:
            self._check(validation, "validation", check_files)
        self.test_items = self._check(list(dl.get("test") or []), "test", check_files, allow_empty=True)
        self._check_patient_overlap(training + validation, patient_overlap)
        budget = f"the labels at label_fraction={self.label_fraction} (seed {seed})"
        own_validation = bool(validation) and self.label_fraction >= 1.0 and self.val_fraction > 0
        if own_validation:
            self.train_items, self.val_items = self._with_ids(training), self._with_ids(validation)
            logger.info("validation: the datalist's validation list (%d entries)", len(validation))
        else:
            pool = training + validation  # every labelled entry the datalist offers
            labelled = (pool if self.label_fraction >= 1.0 else
                        draw_label_fraction(pool, self.label_fraction, seed=seed, stratify_key=self.label_key))
            labelled = self._with_ids(labelled)
            if self.val_fraction > 0:
                self.train_items, self.val_items = self._carve_validation(labelled, budget)
            else:
                self.train_items, self.val_items = labelled, []
                logger.info("no validation set (val_fraction=0): every labelled entry trains")
        y = check_targets(self.train_items, self.task, self.num_outputs, uncertain, f"{self.source}:training")
        self._require_both_classes(y, f"the training labels at label_fraction={self.label_fraction} (seed {seed})")
        if own_validation:
            self._check_validation_list()  # the datalist's list as it is (a carved one is checked when it is made)
        self.pos_weight = positive_weights(y)
        used = self.train_items + self.val_items
        self.n_labels = len(used)
        self.n_patients = len({e["patient_id"] for e in used if e["patient_id"]}) + sum(1 for e in used
                                                                                     if not e["patient_id"])
        logger.info("classification data from %s: task %s, %d output(s), %d/%d/%d train/val/test entries; label "
                    "budget: %d labels (training + validation) of %d patients, label fraction %s of %d labelled "
                    "entries", self.source, self.task, self.num_outputs, len(self.train_items), len(self.val_items),
                    len(self.test_items), self.n_labels, self.n_patients, self.label_fraction,
                    len(training) + len(validation))

    def _check_patient_overlap(self, labelled: list, policy: str) -> None:
        if policy not in ("warn", "error", "ignore"):
            raise ValueError(f"patient_overlap must be 'warn', 'error' or 'ignore', got {policy!r}")
        if policy == "ignore" or not self.test_items:
            return
        seen = {str(e.get("patient_id")) for e in labelled if e.get("patient_id")}
        shared = sorted({str(e["patient_id"]) for e in self.test_items if e.get("patient_id") and
                         str(e["patient_id"]) in seen})
        if not shared:
            return
        n_test = len({str(e["patient_id"]) for e in self.test_items if e.get("patient_id")})
        msg = (f"'{self.source}': {len(shared)} of the {n_test} test patients also have training or validation "
               f"entries (e.g. {shared[:3]}), so test AUCs would be optimistic; split by patient (python -m "
               f"monai_cxrssl split) and check with python -m monai_cxrssl leakage")
        if policy == "error":
            raise DatalistError(msg + "; or set patient_overlap warn")
        logger.warning("%s (patient_overlap error refuses this)", msg)

    @staticmethod
    def _with_ids(items):
        return [{"patient_id": "", **e} for e in items]  # every entry has the key (empty: unknown)

    def _usable(self, col: np.ndarray) -> bool:
        """Can this output (or class) be validated on these targets: a positive and a negative example."""
        col = col[~np.isnan(col)]
        return bool((col == 1).any() and (col == 0).any())

    def _carve_validation(self, labelled: list, what: str) -> tuple[list, list]:
        """Training and validation entries from the labelled ones: :func:`patient_split`, then patients
        moved to validation until every output can be validated (see ``val_fraction``)."""
        split = patient_split(labelled, val_fraction=self.val_fraction, test_fraction=0.0, seed=self.seed,
                              stratify_key=self.label_key)
        patients = [e["patient_id"] or f"#{i}" for i, e in enumerate(labelled)]
        in_val = np.zeros(len(labelled), dtype=bool)
        val_ids = {id(e) for e in split["validation"]}
        in_val[[i for i, e in enumerate(labelled) if id(e) in val_ids]] = True
        y = check_targets(labelled, self.task, self.num_outputs, self.uncertain, f"{self.source}:labelled")
        cols = range(y.shape[1])  # multi-class: one-hot columns, a class with its negatives in the others
        names = self._output_names
        order = np.random.default_rng(self.seed).permutation(len(labelled))
        members: dict[str, list[int]] = {}
        for i in order:
            members.setdefault(patients[i], []).append(int(i))
        for k in cols:
            if not self._usable(y[:, k]):
                continue  # not even the labelled entries have both: the training check reports it
            for value in (1.0, 0.0):
                if (y[in_val, k] == value).any():
                    continue
                # the smallest training patient with that value whose move keeps one in training
                candidates = sorted((len(idx), j, p) for j, (p, idx) in enumerate(members.items())
                                    if not in_val[idx[0]] and (y[idx, k] == value).any()
                                    and ((y[~in_val, k] == value).sum() - (y[idx, k] == value).sum()) >= 1)
                if candidates:
                    in_val[members[candidates[0][2]]] = True
        unusable = [names[k] if k < len(names) else str(k) for k in cols
                    if self._usable(y[:, k]) and not (self._usable(y[in_val, k]) and self._usable(y[~in_val, k]))]
        if unusable and (self.task != "multilabel" or len(unusable) == sum(self._usable(y[:, k]) for k in cols)):
            raise DatalistError(
                f"{what}: the {len(labelled)} labelled entries ({len(members)} patients) cannot give both a training "
                f"and a validation set with a positive and a negative example of {unusable}. Raise label_fraction, "
                "or set val_fraction 0 (no validation: a fixed schedule, the model of the last epoch is kept)")
        if unusable:
            logger.warning("%s: the validation set has no positive or no negative example of %s; the validation "
                           "AUC leaves them out", what, unusable)
        train = [e for e, v in zip(labelled, in_val) if not v]
        val = [e for e, v in zip(labelled, in_val) if v]
        logger.info("validation: %d of the %d labelled entries (%d of %d patients), drawn from the label budget "
                    "(val_fraction=%s)", len(val), len(labelled), len({patients[i] for i in np.flatnonzero(in_val)}),
                    len(members), self.val_fraction)
        return train, val

    @property
    def _output_names(self) -> list:
        """A name per output column: the classes, or for a binary task its positive class."""
        return self.classes if self.task != "binary" else [self.classes[-1] if self.classes else "positive"]

    def _check_validation_list(self) -> None:
        """The datalist's own validation list must hold a positive and a negative of each output: an AUC needs both
        (multi-label: outputs without them are left out with a warning; none usable is an error)."""
        y = check_targets(self.val_items, self.task, self.num_outputs, self.uncertain, f"{self.source}:validation")
        names = self._output_names
        bad = [names[k] if k < len(names) else str(k) for k in range(y.shape[1]) if not self._usable(y[:, k])]
        if bad and (self.task != "multilabel" or len(bad) == y.shape[1]):
            raise DatalistError(
                f"'{self.source}': the validation list ({len(self.val_items)} entries) lacks a positive or a negative "
                f"example of {bad}, so its AUC is undefined and no epoch could be chosen on it; add such entries to "
                f"the validation list, or set val_fraction 0 (no validation: the model of the last epoch is kept)")
        if bad:
            logger.warning("'%s': the validation list has no positive or no negative example of %s; the validation "
                           "AUC leaves them out", self.source, bad)

    def _check(self, items, split, check_files, allow_empty=False):
        if not items:
            if allow_empty:
                return []
            raise DatalistError(f"'{self.source}': the {split} list is empty")
        check_datalist(items, required_keys=("image", self.label_key), check_files=check_files,
                       source=f"{self.source}:{split}")
        check_targets(items, self.task, self.num_outputs, self.uncertain, f"{self.source}:{split}")
        return self._with_ids(items)

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
