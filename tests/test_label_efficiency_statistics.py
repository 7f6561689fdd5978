"""The study's statistics (experiments/label_efficiency/statistics.py) on constructed predictions with known answers,
and the table and plot they make (report.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from study_predictions import N_PATIENTS, _labels, _study, _write

from monai_cxrssl.evaluation.stats import bootstrap_auc_ci, paired_bootstrap_auc_diff, seed_averaged_bootstrap
from monai_cxrssl.experiments.label_efficiency import (RunSpec, StudyError, format_per_finding, format_table,
                                                       plot_auc_vs_fraction, study_statistics)


def test_statistics_perfect_vs_noise_and_identical(tmp_path):
    patients, y = _labels()
    rng = np.random.default_rng(0)
    seeds = (0, 1, 2)
    runs = {}
    for s in seeds:
        runs[RunSpec("ssl", "linear", 0.1, s)] = np.clip(0.6 * y + 0.3 * rng.random(y.size), 0, 1)  # perfect
        runs[RunSpec("random", "linear", 0.1, s)] = rng.random(y.size)  # noise
        same = rng.random(y.size)
        runs[RunSpec("ssl", "finetune", 0.1, s)] = same
        runs[RunSpec("random", "finetune", 0.1, s)] = same  # identical predictions
    files = _study(tmp_path, runs, patients, y)
    stats = study_statistics(files, n_resamples=500, seed=3)
    rows = {(r["init"], r["mode"]): r for r in stats["rows"]}
    assert stats["bootstrap"]["resampling"] == "patient" and stats["bootstrap"]["n_units"] == N_PATIENTS
    assert stats["test_set"]["n_images"] == 60 and stats["test_set"]["n_patients"] == N_PATIENTS

    # mean / SD over seeds of the per-seed sklearn AUCs
    for (init, mode), r in rows.items():
        aucs = [roc_auc_score(y, np.round(runs[RunSpec(init, mode, 0.1, s)], 6)) for s in seeds]
        assert r["n_seeds"] == 3 and r["seeds"] == list(seeds)
        assert r["per_seed_auc"] == pytest.approx(aucs, abs=1e-12)
        assert r["auc_mean"] == pytest.approx(np.mean(aucs), abs=1e-12)
        assert r["auc_sd"] == pytest.approx(np.std(aucs, ddof=1), abs=1e-12)
        assert r["ci_low"] <= r["auc_mean"] <= r["ci_high"]
    perfect = rows[("ssl", "linear")]
    assert perfect["auc_mean"] == 1.0 and perfect["auc_sd"] == 0.0 and perfect["ci_low"] == perfect["ci_high"] == 1.0

    # perfect vs noise: the CI of the difference excludes 0, p is the smallest possible
    v = perfect["vs_reference"]
    assert v["diff"] == pytest.approx(1.0 - rows[("random", "linear")]["auc_mean"])
    assert v["ci_low"] > 0.2 and v["p_value"] == pytest.approx(2 / 501)
    assert v["per_seed_diff"] == pytest.approx([1.0 - a for a in rows[("random", "linear")]["per_seed_auc"]])
    # identical predictions: difference 0 on every resample, p = 1
    v = rows[("ssl", "finetune")]["vs_reference"]
    assert v["diff"] == 0.0 and v["ci_low"] == v["ci_high"] == 0.0 and v["p_value"] == 1.0
    assert rows[("random", "linear")]["vs_reference"] is None and stats["notes"] == []

    # the table and the plot
    table = format_table(stats)
    assert table.splitlines()[0].startswith("| init | mode | fraction | n seeds | AUC mean ± SD | 95% CI | Δ vs random")
    assert "| ssl | linear | 0.1 | 3 | 1.000 ± 0.000 | [1.000, 1.000] | +0." in table
    assert "| ssl | finetune | 0.1 | 3 |" in table and "+0.000 [0.000, 0.000] | 1 |" in table
    png = plot_auc_vs_fraction(stats, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_negative_transfer_is_flagged_in_the_rows_notes_and_table(tmp_path):
    """A constructed case: 'wrong_domain' predicts the opposite of the labels, 'random' is informative, 'noisy'
    is indistinguishable from random; only the first is called negative transfer."""
    patients, y = _labels()
    rng = np.random.default_rng(5)
    runs = {}
    for s in (0, 1):
        informative = np.clip(0.25 * y + 0.75 * rng.random(y.size), 0, 1)
        runs[RunSpec("random", "linear", 0.1, s)] = informative
        runs[RunSpec("wrong_domain", "linear", 0.1, s)] = np.clip(0.4 * (1 - y) + 0.6 * rng.random(y.size), 0, 1)
        runs[RunSpec("noisy", "linear", 0.1, s)] = np.clip(informative + rng.normal(0, 0.02, y.size), 0, 1)
        runs[RunSpec("good", "linear", 0.1, s)] = np.clip(0.9 * y + 0.1 * rng.random(y.size), 0, 1)
    stats = study_statistics(_study(tmp_path, runs, patients, y), n_resamples=400, seed=0)
    rows = {r["init"]: r for r in stats["rows"]}
    assert rows["wrong_domain"]["vs_reference"]["ci_high"] < 0
    assert rows["wrong_domain"]["verdict"] == "WORSE: negative transfer"
    assert rows["noisy"]["verdict"] == "no clear difference"
    assert rows["good"]["verdict"] == "better"
    assert rows["random"]["verdict"] is None
    negative = [n for n in stats["notes"] if n.startswith("NEGATIVE TRANSFER")]
    assert len(negative) == 1 and "wrong_domain (linear, fraction 0.1)" in negative[0]
    table = format_table(stats)
    assert "| **WORSE: negative transfer** |" in table and table.count("negative transfer**") == 1
    assert "Note: NEGATIVE TRANSFER: wrong_domain" in table


def test_statistics_one_seed_equal_the_paired_bootstrap_and_resamples_are_shared(tmp_path):
    patients, y = _labels()
    rng = np.random.default_rng(1)
    a, b = np.round(y + rng.normal(0, 1.0, y.size), 6), np.round(rng.normal(0, 1.0, y.size), 6)
    files = _study(tmp_path, {RunSpec("ssl", "linear", 1.0, 0): a, RunSpec("random", "linear", 1.0, 0): b},
                   patients, y)
    stats = study_statistics(files, n_resamples=300, seed=7)
    rows = {r["init"]: r for r in stats["rows"]}
    ref = paired_bootstrap_auc_diff(y, a, b, groups=patients, n_resamples=300, seed=7)
    v = rows["ssl"]["vs_reference"]
    assert (v["diff"], v["ci_low"], v["ci_high"], v["p_value"]) == pytest.approx(
        (ref["diff"], ref["ci_low"], ref["ci_high"], ref["p_value"]))
    ci = bootstrap_auc_ci(y, a, groups=patients, n_resamples=300, seed=7)
    assert (rows["ssl"]["ci_low"], rows["ssl"]["ci_high"]) == pytest.approx((ci["ci_low"], ci["ci_high"]))

    # two seeds: the AUCs of both runs on each shared resample are averaged, then the percentiles taken
    c = rng.normal(0, 1, y.size) + 0.5 * y
    res = seed_averaged_bootstrap(y, {"x": {0: a, 1: c}}, groups=patients, n_resamples=200, seed=2)
    conf = res["configurations"][0]
    w = _group_weights(patients, 200, 2)
    boot = np.mean([[_weighted_auc(y, s, wb) for wb in w] for s in (a, c)], axis=0)
    assert (conf["ci_low"], conf["ci_high"]) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])))


def _group_weights(groups, n_resamples, seed):
    """The resample weights of monai_cxrssl.evaluation.stats (one chunk): units drawn in order of first appearance."""
    units = list(dict.fromkeys(groups))
    inv = np.array([units.index(g) for g in groups])
    draws = np.random.default_rng(seed).integers(0, len(units), size=(n_resamples, len(units)))
    counts = np.stack([np.bincount(d, minlength=len(units)) for d in draws])
    return counts[:, inv]


def _weighted_auc(y, s, w):
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    cmp = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
    ww = w[pos][:, None] * w[neg][None, :]
    return float((cmp * ww).sum() / ww.sum())


def test_statistics_multilabel_macro_and_mismatched_test_lists(tmp_path):
    patients, y1 = _labels()
    rng = np.random.default_rng(2)
    y = np.stack([y1, rng.integers(0, 2, y1.size).astype(float), np.zeros(y1.size)], axis=1)  # 3rd: one class
    y[3, 1] = np.nan  # an unknown label: ignored
    names = ("a", "b", "c")
    runs = {RunSpec(i, "finetune", 0.5, s): np.round(rng.random(y.shape), 6) for i in ("random", "ssl") for s in (0, 1)}
    stats = study_statistics(_study(tmp_path, runs, patients, y, names), n_resamples=100)
    assert stats["test_set"]["included"] == ["a", "b"] and list(stats["test_set"]["excluded"]) == ["c"]
    row = next(r for r in stats["rows"] if r["init"] == "ssl")
    known = ~np.isnan(y[:, 1])
    for s, got in zip((0, 1), row["per_seed_auc"]):
        p = runs[RunSpec("ssl", "finetune", 0.5, s)]
        assert got == pytest.approx((roc_auc_score(y[:, 0], p[:, 0]) + roc_auc_score(y[known, 1], p[known, 1])) / 2)
    # per finding: the seed-mean AUC of that finding alone, and its paired difference from random
    per = {(r["finding"], r["init"]): r for r in stats["per_finding"]}
    assert set(per) == {(f, i) for f in ("a", "b") for i in ("random", "ssl")}
    for f, k in (("a", 0), ("b", 1)):
        aucs = {i: np.mean([roc_auc_score(y[known if k else slice(None), k],
                                          runs[RunSpec(i, "finetune", 0.5, s)][known if k else slice(None), k])
                            for s in (0, 1)]) for i in ("random", "ssl")}
        assert per[(f, "ssl")]["auc_mean"] == pytest.approx(aucs["ssl"])
        assert per[(f, "ssl")]["vs_reference"]["diff"] == pytest.approx(aucs["ssl"] - aucs["random"])
        assert per[(f, "ssl")]["ci_low"] <= per[(f, "ssl")]["auc_mean"] <= per[(f, "ssl")]["ci_high"]
    table = format_per_finding(stats)
    assert "| a |" in table and "| b |" in table and "Left out: c: 0 positive and" in table
    # a finding with too few test positives is left out of the macro AUC, with the reason
    rare = y.copy()
    rare[:, 1] = np.where(np.isnan(y[:, 1]), np.nan, 0.0)
    rare[[0, 1, 2, 3], 1] = 1.0  # finding b: 4 positive test images, but of 2 patients (p000, p001)
    assert min(np.sum(y[:, 0] == 1), np.sum(y[:, 0] == 0)) >= 3
    stats = study_statistics(_study(tmp_path / "rare", runs, patients, rare, names), n_resamples=100,
                             min_test_positives=3)
    # patients are counted (the bootstrap resamples patients), not images
    assert stats["test_set"]["included"] == ["a"]
    assert "2 positive and 28 negative test patient(s) (4 and 56 images), fewer than min_test_positives=3" \
        in stats["test_set"]["excluded"]["b"]
    p = runs[RunSpec("ssl", "finetune", 0.5, 0)]
    assert next(r for r in stats["rows"] if r["init"] == "ssl")["per_seed_auc"][0] == pytest.approx(
        roc_auc_score(y[:, 0], p[:, 0]))

    # another test order in one run is refused, naming both files
    files = _study(tmp_path, runs, patients, y, names)
    order = np.r_[1:y.shape[0], 0]
    spec = RunSpec("ssl", "finetune", 0.5, 1)
    files[spec] = _write(tmp_path / "bad" / "predictions.csv", [patients[i] for i in order], y[order],
                         runs[spec][order], names)
    with pytest.raises(StudyError, match="different test images") as e:
        study_statistics(files, n_resamples=10)
    assert str(files[spec]) in str(e.value)

    # no random init: comparisons skipped with a note
    only = {k: v for k, v in files.items() if k.init == "random"}
    stats = study_statistics({RunSpec("imagenet", k.mode, k.fraction, k.seed): v for k, v in only.items()},
                             n_resamples=10)
    assert all(r["vs_reference"] is None for r in stats["rows"]) and "skipped" in stats["notes"][0]
    assert "Note: no 'random' init" in format_table(stats)
