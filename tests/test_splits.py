"""Patient-level splits, leakage reports and nested label fractions."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest

from monai_cxrssl.data.datalist import SPLIT_KEYS, datalist_from_class_folders, datalist_from_csv
from monai_cxrssl.data.splits import format_leakage_report, label_fraction, leakage_report, patient_split
from monai_cxrssl.exceptions import DatalistError

SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def kermany(kermany_dir):
    return datalist_from_class_folders(kermany_dir)


@pytest.fixture(scope="module")
def nih(nih_dir):
    return datalist_from_csv(
        nih_dir / "labels.csv", labels_col="finding_labels", patient_col="patient_id", split_col="split"
    )


def _images(entries):
    return [e["image"] for e in entries]


def _all(datalist):
    return [e for k in SPLIT_KEYS for e in datalist[k]]


# ----------------------------------------------------------------------------------------------
# leakage
# ----------------------------------------------------------------------------------------------


def test_nih_folder_split_leaks_30_patients(nih):
    report = leakage_report(nih)
    assert report["n_patients"] == 264
    assert report["n_patients_leaking"] == 30
    assert len(report["patients"]) == 30
    assert report["pairs"] == {"training/validation": 15, "training/test": 8, "validation/test": 9}
    assert report["patients"]["165"] == ["training", "validation", "test"]
    assert report["splits"]["training"] == {"n_items": 600, "n_patients": 165}
    text = format_leakage_report(report, max_patients=3)
    assert "30 of 264 patients" in text and "training/validation: 15" in text and "... and 27 more" in text


def test_leakage_report_small():
    datalist = {
        "classes": ["a"],
        "training": [{"image": "1", "patient_id": "p"}, {"image": "2", "patient_id": "q"}, {"image": "3"}],
        "test": [{"image": "4", "patient_id": "p"}],
    }
    report = leakage_report(datalist)
    assert report["patients"] == {"p": ["training", "test"]}
    assert report["pairs"] == {"training/test": 1}
    assert report["n_items_leaking"] == 2 and report["n_items_without_group"] == 1
    assert "no leakage" in format_leakage_report(leakage_report({"training": datalist["training"]}))
    with pytest.raises(DatalistError, match="no list of entries"):
        leakage_report({"classes": ["a"]})


# ----------------------------------------------------------------------------------------------
# patient_split
# ----------------------------------------------------------------------------------------------


def test_patient_split_kermany(kermany):
    items = _all(kermany)
    overall = np.mean([e["label"] for e in items])
    draws = []
    for seed in (0, 1):
        splits = patient_split(items, val_fraction=0.1, test_fraction=0.1, seed=seed)
        assert leakage_report(splits)["n_patients_leaking"] == 0
        assert sorted(_images(_all(splits))) == sorted(_images(items))
        for key, fraction in zip(SPLIT_KEYS, (0.8, 0.1, 0.1)):
            assert abs(len(splits[key]) / len(items) - fraction) < 0.01, key
            assert abs(np.mean([e["label"] for e in splits[key]]) - overall) < 0.01, key
        draws.append(set(_images(splits["test"])))
    assert draws[0] != draws[1]
    assert _images(patient_split(items, seed=0)["test"]) == _images(patient_split(items, seed=0)["test"])


def test_patient_split_nih_multilabel(nih):
    items = _all(nih)
    splits = patient_split(items, val_fraction=0.1, test_fraction=0.1, seed=0)
    assert leakage_report(splits)["n_patients_leaking"] == 0
    for key, fraction in zip(SPLIT_KEYS, (0.8, 0.1, 0.1)):
        assert abs(len(splits[key]) / len(items) - fraction) < 0.03, key
    # the common findings are spread (a few rare ones sit in one or two large patients only)
    positives = {k: np.array([e["labels"] for e in splits[k]]).sum(0) for k in SPLIT_KEYS}
    for j in (nih["classes"].index("Effusion"), nih["classes"].index("Infiltration")):
        assert positives["validation"][j] > 5 and positives["test"][j] > 5


def test_patient_split_groups_and_fractions(caplog):
    items = [{"image": f"{i}", "label": i % 2, "patient_id": f"p{i // 4}"} for i in range(200)]
    splits = patient_split(items, val_fraction=0.2, test_fraction=0.0, seed=3)
    assert splits["test"] == [] and len(splits["validation"]) == 40
    assert Counter(e["label"] for e in splits["validation"]) == {0: 20, 1: 20}
    assert not {e["patient_id"] for e in splits["training"]} & {e["patient_id"] for e in splits["validation"]}
    assert splits["training"][0] is items[0]  # the entries themselves, in order

    no_ids = [{"image": f"{i}", "label": i % 2} for i in range(50)]
    with caplog.at_level(logging.WARNING):
        splits = patient_split(no_ids, val_fraction=0.2, test_fraction=0.2)
    assert "50 of 50 entries have no 'patient_id'" in caplog.text
    assert [len(splits[k]) for k in SPLIT_KEYS] == [30, 10, 10]


def test_patient_split_errors():
    with pytest.raises(ValueError, match="sum < 1"):
        patient_split([{"image": "a"}], val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match=">= 0"):
        patient_split([{"image": "a"}], val_fraction=-0.1)
    with pytest.raises(DatalistError, match="empty"):
        patient_split([])


# ----------------------------------------------------------------------------------------------
# label_fraction
# ----------------------------------------------------------------------------------------------


def _check_nested(items, seeds, **kwargs):
    """Draws at 1 % / 10 % / 100 % per seed; asserts nesting and returns the 1 % draws."""
    small = []
    for seed in seeds:
        draws = [set(_images(label_fraction(items, f, seed=seed, **kwargs))) for f in (0.01, 0.1, 1.0)]
        assert draws[0] <= draws[1] <= draws[2] == set(_images(items)), seed
        assert len(draws[0]) < len(draws[1]) < len(draws[2])
        small.append(draws[0])
    assert len({frozenset(s) for s in small}) == len(seeds)  # seeds differ
    return small


def test_label_fraction_kermany(kermany):
    items = kermany["training"]
    _check_nested(items, SEEDS)
    for seed in SEEDS:
        one = label_fraction(items, 0.01, seed=seed)
        assert Counter(e["label"] for e in one) == {0: 13, 1: 39}  # round(1 % of 1341 / 3875)
        assert label_fraction(items, 0.01, seed=seed) == one  # deterministic
    assert label_fraction(items, 1.0) == items


def test_label_fraction_every_class_present():
    items = [{"image": f"{i}", "label": 0} for i in range(500)] + [{"image": "rare", "label": 1}]
    one = label_fraction(items, 0.01, seed=5)
    assert Counter(e["label"] for e in one) == {0: 5, 1: 1}


def test_label_fraction_nih_multilabel(nih):
    items = nih["training"]
    present = np.array([e["labels"] for e in items]).sum(0) > 0
    for draw in _check_nested(items, SEEDS):
        chosen = [e for e in items if e["image"] in draw]
        covered = np.array([e["labels"] for e in chosen]).sum(0) > 0
        assert (covered == present).all()  # every finding with a positive, even at 1 %
        assert any(not any(e["labels"]) for e in chosen)  # and normals
        assert len(chosen) <= 0.01 * len(items) + len(nih["classes"]) + 1


def test_label_fraction_by_patient(nih):
    items = nih["training"]
    _check_nested(items, SEEDS, group_key="patient_id")
    draw = label_fraction(items, 0.1, seed=0, group_key="patient_id")
    drawn = {e["patient_id"] for e in draw}
    assert sorted(_images(draw)) == sorted(e["image"] for e in items if e["patient_id"] in drawn)


def test_label_fraction_errors():
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        label_fraction([{"image": "a"}], 0.0)
    with pytest.raises(ValueError):
        label_fraction([{"image": "a"}], 1.5)
    with pytest.raises(DatalistError, match="empty"):
        label_fraction([], 0.5)
    assert label_fraction([{"image": "a"}], 0.01, stratify_key=None) == [{"image": "a"}]
