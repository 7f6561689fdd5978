"""The label budget of a classification run: every label it uses (training and validation) is counted
and drawn from the label fraction; the validation set can validate every output."""

import json
import logging

import numpy as np
import pytest

from monai_cxrssl.data import ClassificationData
from monai_cxrssl.exceptions import DatalistError


def _datalist(tmp_path, n_patients=400, per_patient=(1, 2), positive_rate=0.3, validation=0, multilabel=False,
              seed=0, name="dl.json"):
    """A binary (or 3-finding multi-label) datalist of fake paths, several images per patient."""
    rng = np.random.default_rng(seed)
    entries = []
    for p in range(n_patients):
        if multilabel:
            label = [int(rng.random() < 0.3), int(rng.random() < 0.2), int(p < 2)]  # finding 2: 2 patients only
        else:
            label = int(rng.random() < positive_rate)
        for k in range(int(rng.integers(per_patient[0], per_patient[1] + 1))):
            entries.append({"image": f"/nowhere/p{p}_{k}.png", "patient_id": f"p{p}",
                            ("labels" if multilabel else "label"): label})
    dl = {"task": "multilabel" if multilabel else "binary", "classes": ["a", "b", "c"] if multilabel else ["no", "yes"],
          "training": entries[validation:], "validation": entries[:validation],
          "test": [{"image": f"/nowhere/t{i}.png", "patient_id": f"t{i}", "label": i % 2} if not multilabel else
                   {"image": f"/nowhere/t{i}.png", "patient_id": f"t{i}", "labels": [i % 2, (i // 2) % 2, i % 2]}
                   for i in range(20)]}
    path = tmp_path / name
    path.write_text(json.dumps(dl))
    return path, dl


def _images(items):
    return {e["image"] for e in items}


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.2, 1.0])
@pytest.mark.parametrize("seed", [0, 3])
def test_every_label_a_run_uses_is_within_its_fraction(tmp_path, fraction, seed):
    path, dl = _datalist(tmp_path)
    pool = dl["training"] + dl["validation"]
    data = ClassificationData(datalist=path, label_fraction=fraction, seed=seed, check_files=False)
    used = data.train_items + data.val_items
    assert data.n_labels == len(data.train_items) + len(data.val_items) == len(used)
    # the draw takes round(fraction * n) of each class, at least one: the budget plus at most one per class
    n_classes = 2
    assert data.n_labels <= round(fraction * len(pool)) + n_classes
    assert data.n_labels >= min(len(pool), round(fraction * len(pool)) - n_classes)
    assert data.n_patients == len({e["patient_id"] for e in used})
    # validation comes from the budget, and no patient is on both sides
    assert _images(data.val_items) <= _images(pool) and not (_images(data.train_items) & _images(data.val_items))
    assert not ({e["patient_id"] for e in data.train_items} & {e["patient_id"] for e in data.val_items})
    # both sides can be scored: a positive and a negative each
    for items in (data.train_items, data.val_items):
        assert {e["label"] for e in items} == {0, 1}
    assert _images(data.test_items).isdisjoint(_images(used))


def test_draws_are_nested_and_the_validation_list_is_part_of_the_budget(tmp_path):
    path, dl = _datalist(tmp_path, validation=60)
    small, large = (ClassificationData(datalist=path, label_fraction=f, seed=1, check_files=False) for f in (0.05, 0.3))
    assert _images(small.train_items + small.val_items) < _images(large.train_items + large.val_items)
    # below 1 the datalist's validation list is pooled with its training list, not used whole on top of the budget
    assert small.n_labels < len(dl["validation"])
    # at 1 the datalist's own split is kept as it is
    full = ClassificationData(datalist=path, check_files=False)
    assert _images(full.val_items) == _images(dl["validation"]) and full.n_labels == len(dl["training"]) + 60


def test_no_validation_spends_every_label_on_training(tmp_path, caplog):
    path, _ = _datalist(tmp_path)
    with caplog.at_level(logging.INFO, logger="monai_cxrssl.data.classification"):
        data = ClassificationData(datalist=path, label_fraction=0.05, val_fraction=0, check_files=False)
    assert data.val_items == [] and data.n_labels == len(data.train_items)
    assert "no validation" in caplog.text and "label budget" in caplog.text
    # a datalist's own validation list then trains too
    path, dl = _datalist(tmp_path, validation=30, name="with_val.json")
    data = ClassificationData(datalist=path, val_fraction=0, check_files=False)
    assert data.val_items == [] and data.n_labels == len(dl["training"]) + 30


def test_a_budget_too_small_to_validate_is_an_error_that_says_what_to_do(tmp_path):
    # 2 positive patients: one must train and one validate; with one positive patient it cannot
    path, _ = _datalist(tmp_path, n_patients=60, per_patient=(1, 1), positive_rate=0.0)
    dl = json.loads(path.read_text())
    dl["training"][0]["label"] = 1
    path.write_text(json.dumps(dl))
    with pytest.raises(DatalistError, match=r"cannot give both a training and a validation set.*val_fraction 0"):
        ClassificationData(datalist=path, check_files=False)
    # the same budget with no validation trains (every label used for training)
    assert ClassificationData(datalist=path, val_fraction=0, check_files=False).n_labels == 60
    dl["training"][1]["label"] = 1
    path.write_text(json.dumps(dl))
    data = ClassificationData(datalist=path, check_files=False)  # patients moved until both sides have a positive
    assert [e["label"] for e in data.val_items].count(1) == 1 and [e["label"] for e in data.train_items].count(1) == 1


def test_a_datalist_validation_list_with_one_class_is_an_error_before_training(tmp_path):
    # its AUC is undefined: no epoch could be chosen on it (the first would be kept as "best")
    path, _ = _datalist(tmp_path, n_patients=100, validation=10)
    dl = json.loads(path.read_text())
    for e in dl["validation"]:
        e["label"] = 0
    path.write_text(json.dumps(dl))
    with pytest.raises(DatalistError, match=r"validation list \(10 entries\) lacks a positive or a negative example "
                                            r"of \['yes'\].*val_fraction 0"):
        ClassificationData(datalist=path, check_files=False)
    assert ClassificationData(datalist=path, val_fraction=0, check_files=False).val_items == []


def test_multilabel_validation_leaves_out_a_finding_it_cannot_validate(tmp_path, caplog):
    path, _ = _datalist(tmp_path, n_patients=200, multilabel=True)
    dl = json.loads(path.read_text())
    for e in dl["training"]:  # finding 'c' in one patient only: it can train, not validate
        e["labels"][2] = int(e["patient_id"] == "p0")
    path.write_text(json.dumps(dl))
    with caplog.at_level(logging.WARNING, logger="monai_cxrssl.data.classification"):
        data = ClassificationData(datalist=path, check_files=False)
    assert "no positive or no negative example of ['c']" in caplog.text
    y = data.targets("val")
    assert y[:, 0].min() == 0 and y[:, 0].max() == 1 and y[:, 1].max() == 1


@pytest.mark.shared_data
def test_kermany_one_percent_counts_its_validation_labels(kermany_dir):
    data = ClassificationData(dataset_dir=kermany_dir, label_fraction=0.01, seed=0, check_files=False)
    n_pool = 5216  # the official training split
    assert len(data.val_items) >= 2 and data.n_labels == len(data.train_items) + len(data.val_items)
    assert data.n_labels <= round(0.01 * n_pool) + 2  # was 47 training + 521 validation before the budget counted


def test_test_patients_seen_in_training_are_warned_about_or_refused(tmp_path, caplog):
    path, dl = _datalist(tmp_path, n_patients=100)
    dl["test"][0]["patient_id"] = dl["training"][0]["patient_id"]  # one test patient also trains
    path.write_text(json.dumps(dl))
    with caplog.at_level(logging.WARNING, logger="monai_cxrssl.data.classification"):
        ClassificationData(datalist=path, check_files=False)
    assert "1 of the 20 test patients also have training or validation entries" in caplog.text
    with pytest.raises(DatalistError, match=r"1 of the 20 test patients .*optimistic"):
        ClassificationData(datalist=path, check_files=False, patient_overlap="error")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_cxrssl.data.classification"):
        ClassificationData(datalist=_datalist(tmp_path, n_patients=100, name="clean.json")[0], check_files=False,
                           patient_overlap="error")
    assert "test patients" not in caplog.text
