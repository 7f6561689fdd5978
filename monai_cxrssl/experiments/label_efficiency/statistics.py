"""The study's statistics: AUCs with bootstrap intervals averaged over seeds, paired differences from the reference
init, per-finding rows for multi-label tasks, the transfer verdict."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .contract import MODES, RANDOM, RunSpec, StudyError
from .runner import _read_predictions


def study_statistics(predictions: Mapping[RunSpec | tuple, str | os.PathLike], *, n_resamples: int = 1000,
                     confidence: float = 0.95, seed: int = 0, reference: str = RANDOM,
                     min_test_positives: int = 1) -> dict:
    """The study's statistics from the runs' ``predictions.csv`` files (see the module docstring).

    Args:
        predictions: ``{RunSpec or (init, mode, fraction, seed): path of the run's eval/predictions.csv}``.
        n_resamples: bootstrap resamples, drawn once and shared by all runs.
        confidence: coverage of the intervals.
        seed: seed of the bootstrap.
        reference: the init every other init is compared with (same mode, fraction, seed).
        min_test_positives: multi-label and multi-class: an output with fewer positive (or negative) test
            *patients* (images when the test list has no patient ids) is left out of the macro AUC and of the
            per-finding table, listed with the reason in ``test_set["excluded"]``; a single positive gives an
            AUC, not a usable interval, and the bootstrap resamples patients.

    Returns:
        ``{"rows": [...], "runs": [...], "test_set": {...}, "bootstrap": {...}, "notes": [...]}``:
        one row per (init, mode, fraction) with ``init``, ``mode``, ``fraction``, ``n_seeds``,
        ``seeds``, ``per_seed_auc``, ``auc_mean``, ``auc_sd``, ``ci_low``, ``ci_high``,
        ``bootstrap_se`` and ``vs_reference`` (``None``, or ``diff``, ``ci_low``, ``ci_high``,
        ``p_value``, ``per_seed_diff``, ``std``); one entry per run with its ``test_auc``.

    Raises:
        StudyError: a missing or malformed file, or runs whose test images, patients, outputs or labels differ.
    """
    from monai_cxrssl.evaluation.stats import seed_averaged_bootstrap

    specs = {(s if isinstance(s, RunSpec) else RunSpec(s[0], s[1], float(s[2]), int(s[3]))): Path(p)
             for s, p in predictions.items()}
    if not specs:
        raise StudyError("no runs to summarise")
    ref_spec, ref = None, None
    scores: dict[RunSpec, np.ndarray] = {}
    for spec, path in specs.items():
        pred = _read_predictions(path)
        if ref is None:
            ref_spec, ref = spec, pred
        else:
            for key, what in (("images", "test images (or their order)"), ("patients", "patient ids"),
                              ("outputs", "outputs")):
                if pred[key] != ref[key]:
                    raise StudyError(f"runs {ref_spec.name} and {spec.name} were evaluated on different "
                                     f"{what}: '{specs[ref_spec]}' vs '{path}'; every run must use the same test list")
            if not np.array_equal(pred["targets"], ref["targets"], equal_nan=True):
                raise StudyError(f"runs {ref_spec.name} and {spec.name} have different test labels: "
                                 f"'{specs[ref_spec]}' vs '{path}'")
        scores[spec] = pred["probs"]
    y_full = ref["targets"]
    known = ~np.isnan(y_full)
    y = np.where(known, y_full, 0.0)
    groups = ref["patients"] if all(ref["patients"]) else None
    binary = y.shape[1] == 1
    too_few = {}
    if not binary:
        ids = np.asarray(groups if groups is not None else np.arange(len(y)), dtype=object)
        for k, name in enumerate(ref["outputs"]):
            pos, neg = known[:, k] & (y[:, k] == 1), known[:, k] & (y[:, k] == 0)
            # the bootstrap resamples patients: a finding seen in 5 images of 2 patients has 2 positives to resample
            n_pos, n_neg = len(set(ids[pos])), len(set(ids[neg]))
            if min(n_pos, n_neg) < int(min_test_positives):
                too_few[name] = (f"{n_pos} positive and {n_neg} negative test patient(s) ({int(pos.sum())} and "
                                 f"{int(neg.sum())} images), fewer than min_test_positives={int(min_test_positives)}")
                known[:, k] = False
    y_per_output, known_per_output = y, known.copy()
    if binary:
        y, known = y[:, 0], known[:, 0]
    runs: dict[tuple, dict[int, np.ndarray]] = {}
    for spec in sorted(specs, key=lambda s: s.seed):
        runs.setdefault(spec.config, {})[spec.seed] = scores[spec][:, 0] if binary else scores[spec]
    notes = []
    inits = list(dict.fromkeys(c[0] for c in runs))
    comparisons = []
    if reference in inits:
        for config in runs:
            if config[0] != reference:
                base = (reference, config[1], config[2])
                if base not in runs:
                    notes.append(f"{config}: no {reference} run with the same mode and fraction; not compared")
                elif set(runs[base]) != set(runs[config]):
                    notes.append(f"{config}: seeds {sorted(runs[config])} differ from {reference}'s "
                                 f"{sorted(runs[base])}; not compared")
                else:
                    comparisons.append((config, base))
    else:
        notes.append(f"no '{reference}' init in the study: the paired comparisons with it are skipped")
    try:
        res = seed_averaged_bootstrap(y, runs, comparisons=comparisons, groups=groups, n_resamples=n_resamples,
                                      confidence=confidence, seed=seed, mask=known,
                                      names=None if binary else ref["outputs"])
    except ValueError as e:
        raise StudyError(f"statistics on the test predictions failed: {e}") from None
    vs = {c["a"]: c for c in res["comparisons"]}
    rows = []
    for c in res["configurations"]:
        init, mode, fraction = c["key"]
        comp = vs.get(c["key"])
        rows.append({
            "init": init, "mode": mode, "fraction": fraction, "n_seeds": c["n_seeds"], "seeds": c["seeds"],
            "per_seed_auc": c["per_seed_auc"], "auc_mean": c["auc_mean"], "auc_sd": c["auc_sd"],
            "ci_low": c["ci_low"], "ci_high": c["ci_high"], "bootstrap_se": c["std"],
            "n_valid_resamples": c["n_valid_resamples"],
            "vs_reference": None if comp is None else {
                "reference": reference, "diff": comp["diff"], "ci_low": comp["ci_low"], "ci_high": comp["ci_high"],
                "p_value": comp["p_value"], "per_seed_diff": comp["per_seed_diff"], "std": comp["std"],
                "auc_reference": comp["auc_b"], "n_valid_resamples": comp["n_valid_resamples"]},
        })
    rows.sort(key=lambda r: (MODES.index(r["mode"]) if r["mode"] in MODES else len(MODES), inits.index(r["init"]),
                             r["fraction"]))
    for r in rows:
        r["verdict"] = transfer_verdict(r["vs_reference"])
        if r["verdict"] == WORSE:
            v = r["vs_reference"]
            notes.append(f"NEGATIVE TRANSFER: {r['init']} ({r['mode']}, fraction {r['fraction']:g}) is worse than "
                         f"{reference} initialisation: AUC difference {v['diff']:+.3f} "
                         f"[{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}]")
    per_run = []
    for c in res["configurations"]:
        for s, a in zip(c["seeds"], c["per_seed_auc"]):
            per_run.append({"name": RunSpec(*c["key"], s).name, "init": c["key"][0], "mode": c["key"][1],
                            "fraction": c["key"][2], "seed": s, "test_auc": a})
    test_set = {"n_images": len(ref["images"]), "n_patients": len(set(groups)) if groups is not None else None,
                "outputs": ref["outputs"], "auc": "ROC AUC" if binary else "macro ROC AUC over outputs with both classes"}
    per_finding = []
    if not binary:
        reasons = {name: too_few.get(name, "no positive or no negative test label") for name in res["excluded"]}
        test_set.update(included=res["included"], excluded=reasons)
        per_finding = _per_finding(y_per_output, known_per_output, ref["outputs"], res["included"], runs,
                                   comparisons, groups, n_resamples, confidence, seed)
    bootstrap = {"n_resamples": res["n_resamples"], "confidence": res["confidence"], "seed": seed,
                 "resampling": "patient" if res["resampling"] == "group" else "image", "n_units": res["n_units"],
                 "method": "percentile bootstrap; resamples drawn once and shared by all runs; AUCs (and paired "
                           "differences) averaged over seeds within each resample"}
    return {"rows": rows, "runs": per_run, "test_set": test_set, "bootstrap": bootstrap, "reference": reference,
            "notes": notes, "per_finding": per_finding}


def _per_finding(y, known, names, included, runs, comparisons, groups, n_resamples, confidence, seed) -> list[dict]:
    """One row per (finding, init, mode, fraction): the seed-mean AUC of that finding with its interval,
    and the paired difference from the reference, on the same shared resamples as the macro AUC."""
    from monai_cxrssl.evaluation.stats import seed_averaged_bootstrap

    rows = []
    for name in included:
        k = list(names).index(name)
        res = seed_averaged_bootstrap(y[:, k], {c: {s: sc[:, k] for s, sc in per.items()} for c, per in runs.items()},
                                      comparisons=comparisons, groups=groups, n_resamples=n_resamples,
                                      confidence=confidence, seed=seed, mask=known[:, k])
        vs = {c["a"]: c for c in res["comparisons"]}
        n_pos, n_neg = int((y[known[:, k], k] == 1).sum()), int((y[known[:, k], k] == 0).sum())
        for c in res["configurations"]:
            comp = vs.get(c["key"])
            rows.append({"finding": name, "n_test_positive": n_pos, "n_test_negative": n_neg,
                         "init": c["key"][0], "mode": c["key"][1], "fraction": c["key"][2],
                         "auc_mean": c["auc_mean"], "ci_low": c["ci_low"], "ci_high": c["ci_high"],
                         "vs_reference": None if comp is None else {
                             "diff": comp["diff"], "ci_low": comp["ci_low"], "ci_high": comp["ci_high"],
                             "p_value": comp["p_value"]}})
    return rows


#: verdicts of an init against the reference (random), from the paired difference's interval
BETTER, WORSE, UNCLEAR = "better", "WORSE: negative transfer", "no clear difference"


def transfer_verdict(comparison: Mapping | None) -> str | None:
    """``better`` when the paired difference's interval lies above 0, ``WORSE: negative transfer`` when it
    lies below 0, else ``no clear difference`` (the point estimate's sign is then not a finding);
    ``None`` without a comparison."""
    if comparison is None or comparison.get("ci_low") is None or comparison.get("ci_high") is None:
        return None
    if comparison["ci_low"] > 0:
        return BETTER
    if comparison["ci_high"] < 0:
        return WORSE
    return UNCLEAR


def add_label_counts(stats: dict, records: Mapping[RunSpec, Mapping]) -> None:
    """Add ``n_labels`` and ``n_patients`` (one per seed, from the runs' records) to every row of ``stats``."""
    for r in stats["rows"]:
        recs = [records.get(RunSpec(r["init"], r["mode"], r["fraction"], seed), {}) for seed in r["seeds"]]
        r["n_labels"] = [rec.get("n_labels") for rec in recs]
        r["n_patients"] = [rec.get("n_patients") for rec in recs]


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"
