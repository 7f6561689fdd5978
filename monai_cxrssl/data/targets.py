"""Classification targets from datalist entries: binary, multi-class or multi-label.

Every task becomes one float vector per image, of length ``num_outputs``:

- ``binary``: ``[label]`` from ``entry["label"]`` (0 or 1);
- ``multiclass``: the one-hot vector of ``entry["label"]`` (a class index);
- ``multilabel``: ``entry["labels"]``, one value per finding: 1 positive, 0 negative,
  ``None``/NaN unknown, ``-1`` uncertain (CheXpert convention), mapped by the uncertainty
  policy: ``ones`` (U-Ones), ``zeros`` (U-Zeros) or ``ignore`` (unknown).

Unknown entries are NaN: losses and metrics leave them out (per-finding masking).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch

from monai.transforms import MapTransform

from monai_cxrssl.data.datalist import LABELLED_TASKS as TASKS
from monai_cxrssl.exceptions import DatalistError

__all__ = ["TASKS", "UNCERTAIN_POLICIES", "target_vector", "check_targets", "infer_task", "CXRTargetd",
           "positive_weights"]

UNCERTAIN_POLICIES = ("ones", "zeros", "ignore")


def _label_key(task: str) -> str:
    return "labels" if task == "multilabel" else "label"


def target_vector(entry: Mapping, task: str, num_outputs: int, uncertain: str = "ignore") -> np.ndarray:
    """The float32 target vector of one entry (see the module docstring).

    Raises:
        DatalistError: missing label key, or a value that does not fit the task.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    key = _label_key(task)
    if key not in entry:
        raise DatalistError(f"entry has no '{key}' (needed for a {task} task): {dict(entry)}")
    value = entry[key]
    if task == "binary":
        if value not in (0, 1, 0.0, 1.0, True, False):
            raise DatalistError(f"binary '{key}' must be 0 or 1, got {value!r} in {dict(entry)}")
        return np.array([float(value)], dtype=np.float32)
    if task == "multiclass":
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < num_outputs:
            raise DatalistError(f"multiclass '{key}' must be a class index in [0, {num_outputs}), got {value!r} "
                                f"in {dict(entry)}")
        out = np.zeros(num_outputs, dtype=np.float32)
        out[int(value)] = 1.0
        return out
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != num_outputs:
        raise DatalistError(f"multilabel '{key}' must be a list of {num_outputs} values, got {value!r} in {dict(entry)}")
    out = np.empty(num_outputs, dtype=np.float32)
    for i, v in enumerate(value):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out[i] = np.nan
        elif v == -1:
            out[i] = {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}[uncertain]
        elif v in (0, 1):
            out[i] = float(v)
        else:
            raise DatalistError(f"multilabel value {v!r} (finding {i}) must be 0, 1, -1 (uncertain) or null "
                                f"in {dict(entry)}")
    return out


def _is_index(value) -> bool:
    return isinstance(value, (bool, int, np.integer)) or (isinstance(value, float) and value.is_integer())


