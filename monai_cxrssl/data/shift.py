"""A second test set for a trained classifier: another dataset's entries, labels mapped to the model's classes.

Used by the classifier bundle's ``configs/evaluate_shift.json`` (distribution-shift evaluation without
retraining). The mapping goes from the other dataset's class or finding names to the model's:

- **binary / multi-class**: every class of the other dataset must map to a model class, or to ``None``
  to leave its images out (counted and logged): an image is never silently relabelled or dropped.
  Names that are equal (ignoring case) map by default;
- **multi-label**: each mapped finding fills the model output it maps to; model outputs without a
  counterpart are unknown (NaN) for every image and left out of the AUCs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

from monai_cxrssl.data.datalist import check_datalist, split_keys
from monai_cxrssl.data.sources import resolve_datalist
from monai_cxrssl.data.targets import TASKS
from monai_cxrssl.exceptions import DatalistError

__all__ = ["resolve_label_map", "shifted_test_items"]

logger = logging.getLogger(__name__)


def resolve_label_map(source_classes: Sequence[str], model_classes: Sequence[str],
                      label_map: Mapping[str, str | None] | None = None, source: str = "the shifted dataset") -> dict:
    """``{source class: model class or None}``: ``label_map`` first, then equal names (ignoring case).

    Raises:
        DatalistError: a ``label_map`` key that is not a class of the source, or a value that is not a
            model class.
    """
    label_map = dict(label_map or {})
    for k, v in label_map.items():
        if k not in source_classes:
            raise DatalistError(f"label_map: '{k}' is not a class of {source} (its classes: {list(source_classes)})")
        if v is not None and v not in model_classes:
            raise DatalistError(f"label_map: '{k}' -> '{v}', but '{v}' is not a class of the model "
                                f"(its classes: {list(model_classes)})")
    lower = {c.lower(): c for c in model_classes}
    return {c: label_map[c] if c in label_map else lower.get(c.lower()) for c in source_classes}


def shifted_test_items(model_task: str, model_classes: Sequence[str], dataset_dir: str | os.PathLike | None = None,
                       datalist: str | os.PathLike | None = None, split: str = "test",
                       label_map: Mapping[str, str | None] | None = None, check_files: bool = True,
                       demo_dir: str | os.PathLike | None = None) -> list[dict]:
    """The ``split`` entries of another dataset with labels in the trained model's class space.

    Args:
        model_task: the model's task (``binary``, ``multiclass``, ``multilabel``).
        model_classes: the model's classes (binary: ``[negative, positive]``) or findings.
        dataset_dir, datalist: the other dataset (as for the classifier bundle).
        split: which list of it to use (``test`` by default; ``all`` for every list).
        label_map: ``{other class: model class or None}``; see the module docstring.
        check_files: check that every image exists.
        demo_dir: without ``dataset_dir`` and ``datalist``, a second SYNTHETIC demo set (other
            patients: seed 1) written there is the other dataset, so that the bundle's defaults
            run after a demo training run; logged as synthetic.

    Raises:
        DatalistError: no such data or an empty list; a different kind of task; a class without a
            mapping (binary/multi-class); no shared finding (multi-label); an entry without its label.
    """
    if model_task not in TASKS:
        raise DatalistError(f"model task {model_task!r} is not one of {TASKS}")
    if not dataset_dir and not datalist and demo_dir is None:
        raise DatalistError("shift evaluation: set shift_dataset_dir or shift_datalist (the second test set)")
    dl, source = resolve_datalist(dataset_dir, datalist, demo_dir, demo_seed=1)
    if split == "all":
        items = [e for k in split_keys(dl) for e in dl[k]]
    else:
        items = list(dl.get(split) or [])
    if not items:
        raise DatalistError(f"'{source}' has no entries in its '{split}' list (the shifted test set)")
    src_task, src_classes = dl.get("task"), list(dl.get("classes") or [])
    single = ("binary", "multiclass")
    if (model_task in single) != (src_task in single):
        raise DatalistError(f"'{source}' is a {src_task} dataset; the model is {model_task}: map a multi-label "
                            f"dataset to a multi-label model, a single-label one to a single-label model")
    key = "labels" if src_task == "multilabel" else "label"
    check_datalist(items, required_keys=("image", key), check_files=check_files, source=f"{source}:{split}")
    mapping = resolve_label_map(src_classes, model_classes, label_map, f"'{source}'")
    out: list[dict] = []
    if model_task in single:
        unmapped = [c for c, m in mapping.items() if m is None and c not in (label_map or {})]
        if unmapped:
            raise DatalistError(
                f"classes {unmapped} of '{source}' have no counterpart among the model's classes {list(model_classes)}: "
                f"give label_map, e.g. {{'{unmapped[0]}': '{model_classes[-1]}'}}, or map them to null to leave "
                f"their images out")
        dropped = 0
        for e in items:
            m = mapping[src_classes[int(e["label"])]]
            if m is None:
                dropped += 1
                continue
            label = list(model_classes).index(m)
            out.append({"patient_id": "", **e, "label": label})
        if dropped:
            logger.info("shifted test set '%s': left out %d image(s) of classes mapped to null", source, dropped)
        if not out:
            raise DatalistError(f"every image of '{source}:{split}' was left out by the label map")
    else:
        shared = {c: m for c, m in mapping.items() if m is not None}
        if not shared:
            raise DatalistError(f"no finding of '{source}' ({src_classes}) maps to the model's findings "
                                f"{list(model_classes)}: give label_map")
        for e in items:
            labels = [None] * len(model_classes)
            for j, c in enumerate(src_classes):
                if c in shared:
                    labels[list(model_classes).index(shared[c])] = e["labels"][j]
            out.append({"patient_id": "", **e, "labels": labels})
        missing = [c for c in model_classes if c not in shared.values()]
        if missing:
            logger.info("shifted test set '%s': model outputs %s have no counterpart there (left out)", source, missing)
    logger.info("shifted test set: %d image(s) from '%s' (%s list); label map %s", len(out), source, split,
                mapping)
    return out
