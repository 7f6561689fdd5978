"""The label-efficiency study: its statistics on constructed predictions with known answers, a tiny
end-to-end study through the command line (then resumed: nothing retrains), and bad input refused
before any training."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from runner import run_python
import torch
from sklearn.metrics import roc_auc_score

from monai_cxrssl.checkpoints import BACKBONE_EXPORT
from monai_cxrssl.evaluation.stats import bootstrap_auc_ci, paired_bootstrap_auc_diff, seed_averaged_bootstrap
from monai_cxrssl.experiments.label_efficiency import (
    RunSpec,
    StudyError,
    format_per_finding,
    format_table,
    main,
    parse_init,
    parse_overrides,
    plot_auc_vs_fraction,
    study_statistics,
)
from monai_cxrssl.networks import build_backbone
from monai_cxrssl.paths import REPO_ROOT

# ----------------------------------------------------------------------------------------------
# statistics on constructed prediction files
# ----------------------------------------------------------------------------------------------

N_PATIENTS = 30


def _labels():
    """60 test images of 30 patients (2 each); labels alternate so both classes are everywhere."""
    patients = [f"p{i // 2:03d}" for i in range(2 * N_PATIENTS)]
    y = np.array([(i // 2) % 2 for i in range(2 * N_PATIENTS)], dtype=float)
    return patients, y


def _write(path, patients, y, probs, names=("opacity",)):
    """A predictions.csv as PredictionReport writes it; y/probs (N,) or (N, K); NaN targets are left blank."""
    y = np.asarray(y, dtype=float).reshape(len(patients), -1)
    probs = np.asarray(probs, dtype=float).reshape(len(patients), -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "patient_id"] + [f"prob_{n}" for n in names] + [f"target_{n}" for n in names])
        for i, pid in enumerate(patients):
            w.writerow([f"/data/{pid}-{i}.png", pid] + [f"{p:.6f}" for p in probs[i]]
                       + ["" if np.isnan(t) else int(t) for t in y[i]])
    return path


def _study(tmp_path, scores_by_run, patients, y, names=("opacity",)):
    return {spec: _write(tmp_path / spec.name / "predictions.csv", patients, y, s, names)
            for spec, s in scores_by_run.items()}


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


def test_option_parsing():
    assert parse_init("random") == ("random", None)
    assert parse_init("simclr=out/models/backbone.pt") == ("simclr", "out/models/backbone.pt")
    for bad in ("out/backbone.pt", "random=x.pt", "sim-clr=x.pt", "=x.pt", "a="):
        with pytest.raises(StudyError):
            parse_init(bad)
    assert parse_overrides(["patience=3", "device=cuda", "class_weighting=true", "weight_decay=1e-4"]) == {
        "patience": 3, "device": "cuda", "class_weighting": True, "weight_decay": 1e-4}
    with pytest.raises(StudyError, match="--epochs-linear"):
        parse_overrides(["epochs=3"])
    with pytest.raises(StudyError, match="KEY=VALUE"):
        parse_overrides(["patience"])


# ----------------------------------------------------------------------------------------------
# through the command line
# ----------------------------------------------------------------------------------------------

SMALL = ["--backbone", "resnet10", "--image-size", "32", "--batch-size", "8"]


def _run(*args, cwd=REPO_ROOT):
    return run_python(*args, cwd=cwd)


@pytest.mark.slow
def test_tiny_study_end_to_end_then_resumed(tmp_path, capsys):
    # a second init beside random: a backbone export (here a differently seeded ResNet-10, as a pretraining run
    # would leave in models/backbone.pt); one label fraction, two label draws: the runs pair over seeds
    out = tmp_path / "study"
    torch.manual_seed(1)
    other = build_backbone("resnet10")
    ssl = tmp_path / "ssl_backbone.pt"
    torch.save({"format": BACKBONE_EXPORT, "backbone": other.spec(), "method": "simclr",
                "state_dict": other.state_dict()}, ssl)
    args = ["--out", out, "--allow-demo", "--init", "random", f"ssl={ssl}",
            "--modes", "linear", "--fractions", "0.5", "--seeds", "0", "1", "--epochs-linear", "1",
            "--n-resamples", "200", "--eval-resamples", "20", "--set", "cache_workers=1", *SMALL]
    proc = _run("-m", "monai_cxrssl.experiments.label_efficiency", *args, cwd=tmp_path)
    assert "run 4/4 ssl-linear-f0.5-s1: done" in proc.stdout and "SYNTHETIC" in proc.stdout

    names = [f"{i}-linear-f0.5-s{s}" for i in ("random", "ssl") for s in (0, 1)]
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(names)
    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in results["runs"]] == names
    for r in results["runs"]:
        assert r["wall_time_s"] > 0 and 0 <= r["test_auc"] <= 1
        assert r["test_auc"] == pytest.approx(r["bundle_test_auc"], abs=1e-9)  # study recomputes the bundle's AUC
        assert r["settings"]["epochs"] == 1 and r["settings"]["backbone"] == "resnet10"
        # the label budget: training + validation, drawn from the fraction of the 112 labelled demo entries
        assert r["settings"]["linear_solver"] == "lbfgs" and r["selection"].startswith("logistic regression")
        assert r["n_labels"] == r["n_train"] and r["n_val"] == 0  # the probe's cross-validation is its selection
        assert r["n_labels"] <= round(r["label_fraction"] * 112) + 2 and 0 < r["n_patients"] <= r["n_labels"]
    table = results["table"]
    assert [(r["init"], r["fraction"], r["n_seeds"]) for r in table] == [("random", 0.5, 2), ("ssl", 0.5, 2)]
    for r in table:
        runs = [x["test_auc"] for x in results["runs"] if x["init"] == r["init"] and x["label_fraction"] == r["fraction"]]
        assert r["auc_mean"] == pytest.approx(np.mean(runs))
        assert (r["vs_reference"] is None) == (r["init"] == "random")
        assert r["n_labels"] == [x["n_labels"] for x in results["runs"]
                                 if x["init"] == r["init"] and x["label_fraction"] == r["fraction"]]
    md = (out / "table.md").read_text()
    assert md.count("| ssl | linear |") == 1 and md.count("| random | linear |") == 1 and "SYNTHETIC" in md
    half = next(r for r in table if r["fraction"] == 0.5)
    used = f"{min(half['n_labels'])}" + (f"-{max(half['n_labels'])}" if len(set(half["n_labels"])) > 1 else "")
    assert f"| ssl | linear | 0.5 | {used} (" in proc.stdout and "| labels (patients) |" in md  # printed, with labels
    assert (out / "auc_vs_fraction.png").read_bytes()[:4] == b"\x89PNG"

    # the same command again: every run skipped, nothing retrained
    mtimes = {n: (out / "runs" / n / "done.json").stat().st_mtime_ns for n in names}
    capsys.readouterr()
    assert main(list(map(str, args))) == 0
    log = capsys.readouterr().out
    assert log.count(": skipped (done") == 4 and "training (" not in log
    assert {n: (out / "runs" / n / "done.json").stat().st_mtime_ns for n in names} == mtimes
    assert json.loads((out / "results.json").read_text())["table"] == table

    # an interrupted run (folder without done.json) is deleted and redone from scratch; the others are kept
    redo = out / "runs" / names[0]
    (redo / "done.json").unlink()
    (redo / "stale.txt").write_text("left by the interrupted run")
    assert main(list(map(str, args))) == 0
    log = capsys.readouterr().out
    assert f"run 1/4 {names[0]}: found an interrupted run" in log and log.count(": skipped (done") == 3
    assert (redo / "done.json").is_file() and not (redo / "stale.txt").exists()
    mtimes.pop(names[0])
    assert {n: (out / "runs" / n / "done.json").stat().st_mtime_ns for n in names[1:]} == mtimes

    # other settings in the same study folder are refused before any training
    changed = list(map(str, args))
    changed[changed.index("--epochs-linear") + 1] = "2"
    assert main(changed) == 1
    err = capsys.readouterr().err
    assert "other settings" in err and "'epochs': (1, 2)" in err
    assert {n: (out / "runs" / n / "done.json").stat().st_mtime_ns for n in names[1:]} == mtimes


def test_bad_input_refused_before_training(tmp_path, capsys):
    # a backbone export of resnet18 for a resnet10 study: error naming the init and the file, no runs/ folder
    other = build_backbone("resnet18")
    path = tmp_path / "resnet18_backbone.pt"
    torch.save({"format": BACKBONE_EXPORT, "backbone": other.spec(), "method": "simclr",
                "state_dict": other.state_dict()}, path)
    out = tmp_path / "study"
    code = main(["--out", str(out), "--allow-demo", "--init", "random", f"ssl={path}", "--modes", "linear",
                 "--fractions", "1.0", "--seeds", "0", *SMALL])
    err = capsys.readouterr().err
    assert code == 1 and "init 'ssl'" in err and str(path) in err and "resnet18" in err
    assert not (out / "runs").exists()

    # no data and no --allow-demo: refused, says why
    code = main(["--out", str(out), "--init", "random", "--fractions", "1.0", "--seeds", "0", *SMALL])
    err = capsys.readouterr().err
    assert code == 1 and "SYNTHETIC" in err and "--allow-demo" in err and not out.exists()

    # a datalist without test list, one with an entry missing its label: refused before any training
    dl = _tiny_datalist(tmp_path)
    code = main(["--out", str(out), "--datalist", str(dl), "--init", "random", "--fractions", "1.0", "--seeds", "0",
                 *SMALL])
    assert code == 1 and "no test list" in capsys.readouterr().err and not (out / "runs").exists()
    data = json.loads(dl.read_text())
    data["test"] = data.pop("validation")
    del data["training"][3]["label"]
    dl.write_text(json.dumps(data))
    code = main(["--out", str(out), "--datalist", str(dl), "--init", "random", "--fractions", "1.0", "--seeds", "0",
                 *SMALL])
    err = capsys.readouterr().err
    assert code == 1 and "label fraction 1.0 with seed 0" in err and "'label'" in err and not (out / "runs").exists()

    # a --set of a key the study controls names the option to use
    code = main(["--out", str(out), "--allow-demo", "--init", "random", "--set", "seed=3", *SMALL])
    assert code == 1 and "--seeds" in capsys.readouterr().err


def _tiny_datalist(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    entries = []
    for i in range(12):
        path = tmp_path / "img" / f"p{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(path)
        entries.append({"image": str(path), "label": i % 2, "patient_id": f"p{i}"})
    dl = tmp_path / "datalist.json"
    dl.write_text(json.dumps({"task": "binary", "classes": ["normal", "opacity"], "training": entries[:8],
                              "validation": entries[8:]}))
    return dl


def test_the_classifier_bundle_holds_the_study_contract(tmp_path):
    """Every setting the study gives a run is a setting of the classifier bundle, and the files it reads are where
    the bundle writes them (the bundle's own configs, resolved with an output_dir)."""
    from monai.bundle import ConfigParser

    from monai_cxrssl.engines.classification import MODEL_INFO
    from monai_cxrssl.evaluation.report import METRICS_JSON, PREDICTIONS_CSV
    from monai_cxrssl.experiments.label_efficiency import CONTROLLED, DEFAULT_BUNDLE_DIR, RUN_FILES

    configs = DEFAULT_BUNDLE_DIR / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "evaluate.json")])
    missing = [k for k in CONTROLLED if k not in parser.get()]
    assert not missing, f"the study sets {missing}, which the classifier bundle does not have"
    out = tmp_path / "run"
    parser["output_dir"] = str(out)
    report = parser.get_parsed_content("validate#report", instantiate=True)
    assert out / RUN_FILES["metrics"] == report.output_dir / METRICS_JSON
    assert out / RUN_FILES["predictions"] == report.output_dir / PREDICTIONS_CSV
    assert out / RUN_FILES["model_info"] == Path(parser.get_parsed_content("ckpt_dir")) / MODEL_INFO