def _is_vector(value) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def infer_task(entries: Sequence[Mapping], classes: Sequence[str] | None = None,
               source: str = "datalist") -> tuple[str, list[str], str]:
    """The task and class names of a datalist that does not state its ``task``, from its labels.

    - a ``labels`` vector, or a list under ``label``: ``multilabel``, one output per value;
    - ``label`` integers 0/1 only: ``binary`` (unless more than two ``classes`` are named);
    - ``label`` integers with a larger class index: ``multiclass`` with ``max + 1`` classes.

    Class names come from ``classes`` when given; otherwise from the labels: ``"0"``, ``"1"``, ...
    for class indices and ``"finding_0"``, ... for the values of a multi-label vector.

    Args:
        entries: every entry of the datalist (all splits: the test set may hold a class that a
            small training set lacks).
        classes: the datalist's class names, if any.
        source: named in errors.

    Returns:
        ``(task, classes, reason)``; ``reason`` says in words what the task was inferred from.

    Raises:
        DatalistError: no entry has a label, or a label that fits no task (a class name, a
            negative index), naming the entry.
    """
    classes = list(classes or [])
    labelled = [(i, e) for i, e in enumerate(entries) if e.get("labels") is not None or e.get("label") is not None]
    if not labelled:
        raise DatalistError(f"{source}: no entry has a 'label' or 'labels', so the task cannot be inferred; "
                            f"label the entries (or pass a datalist with 'task' and 'classes')")
    vectors = [(i, e.get("labels", e.get("label"))) for i, e in labelled
               if e.get("labels") is not None or _is_vector(e.get("label"))]
    if vectors:
        i, first = vectors[0]
        if not _is_vector(first):
            raise DatalistError(f"{source}: entry {i}: 'labels' must be a list of 0/1 values per finding, got {first!r}")
        k = len(first)
        names = classes if len(classes) == k else [f"finding_{j}" for j in range(k)]
        return "multilabel", names, f"a vector of {k} values per image in {len(vectors)} entries"
    for i, e in labelled:
        v = e["label"]
        if not _is_index(v) or int(v) < 0:
            raise DatalistError(
                f"{source}: entry {i}: cannot infer the task from 'label' {v!r}; expected 0/1 (binary), a class "
                f"index 0, 1, 2, ... (multiclass) or a list of 0/1 values per finding (multilabel); "
                f"or set the task and give class indices with the datalist's 'classes'")
    top = max(int(e["label"]) for _, e in labelled)
    if top <= 1 and len(classes) <= 2:
        names = classes if len(classes) == 2 else ["0", "1"]
        return "binary", names, f"'label' is 0 or 1 in all {len(labelled)} labelled entries"
    n = max(top + 1, len(classes))
    names = classes if len(classes) == n else [str(j) for j in range(n)]
    return "multiclass", names, f"'label' is a class index up to {top} in {len(labelled)} labelled entries"


def check_targets(items: Sequence[Mapping], task: str, num_outputs: int, uncertain: str = "ignore",
                  source: str = "datalist") -> np.ndarray:
    """Targets of every entry, checked up front; ``(N, num_outputs)``.

    Raises:
        DatalistError: naming the first bad entry (by index) and what was expected; or when an
            output has no positive or no negative example (nothing to learn or to evaluate).
    """
    rows = []
    for i, e in enumerate(items):
        try:
            rows.append(target_vector(e, task, num_outputs, uncertain))
        except DatalistError as err:
            raise DatalistError(f"{source}: entry {i}: {err}") from None
    if not rows:
        raise DatalistError(f"{source} is empty")
    y = np.stack(rows)
    return y


def positive_weights(targets: np.ndarray) -> torch.Tensor:
    """Per-output ``negatives / positives`` over known labels (``pos_weight`` of BCE), 1 where undefined."""
    known = ~np.isnan(targets)
    pos = np.where(known, targets == 1, False).sum(0)
    neg = np.where(known, targets == 0, False).sum(0)
    w = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return torch.as_tensor(w, dtype=torch.float32)


class CXRTargetd(MapTransform):
    """Write the target vector of an entry under ``output_key`` (see :func:`target_vector`).

    Args:
        task: ``binary``, ``multiclass`` or ``multilabel``.
        num_outputs: length of the target vector.
        uncertain: policy for uncertain (-1) multi-label values.
        output_key: where the float32 tensor goes.
    """

    def __init__(self, task: str, num_outputs: int, uncertain: str = "ignore", output_key: str = "target"):
        super().__init__(keys=[_label_key(task)])
        self.task, self.num_outputs, self.uncertain, self.output_key = task, int(num_outputs), uncertain, output_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        d[self.output_key] = torch.as_tensor(target_vector(d, self.task, self.num_outputs, self.uncertain))
        return d
