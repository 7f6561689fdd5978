"""Distribution-shift evaluation: a second test set mapped to a model's classes, and the AUC drop with its CI."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from monai_cxrssl.data import resolve_label_map, shifted_test_items, write_datalist
from monai_cxrssl.evaluation import independent_bootstrap_auc_diff, shift_report
from monai_cxrssl.exceptions import DatalistError


def _datalist(tmp_path, task, classes, test):
    for e in test:
        e["image"] = str(tmp_path / e["image"])
        Path(e["image"]).touch()
    return write_datalist({"task": task, "classes": classes, "training": test, "test": test}, tmp_path / "other.json")


def test_binary_map_relabels_to_the_model_classes_and_null_leaves_images_out_with_a_count(tmp_path, caplog):
    test = [{"image": f"{i}.png", "label": i % 3, "patient_id": f"p{i}"} for i in range(9)]
    path = _datalist(tmp_path, "multiclass", ["healthy", "effusion", "pneumonia"], test)
    caplog.set_level(logging.INFO, logger="monai_cxrssl.data.shift")
    items = shifted_test_items("binary", ["normal", "pneumonia"], datalist=path,
                               label_map={"healthy": "normal", "effusion": None})
    assert [e["label"] for e in items] == [0, 1, 0, 1, 0, 1]  # healthy -> 0, pneumonia (same name) -> 1
    assert [e["patient_id"] for e in items] == ["p0", "p2", "p3", "p5", "p6", "p8"]
    assert "left out 3 image(s)" in caplog.text


def test_an_unmapped_class_or_a_wrong_target_is_an_error_naming_it(tmp_path):
    test = [{"image": f"{i}.png", "label": i % 2} for i in range(4)]
    path = _datalist(tmp_path, "binary", ["0_normal", "1_abnormal"], test)
    with pytest.raises(DatalistError, match="0_normal.*label_map"):
        shifted_test_items("binary", ["NORMAL", "PNEUMONIA"], datalist=path)
    with pytest.raises(DatalistError, match="'PNEUMONIA_X' is not a class of the model"):
        shifted_test_items("binary", ["NORMAL", "PNEUMONIA"], datalist=path, label_map={"1_abnormal": "PNEUMONIA_X"})
    with pytest.raises(DatalistError, match="is a binary dataset; the model is multilabel"):
        shifted_test_items("multilabel", ["a", "b"], datalist=path)
    with pytest.raises(DatalistError, match="no entries in its 'validation' list"):
        shifted_test_items("binary", ["NORMAL", "PNEUMONIA"], datalist=path, split="validation",
                           label_map={"0_normal": "NORMAL", "1_abnormal": "PNEUMONIA"})


def test_multilabel_shared_findings_fill_their_outputs_and_the_rest_are_unknown(tmp_path):
    test = [{"image": f"{i}.png", "labels": [i % 2, 1 - i % 2, 1]} for i in range(4)]
    path = _datalist(tmp_path, "multilabel", ["Effusion", "Pneumonia", "Hernia"], test)
    items = shifted_test_items("multilabel", ["pneumonia", "effusion", "cardiomegaly"], datalist=path)
    assert [e["labels"] for e in items] == [[1, 0, None], [0, 1, None], [1, 0, None], [0, 1, None]]
    assert resolve_label_map(["Effusion"], ["effusion"]) == {"Effusion": "effusion"}


def test_independent_bootstrap_of_two_test_sets():
    rng = np.random.default_rng(0)
    y_a = np.tile([0, 1], 40)
    y_b = np.tile([0, 1], 30)
    good = np.clip(0.7 * y_a + 0.3 * rng.random(y_a.size), 0, 1)  # AUC 1 on its own set
    weak = np.clip(0.2 * y_b + 0.8 * rng.random(y_b.size), 0, 1)
    res = independent_bootstrap_auc_diff(y_a, good, y_b, weak, n_resamples=300, seed=1)
    assert res["auc_a"] == pytest.approx(roc_auc_score(y_a, good))
    assert res["auc_b"] == pytest.approx(roc_auc_score(y_b, weak))
    assert res["diff"] == pytest.approx(res["auc_a"] - res["auc_b"])
    assert 0 < res["ci_low"] <= res["diff"] <= res["ci_high"] and res["p_value"] < 0.05
    # the same data on both sides: the difference is centred on 0 (independent resamples, so not exactly 0)
    same = independent_bootstrap_auc_diff(y_b, weak, y_b, weak, n_resamples=300, seed=1)
    assert same["diff"] == 0.0 and same["ci_low"] < 0 < same["ci_high"] and same["p_value"] > 0.5
    # patients: whole groups resampled in each set
    res = independent_bootstrap_auc_diff(y_a, good, y_b, weak, groups_a=np.arange(y_a.size) // 2,
                                         groups_b=np.arange(y_b.size) // 2, n_resamples=100, seed=1)
    assert res["resampling"] == ["group", "group"] and res["n_units"] == [40, 30]


def _predictions(path, y, p, names):
    y, p = np.asarray(y, float).reshape(len(y), -1), np.asarray(p, float).reshape(len(p), -1)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "patient_id"] + [f"prob_{n}" for n in names] + [f"target_{n}" for n in names])
        for i in range(len(y)):
            w.writerow([f"{i}.png", f"p{i // 2}"] + list(p[i]) + ["" if np.isnan(t) else int(t) for t in y[i]])
    return path


def test_shift_report_binary_and_multilabel(tmp_path):
    rng = np.random.default_rng(2)
    y = np.tile([0, 1], 30)
    own = _predictions(tmp_path / "own.csv", y, np.clip(0.6 * y + 0.4 * rng.random(y.size), 0, 1), ["pos"])
    other = _predictions(tmp_path / "other.csv", y, rng.random(y.size), ["pos"])
    rep = shift_report(own, other, output=tmp_path / "shift.json", n_resamples=200)
    assert rep["drop"] == pytest.approx(rep["auc_own"] - rep["auc_shifted"]) and rep["ci_low"] > 0
    assert rep["n_images"] == [60, 60] and rep["n_patients"] == [30, 30] and (tmp_path / "shift.json").is_file()

    # multi-label: a finding unknown in the shifted set is left out of the comparison
    y2 = np.stack([y, 1 - y], axis=1).astype(float)
    y2_other = y2.copy()
    y2_other[:, 1] = np.nan
    p2 = np.clip(0.6 * y2 + 0.4 * rng.random(y2.shape), 0, 1)
    own2 = _predictions(tmp_path / "own2.csv", y2, p2, ["a", "b"])
    other2 = _predictions(tmp_path / "other2.csv", y2_other, rng.random(y2.shape), ["a", "b"])
    rep2 = shift_report(own2, other2, n_resamples=100)
    assert rep2["compared_outputs"] == ["a"] and rep2["excluded_outputs"] == ["b"]
    assert rep2["auc_own"] == pytest.approx(roc_auc_score(y2[:, 0], p2[:, 0]), abs=1e-6)

    bad = _predictions(tmp_path / "bad.csv", y, rng.random(y.size), ["other"])
    with pytest.raises(ValueError, match="has outputs"):
        shift_report(own, bad)
