"""AUC, bootstrap and DeLong statistics of the downstream evaluation, against known answers."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from monai_cxrssl.evaluation import (
    auc,
    bootstrap_auc_ci,
    delong_ci,
    delong_test,
    multilabel_auc,
    paired_bootstrap_auc_diff,
    sensitivity_specificity,
)


def _binormal(rng, n_pos, n_neg, d):
    """Negatives ~ N(0, 1), positives ~ N(d, 1): true AUC = Phi(d / sqrt(2))."""
    y = np.r_[np.ones(n_pos, dtype=int), np.zeros(n_neg, dtype=int)]
    s = np.r_[rng.normal(d, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)]
    return y, s


def _width(r):
    return r["ci_high"] - r["ci_low"]


# ----------------------------------------------------------------------------------------------
# point estimates
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_equals_sklearn_random_and_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = rng.normal(size=300) + 0.7 * y
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    ties = np.round(s, 0)  # heavy ties
    assert auc(y, ties) == pytest.approx(roc_auc_score(y, ties), abs=1e-12)
    ints = rng.integers(0, 3, 300)
    assert auc(y.astype(bool), ints) == pytest.approx(roc_auc_score(y, ints), abs=1e-12)
    assert isinstance(auc(y, s), float)


def test_auc_known_values():
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert auc([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8]) == 1.0
    assert auc([0, 1, 0, 1], [0.9, 0.1, 0.8, 0.2]) == 0.0
    assert auc([0, 1, 0, 1, 1], np.full(5, 0.3)) == 0.5


def test_auc_one_class_raises():
    with pytest.raises(ValueError, match="only one class"):
        auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="multilabel_auc"):
        auc(np.zeros((4, 2)), np.zeros((4, 2)))


def test_multilabel_auc_per_finding_and_macro():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (200, 3))
    s = rng.normal(size=(200, 3)) + y * np.array([0.5, 1.0, 2.0])
    r = multilabel_auc(y, s, names=["a", "b", "c"])
    for j, name in enumerate("abc"):
        assert r["per_finding"][name] == pytest.approx(roc_auc_score(y[:, j], s[:, j]), abs=1e-12)
    assert r["macro"] == pytest.approx(roc_auc_score(y, s, average="macro"), abs=1e-12)
    assert r["excluded"] == [] and r["included"] == ["a", "b", "c"]
    assert r["n_positive"]["a"] + r["n_negative"]["a"] == 200
    json.dumps(r)  # plain Python types


def test_multilabel_masked_entry_has_no_influence():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (120, 3)).astype(float)
    s = rng.normal(size=(120, 3)) + y
    mask = rng.random((120, 3)) > 0.2
    groups = rng.integers(0, 40, 120)
    base_ml = multilabel_auc(y, s, mask=mask)
    base_bs = bootstrap_auc_ci(y, s, mask=mask, groups=groups, n_resamples=200)
    base_pd = paired_bootstrap_auc_diff(y, s, s[::-1], mask=mask, n_resamples=200)
    s2, y2 = s.copy(), y.copy()
    s2[~mask] = np.where(rng.random((~mask).sum()) > 0.5, 1e9, np.nan)  # wild or missing scores
    y2[~mask] = -1  # e.g. "uncertain" labels
    assert multilabel_auc(y2, s2, mask=mask) == base_ml
    assert bootstrap_auc_ci(y2, s2, mask=mask, groups=groups, n_resamples=200) == base_bs
    assert paired_bootstrap_auc_diff(y2, s2, s[::-1], mask=mask, n_resamples=200) == base_pd
    # the masked-out entries really are excluded: changing a used one changes the result
    s3 = s.copy()
    i, j = np.argwhere(mask)[0]
    s3[i, j] += 10 * (1 - 2 * y[i, j])
    assert multilabel_auc(y, s3, mask=mask)["per_finding"][str(j)] != base_ml["per_finding"][str(j)]


def test_multilabel_one_class_finding_excluded_and_listed():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (100, 3))
    y[:, 1] = 0  # no positive
    mask = np.ones_like(y, dtype=bool)
    y[:, 2] = 1
    y[:50, 2] = 0
    mask[:50, 2] = False  # only positives among the used entries
    s = rng.normal(size=(100, 3)) + y
    r = multilabel_auc(y, s, mask=mask, names=["ok", "none", "masked"])
    assert r["per_finding"]["none"] is None and r["per_finding"]["masked"] is None
    assert r["excluded"] == ["none", "masked"]
    assert r["macro"] == pytest.approx(roc_auc_score(y[:, 0], s[:, 0]))
    b = bootstrap_auc_ci(y, s, mask=mask, names=["ok", "none", "masked"], n_resamples=100)
    assert b["excluded"] == ["none", "masked"]
    assert b["per_finding"]["none"]["auc"] is None and b["per_finding"]["none"]["n_valid_resamples"] == 0
    assert b["auc"] == pytest.approx(r["macro"])
    for key in ("auc", "ci_low", "ci_high", "std", "n_valid_resamples"):  # macro of one finding = that finding
        assert b[key] == b["per_finding"]["ok"][key]
    with pytest.raises(ValueError, match="no finding has both classes"):
        bootstrap_auc_ci(y[:, 1:], s[:, 1:], mask=mask[:, 1:])


# ----------------------------------------------------------------------------------------------
# bootstrap
# ----------------------------------------------------------------------------------------------


def test_bootstrap_perfect_and_constant_scores():
    y = np.r_[np.zeros(30), np.ones(20)]
    r = bootstrap_auc_ci(y, y * 2 + 0.1, n_resamples=300)
    assert r["auc"] == 1.0 and r["ci_low"] == 1.0 and r["ci_high"] == 1.0 and r["std"] == 0.0
    c = bootstrap_auc_ci(y, np.zeros(50), n_resamples=300)
    assert c["auc"] == 0.5 and c["ci_low"] == 0.5 and c["ci_high"] == 0.5
    assert r["n_valid_resamples"] == 300 and r["n_resamples"] == 300
    json.dumps(r)


def test_bootstrap_ci_contains_estimate_and_narrows_with_n():
    rng = np.random.default_rng(3)
    widths = []
    for n in (100, 2000):
        y, s = _binormal(rng, n // 2, n // 2, 1.0)
        r = bootstrap_auc_ci(y, s, n_resamples=500, seed=1)
        assert r["ci_low"] <= r["auc"] <= r["ci_high"]
        assert r["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        widths.append(_width(r))
    assert widths[1] < widths[0] / 3  # ~ sqrt(20) = 4.5 times narrower


def test_bootstrap_reproducible_and_seeded():
    rng = np.random.default_rng(4)
    y, s = _binormal(rng, 60, 60, 0.8)
    assert bootstrap_auc_ci(y, s, n_resamples=200, seed=7) == bootstrap_auc_ci(y, s, n_resamples=200, seed=7)
    assert bootstrap_auc_ci(y, s, n_resamples=200, seed=7) != bootstrap_auc_ci(y, s, n_resamples=200, seed=8)


def test_bootstrap_ci_coverage_binormal():
    """Percentile CIs of 100 simulated data sets cover the true AUC about 95 % of the time."""
    d = 1.0
    true_auc = norm.cdf(d / np.sqrt(2.0))
    rng = np.random.default_rng(2024)
    covered = 0
    n_sets = 100
    for i in range(n_sets):
        y, s = _binormal(rng, 60, 90, d)
        r = bootstrap_auc_ci(y, s, n_resamples=200, seed=i)
        covered += r["ci_low"] <= true_auc <= r["ci_high"]
    assert 0.88 <= covered / n_sets <= 0.99, covered


def test_patient_level_resampling_wider_than_row_level():
    rng = np.random.default_rng(5)
    y_pat, s_pat = _binormal(rng, 25, 25, 1.0)
    y = np.repeat(y_pat, 10)  # 50 patients, each duplicated 10 times
    s = np.repeat(s_pat, 10)
    patients = np.repeat([f"p{i:03d}" for i in range(50)], 10)
    rows = bootstrap_auc_ci(y, s, n_resamples=500)
    pats = bootstrap_auc_ci(y, s, groups=patients, n_resamples=500)
    assert pats["auc"] == rows["auc"]
    assert rows["resampling"] == "row" and rows["n_units"] == 500
    assert pats["resampling"] == "group" and pats["n_units"] == 50
    assert _width(pats) > 2.0 * _width(rows)  # ~ sqrt(10) wider
    # patient-level resampling of duplicated rows = row-level resampling of one row per patient
    # (same seed, same number of units: the very same resamples)
    single = bootstrap_auc_ci(y_pat, s_pat, n_resamples=500)
    for key in ("auc", "ci_low", "ci_high", "std"):
        assert pats[key] == pytest.approx(single[key], rel=1e-9)


def test_bootstrap_multilabel_macro_ci():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, (300, 4))
    s = rng.normal(size=(300, 4)) + y
    r = bootstrap_auc_ci(y, s, n_resamples=300, names=list("abcd"))
    assert r["auc"] == pytest.approx(roc_auc_score(y, s, average="macro"))
    assert r["ci_low"] <= r["auc"] <= r["ci_high"]
    for name in "abcd":
        f = r["per_finding"][name]
        assert f["ci_low"] <= f["auc"] <= f["ci_high"] and f["n_valid_resamples"] == 300
        # the macro mean averages 4 findings: its interval is narrower than each finding's
        assert _width(r) < f["ci_high"] - f["ci_low"]
    # per-finding intervals are those of the binary bootstrap on the same resamples
    one = bootstrap_auc_ci(y[:, 2], s[:, 2], n_resamples=300)
    assert {k: one[k] for k in ("auc", "ci_low", "ci_high", "std")} == {
        k: r["per_finding"]["c"][k] for k in ("auc", "ci_low", "ci_high", "std")
    }


def test_bootstrap_drops_resamples_without_both_classes():
    y = np.r_[1, np.zeros(39)]  # a single positive: ~37 % of resamples miss it
    s = np.linspace(0, 1, 40)
    r = bootstrap_auc_ci(y, s, n_resamples=400)
    assert 200 < r["n_valid_resamples"] < 320
    assert r["n_resamples"] == 400


def test_bootstrap_speed():
    rng = np.random.default_rng(7)
    y, s = _binormal(rng, 500, 500, 1.0)
    bootstrap_auc_ci(y, s, n_resamples=10)  # warm-up
    t = time.perf_counter()
    bootstrap_auc_ci(y, s, n_resamples=1000)
    assert time.perf_counter() - t < 2.0


# ----------------------------------------------------------------------------------------------
# paired comparison
# ----------------------------------------------------------------------------------------------


def test_paired_identical_scores():
    rng = np.random.default_rng(8)
    y, s = _binormal(rng, 40, 60, 1.0)
    r = paired_bootstrap_auc_diff(y, s, s.copy(), n_resamples=300)
    assert r["diff"] == 0.0 and r["ci_low"] == 0.0 and r["ci_high"] == 0.0 and r["p_value"] == 1.0
    assert r["auc_a"] == r["auc_b"] == pytest.approx(roc_auc_score(y, s))
    # a monotone transform has the same ranks, hence the same AUC on every resample
    assert paired_bootstrap_auc_diff(y, s, np.exp(s), n_resamples=300)["p_value"] == 1.0


def test_paired_clearly_better_model():
    rng = np.random.default_rng(9)
    y, _ = _binormal(rng, 150, 150, 0.0)
    good = y * 2.0 + rng.normal(size=300)
    bad = y * 0.3 + rng.normal(size=300)
    r = paired_bootstrap_auc_diff(y, good, bad, n_resamples=1000)
    assert r["diff"] > 0 and r["ci_low"] > 0 and r["p_value"] < 0.01
    assert r["p_value"] == pytest.approx(2 / 1001)  # no resample with diff <= 0
    assert r["diff"] == pytest.approx(r["auc_a"] - r["auc_b"])
    rev = paired_bootstrap_auc_diff(y, bad, good, n_resamples=1000)
    assert rev["diff"] == -r["diff"] and rev["ci_high"] < 0 and rev["p_value"] == r["p_value"]
    # same seed -> same resamples as bootstrap_auc_ci
    assert bootstrap_auc_ci(y, good, n_resamples=1000)["n_valid_resamples"] == r["n_valid_resamples"]


def test_paired_multilabel_macro_and_groups():
    rng = np.random.default_rng(10)
    y = rng.integers(0, 2, (200, 3))
    a = rng.normal(size=(200, 3)) + 1.5 * y
    b = rng.normal(size=(200, 3)) + 0.2 * y
    groups = np.repeat(np.arange(100), 2)
    r = paired_bootstrap_auc_diff(y, a, b, groups=groups, n_resamples=300, names=["x", "y", "z"])
    assert r["auc_a"] == pytest.approx(roc_auc_score(y, a, average="macro"))
    assert r["auc_b"] == pytest.approx(roc_auc_score(y, b, average="macro"))
    assert r["ci_low"] > 0 and r["p_value"] < 0.01
    assert set(r["per_finding"]) == {"x", "y", "z"} and r["n_units"] == 100
    assert r["diff"] == pytest.approx(np.mean([r["per_finding"][k]["diff"] for k in "xyz"]))
    json.dumps(r)


# ----------------------------------------------------------------------------------------------
# DeLong
# ----------------------------------------------------------------------------------------------


def _psi_components(y, s):
    """Structural components by the O(m n) definition of DeLong et al. (1988)."""
    x, yn = s[y == 1], s[y == 0]
    psi = (x[:, None] > yn[None, :]) + 0.5 * (x[:, None] == yn[None, :])
    return psi.mean(axis=1), psi.mean(axis=0)


def test_delong_matches_direct_definition():
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 80)
    a = np.round(rng.normal(size=80) + y, 1)  # with ties
    b = np.round(rng.normal(size=80) + 0.5 * y, 1)
    a10, a01 = _psi_components(y, a)
    b10, b01 = _psi_components(y, b)
    m, n = a10.size, a01.size
    var_a = a10.var(ddof=1) / m + a01.var(ddof=1) / n
    var_b = b10.var(ddof=1) / m + b01.var(ddof=1) / n
    cov = np.cov(a10, b10)[0, 1] / m + np.cov(a01, b01)[0, 1] / n
    r = delong_test(y, a, b)
    assert r["auc_a"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert r["auc_b"] == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    assert r["var_a"] == pytest.approx(var_a) and r["var_b"] == pytest.approx(var_b)
    assert r["cov"] == pytest.approx(cov)
    z = (r["auc_a"] - r["auc_b"]) / np.sqrt(var_a + var_b - 2 * cov)
    assert r["z"] == pytest.approx(z)
    assert r["p_value"] == pytest.approx(2 * norm.sf(abs(z)))
    c = delong_ci(y, a)
    assert c["var"] == pytest.approx(var_a) and c["auc"] == pytest.approx(r["auc_a"])
    assert c["ci_low"] == pytest.approx(c["auc"] - norm.ppf(0.975) * np.sqrt(var_a))


def test_delong_identical_scores_no_crash():
    rng = np.random.default_rng(12)
    y, s = _binormal(rng, 30, 30, 1.0)
    r = delong_test(y, s, s.copy())
    assert r["z"] is None and r["p_value"] == 1.0 and r["diff"] == 0.0 and r["var_diff"] == 0.0
    perfect = delong_test(y, y + 0.0, 2.0 * y)  # two perfect classifiers: zero variance
    assert perfect["z"] is None and perfect["p_value"] == 1.0
    c = delong_ci(y, y * 1.0)
    assert c["auc"] == 1.0 and c["ci_low"] == 1.0 and c["ci_high"] == 1.0
    json.dumps(r)


def test_delong_variance_agrees_with_bootstrap():
    rng = np.random.default_rng(13)
    y, s = _binormal(rng, 1000, 1000, 1.0)
    c = delong_ci(y, s)
    b = bootstrap_auc_ci(y, s, n_resamples=1000)
    assert b["std"] ** 2 == pytest.approx(c["var"], rel=0.2)
    assert c["ci_low"] == pytest.approx(b["ci_low"], abs=0.01)
    assert c["ci_high"] == pytest.approx(b["ci_high"], abs=0.01)


def test_delong_p_values():
    rng = np.random.default_rng(14)
    y, _ = _binormal(rng, 150, 150, 0.0)
    latent = y + rng.normal(size=300)
    better = delong_test(y, y * 2.0 + rng.normal(size=300), latent)
    assert better["p_value"] < 0.01 and better["z"] > 0
    # two equally good but independently noisy readings of the same latent score
    a = latent + rng.normal(size=300)
    b = latent + rng.normal(size=300)
    r = delong_test(y, a, b)
    assert r["p_value"] > 0.05
    assert 0 < r["cov"] < min(r["var_a"], r["var_b"])  # correlated, not identical
    boot = paired_bootstrap_auc_diff(y, a, b, n_resamples=500)
    assert boot["p_value"] > 0.05


# ----------------------------------------------------------------------------------------------
# operating point
# ----------------------------------------------------------------------------------------------


def test_sensitivity_specificity():
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.5, 0.2, 0.6, 0.1, 0.3, 0.0])
    r = sensitivity_specificity(y, s, threshold=0.5)
    assert (r["tp"], r["fn"], r["fp"], r["tn"]) == (2, 1, 1, 3)
    assert r["sensitivity"] == pytest.approx(2 / 3) and r["specificity"] == pytest.approx(3 / 4)
    assert r["ppv"] == pytest.approx(2 / 3) and r["npv"] == pytest.approx(3 / 4)
    none = sensitivity_specificity([0, 0, 0], [0.1, 0.2, 0.3], threshold=0.5)
    assert none["sensitivity"] is None and none["ppv"] is None and none["specificity"] == 1.0
    json.dumps(r)


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: auc([0, 1, 1], [0.1, 0.2]), "y_score has shape"),
        (lambda: auc([0, 1, 1], [0.1, np.nan, 0.3]), "y_score holds 1 NaN"),
        (lambda: auc([0, 1, 2], [0.1, 0.2, 0.3]), "y_true must hold only 0 and 1"),
        (lambda: auc([0, 1, np.nan], [0.1, 0.2, 0.3]), "y_true must hold only 0 and 1"),
        (lambda: auc([], []), "y_true is empty"),
        (lambda: auc([0, 1], ["a", "b"]), "y_score must be numeric"),
        (lambda: bootstrap_auc_ci([0, 1, 1], [0.1, np.inf, 0.3]), "y_score holds"),
        (lambda: bootstrap_auc_ci([0, 1, 1], [0.1, 0.2, 0.3], groups=[1, 2]), "groups has 2 entries"),
        (lambda: bootstrap_auc_ci([0, 1, 1], [0.1, 0.2, 0.3], confidence=95), "confidence"),
        (lambda: bootstrap_auc_ci([0, 1, 1], [0.1, 0.2, 0.3], n_resamples=0), "n_resamples"),
        (lambda: bootstrap_auc_ci([0, 1, 1], [0.1, 0.2, 0.3], mask=[True, False]), "mask has shape"),
        (lambda: paired_bootstrap_auc_diff([0, 1, 1], [0.1, 0.2, 0.3], [0.1, 0.2]), "score_b has shape"),
        (lambda: paired_bootstrap_auc_diff([0, 1, 1], [np.nan, 0.2, 0.3], [0.1, 0.2, 0.3]), "score_a holds"),
        (lambda: delong_test([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, np.nan, 0.4]), "score_b holds"),
        (lambda: delong_test([0, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]), "at least 2 positives"),
        (lambda: delong_ci([0, 1, 0], [0.1, 0.2, 0.3, 0.4]), "score has shape"),
        (lambda: sensitivity_specificity([0, 1], [0.1, np.nan]), "y_score holds"),
        (lambda: multilabel_auc(np.zeros((3, 2)), np.zeros((3, 2)), names=["a"]), "names has 1"),
        (lambda: multilabel_auc(np.zeros((3, 2)), np.zeros((3, 3))), "y_score has shape"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
