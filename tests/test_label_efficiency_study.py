"""The study's resumable loop (study.py, runner.py, cli.py): a tiny study end to end through the command line, then
resumed (nothing retrains), an interrupted run redone, other settings refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from runner import run_python

from monai_cxrssl.checkpoints import BACKBONE_EXPORT
from monai_cxrssl.experiments.label_efficiency import main
from monai_cxrssl.networks import build_backbone
from monai_cxrssl.paths import REPO_ROOT

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
