"""The study itself: every (init, mode, fraction, seed) run, resumable, then its statistics, table and plot."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from monai_cxrssl.utils import atomic_write

from .checks import _check_data, _check_inits, _normalise_inits, _positive, _settings_diff, _unique, parse_overrides
from .contract import CONTROLLED, DEFAULT_BUNDLE_DIR, DONE, MODES, RANDOM, RUN_FILES, RunSpec, StudyError, _say
from .report import format_per_finding, format_table, plot_auc_vs_fraction
from .runner import _bundle, _run_log
from .statistics import _fmt, add_label_counts, study_statistics


def run_study(
    out: str | os.PathLike,
    inits: Sequence[str] | Mapping[str, str | None],
    *,
    dataset_dir: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    modes: Sequence[str] = MODES,
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seeds: Sequence[int] = (0, 1, 2),
    linear_solver: str = "lbfgs",
    epochs_linear: int = 10,
    epochs_finetune: int = 5,
    lr_linear: float = 0.01,
    lr_finetune: float = 1e-4,
    backbone: str = "resnet18",
    image_size: int = 64,
    batch_size: int = 64,
    n_resamples: int = 1000,
    eval_resamples: int = 200,
    confidence: float = 0.95,
    bootstrap_seed: int = 0,
    min_test_positives: int = 5,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    allow_demo: bool = False,
    bundle_dir: str | os.PathLike = DEFAULT_BUNDLE_DIR,
) -> dict:
    """Run (or resume) the label-efficiency study and write its results (see the module docstring).

    Args:
        out: the study folder (``runs/``, ``results.json``, ``table.md``, ``auc_vs_fraction.png``).
        inits: ``["random", "simclr=path/backbone.pt", ...]`` or ``{"random": None, "simclr": "path"}``.
        dataset_dir, datalist: the labelled data (one of them), as for the classifier bundle.
        modes: ``linear`` and/or ``finetune``.
        fractions: label fractions in (0, 1].
        seeds: label-fraction draws (and training seeds).
        linear_solver: ``lbfgs`` (logistic regression to convergence, C by cross-validation) or ``adamw``
            (the head by AdamW, ``epochs_linear`` epochs at ``lr_linear``).
        epochs_linear, epochs_finetune, lr_linear, lr_finetune: epochs and learning rate per mode (the
            linear ones only with ``linear_solver="adamw"``).
        backbone, image_size, batch_size: passed to every run.
        n_resamples: bootstrap resamples of the study's statistics (shared by all runs).
        eval_resamples: bootstrap resamples of each run's own ``eval/metrics.json``.
        confidence, bootstrap_seed: of the study's intervals.
        min_test_positives: multi-label / multi-class: outputs with fewer positive (or negative) test patients
            are left out of the macro AUC and the per-finding table, listed with the reason.
        overrides: any other classifier-bundle setting, as ``["key=value"]`` or a dict (``--set``).
        allow_demo: allow the SYNTHETIC demo data when no data are given (smoke tests only).
        bundle_dir: the classifier bundle (its ``configs/train.json`` and ``configs/evaluate.json``).

    Returns:
        the content of ``results.json``.

    Raises:
        StudyError: bad options, init files, data or study folder, all before any training; or
            inconsistent predictions after the runs.
    """
    t_start = time.monotonic()
    out = Path(out).expanduser().resolve()
    # ---- options -------------------------------------------------------------------------
    modes = _unique(modes, "--modes", str)
    for m in modes:
        if m not in MODES:
            raise StudyError(f"--modes: unknown mode {m!r}; expected {' or '.join(MODES)}")
    fractions = sorted(_unique(fractions, "--fractions", float))
    for f in fractions:
        if not 0.0 < f <= 1.0:
            raise StudyError(f"--fractions: {f} is not a label fraction in (0, 1]")
    seeds = _unique(seeds, "--seeds", int)
    if any(s < 0 for s in seeds):
        raise StudyError(f"--seeds must be non-negative integers, got {seeds}")
    from monai_cxrssl.engines.classification import LINEAR_SOLVERS

    if linear_solver not in LINEAR_SOLVERS:
        raise StudyError(f"--linear-solver: expected one of {LINEAR_SOLVERS}, got {linear_solver!r}")
    epochs = {"linear": _positive(epochs_linear, "--epochs-linear", int),
              "finetune": _positive(epochs_finetune, "--epochs-finetune", int)}
    lrs = {"linear": _positive(lr_linear, "--lr-linear"), "finetune": _positive(lr_finetune, "--lr-finetune")}
    image_size = _positive(image_size, "--image-size", int)
    batch_size = _positive(batch_size, "--batch-size", int)
    n_resamples = _positive(n_resamples, "--n-resamples", int)
    eval_resamples = _positive(eval_resamples, "--eval-resamples", int)
    min_test_positives = _positive(min_test_positives, "--min-test-positives", int)
    if not 0.0 < float(confidence) < 1.0:
        raise StudyError(f"--confidence must be in (0, 1), got {confidence}")
    extra = parse_overrides(overrides)
    bundle_dir = Path(bundle_dir).expanduser().resolve()
    train_json, eval_json = bundle_dir / "configs" / "train.json", bundle_dir / "configs" / "evaluate.json"
    for f in (train_json, eval_json):
        if not f.is_file():
            raise StudyError(f"--bundle-dir '{bundle_dir}': '{f}' does not exist; expected the cxr_classifier bundle "
                             f"(its folder in a copy of the repository's bundles/)")
    if dataset_dir and datalist:
        raise StudyError("give --dataset_dir or --datalist, not both")
    demo = not (dataset_dir or datalist)
    if demo and not allow_demo:
        raise StudyError(
            "no data given (--dataset_dir or --datalist): the classifier would train and be tested on the SYNTHETIC "
            "demo phantoms, and a label-efficiency study on phantoms means nothing. Pass real labelled data, or "
            "--allow-demo for a smoke test of the machinery only.")
    if demo:
        _say("WARNING: --allow-demo: every run uses the SYNTHETIC demo phantoms; the results mean nothing clinically")
    source = {"dataset_dir": str(Path(dataset_dir).expanduser().resolve()) if dataset_dir else "",
              "datalist": str(Path(datalist).expanduser().resolve()) if datalist else "",
              "demo_dir": str(out / "demo_data") if demo else None}

    # ---- init files, then the data, then the study folder: all before any training ------------
    init_paths = _normalise_inits(inits)
    init_info = _check_inits(init_paths, backbone)
    data_options = {k: extra[k] for k in ("task", "uncertain", "val_fraction") if k in extra}
    # runs that validate (fine-tuning, the adamw probe) draw a validation set from their labels; the
    # logistic probe's cross-validation is its model selection (every labelled entry trains)
    validated = "finetune" in modes or linear_solver != "lbfgs"
    test_info = _check_data(source, fractions, seeds, data_options, validated=validated)
    _say(f"data: {test_info['source']}: task {test_info['task']}, {test_info['n_test']} test images; "
         f"{len(fractions)} fraction(s) x {len(seeds)} seed(s) drawn and checked")

    specs = [RunSpec(i, m, f, s) for m in modes for i in init_paths for f in fractions for s in seeds]
    settings = {}
    for spec in specs:
        settings[spec] = {
            "init": spec.init, "init_weights": init_info[spec.init]["path"] or RANDOM,
            "init_sha256": init_info[spec.init]["sha256"], "mode": spec.mode, "label_fraction": spec.fraction,
            "seed": spec.seed, "epochs": epochs[spec.mode], "learning_rate": lrs[spec.mode], "backbone": backbone,
            "image_size": image_size, "batch_size": batch_size, "dataset_dir": source["dataset_dir"],
            "datalist": source["datalist"], "synthetic_demo": demo, "overrides": extra,
            "eval_resamples": eval_resamples,
        }
        if spec.mode == "linear":
            settings[spec]["linear_solver"] = linear_solver
    runs_dir = out / "runs"
    done: dict[RunSpec, dict] = {}
    for spec in specs:
        path = runs_dir / spec.name / DONE
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            _say(f"{spec.name}: unreadable {DONE} ({e}): the run will be redone")
            continue
        diff = _settings_diff(record.get("settings", {}), settings[spec])
        if diff:
            raise StudyError(
                f"'{path.parent}' was made with other settings (as (found, now): {diff}); a study folder holds one "
                f"study: use another --out, or delete '{path.parent}' to redo that run")
        done[spec] = record

    # ---- runs ------------------------------------------------------------------------------------
    n = len(specs)
    _say(f"{n} run(s) in {runs_dir}: {len(done)} already done, {n - len(done)} to train")
    runs_dir.mkdir(parents=True, exist_ok=True)
    walls = []
    for i, spec in enumerate(specs, 1):
        run_dir = runs_dir / spec.name
        head = f"run {i}/{n} {spec.name}"
        if spec in done:
            _say(f"{head}: skipped (done: {DONE} present; test AUC {_fmt(done[spec].get('test_auc'), 4)})")
            continue
        if run_dir.exists():
            _say(f"{head}: found an interrupted run (no {DONE}): deleting it and restarting from scratch")
            shutil.rmtree(run_dir)
        s = settings[spec]
        how = ("logistic regression (L-BFGS), C by cross-validation" if s.get("linear_solver") == "lbfgs"
               else f"{s['epochs']} epoch(s), lr {s['learning_rate']:g}")
        _say(f"{head}: training ({spec.mode}, init {spec.init}, label fraction {spec.fraction}, seed {spec.seed}, "
             f"{how}); log in {run_dir / 'log.txt'}")
        run_dir.mkdir(parents=True)
        bundle_overrides = {
            "bundle_root": str(bundle_dir), "output_dir": str(run_dir), "init_weights": s["init_weights"],
            "mode": spec.mode, "label_fraction": spec.fraction, "seed": spec.seed, "epochs": s["epochs"],
            "learning_rate": s["learning_rate"], "backbone": backbone, "image_size": image_size,
            "batch_size": batch_size, "progress": False, "resume": False,
            "dataset_dir": source["dataset_dir"], "datalist": source["datalist"], **extra,
        }
        if "linear_solver" in s:
            bundle_overrides["linear_solver"] = s["linear_solver"]
        if demo:
            bundle_overrides["demo_dir"] = source["demo_dir"]
        assert set(bundle_overrides) - set(extra) <= set(CONTROLLED), "the study's bundle contract is stale"
        t0 = time.monotonic()
        try:
            with _run_log(run_dir / "log.txt"):
                _bundle([train_json], "train", bundle_overrides)
                t_train = time.monotonic() - t0
                _bundle([train_json, eval_json], "eval", {**bundle_overrides, "n_resamples": eval_resamples})
        except BaseException:
            _say(f"{head}: FAILED after {time.monotonic() - t0:.1f} s (see {run_dir / 'log.txt'}); finished runs are "
                 "kept: rerun the same command to continue")
            raise
        wall = time.monotonic() - t0
        walls.append(wall)
        metrics = json.loads((run_dir / RUN_FILES["metrics"]).read_text(encoding="utf-8"))
        info_path = run_dir / RUN_FILES["model_info"]
        info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
        record = {"name": spec.name, "settings": s, "wall_time_s": round(wall, 3), "train_time_s": round(t_train, 3),
                  "test_auc": metrics.get("auc"), "test_ci_low": metrics.get("ci_low"),
                  "test_ci_high": metrics.get("ci_high"), "best_epoch": info.get("best_epoch"),
                  "best_metric": info.get("best_metric"), "n_train": info.get("n_train"),
                  "n_val": info.get("n_val"), "n_labels": info.get("n_labels"), "n_patients": info.get("n_patients"),
                  "selection": info.get("selection"),
                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        with atomic_write(run_dir / DONE, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        done[spec] = record
        left = sum(1 for sp in specs[i:] if sp not in done)
        eta = f"; about {left * float(np.mean(walls)) / 60:.1f} min left" if left else ""
        _say(f"{head}: done in {wall:.1f} s (train {t_train:.1f} s), test AUC {_fmt(record['test_auc'], 4)}{eta}")

    # ---- statistics and report -------------------------------------------------------------------
    _say(f"statistics: {n_resamples} shared bootstrap resamples over {n} run(s)")
    stats = study_statistics({spec: runs_dir / spec.name / RUN_FILES["predictions"] for spec in specs},
                             n_resamples=n_resamples, confidence=confidence, seed=bootstrap_seed,
                             min_test_positives=min_test_positives)
    if demo:
        stats["notes"].insert(0, "SYNTHETIC demo phantoms (--allow-demo): these numbers mean nothing clinically")
    auc_by_name = {r["name"]: r["test_auc"] for r in stats["runs"]}
    add_label_counts(stats, {spec: done[spec] for spec in specs})
    results = {
        "study": {
            "out": str(out), "bundle_dir": str(bundle_dir), "data": {**source, **test_info},
            "synthetic_demo": demo, "inits": init_info, "modes": modes, "fractions": fractions, "seeds": seeds,
            "linear_solver": linear_solver if "linear" in modes else None,
            "epochs": epochs, "learning_rate": lrs, "backbone": backbone, "image_size": image_size,
            "batch_size": batch_size, "overrides": extra, "eval_resamples": eval_resamples,
        },
        "runs": [{
            "name": spec.name, "run_dir": str(runs_dir / spec.name), "init": spec.init, "mode": spec.mode,
            "label_fraction": spec.fraction, "seed": spec.seed, "settings": done[spec]["settings"],
            "wall_time_s": done[spec].get("wall_time_s"), "test_auc": auc_by_name.get(spec.name),
            "bundle_test_auc": done[spec].get("test_auc"), "best_epoch": done[spec].get("best_epoch"),
            "n_train": done[spec].get("n_train"), "n_val": done[spec].get("n_val"),
            "n_labels": done[spec].get("n_labels"), "n_patients": done[spec].get("n_patients"),
            "selection": done[spec].get("selection"), "finished": done[spec].get("finished"),
        } for spec in specs],
        "table": stats["rows"],
        "per_finding": stats["per_finding"],
        "test_set": stats["test_set"],
        "bootstrap": stats["bootstrap"],
        "reference": stats["reference"],
        "notes": stats["notes"],
        "statistics": {
            "auc_mean_sd": "mean and sample SD (ddof=1) of the per-seed test AUCs",
            "ci": "percentile bootstrap CI of the seed-mean AUC; resamples drawn once, every run evaluated on "
                  "them, AUCs averaged over seeds within each resample",
            "vs_reference": "mean over seeds of AUC(init) - AUC(reference) at the same mode, fraction and seed; "
                            "percentile CI of the seed-averaged resampled differences; two-sided p = min(1, 2 "
                            "min(1 + #{d*<=0}, 1 + #{d*>=0}) / (B' + 1))",
        },
    }
    with atomic_write(out / "results.json", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    table = format_table(stats)
    with atomic_write(out / "table.md", "w", encoding="utf-8") as f:
        f.write(("**SYNTHETIC demo data: meaningless numbers.**\n\n" if demo else "") + table)
    per_finding = format_per_finding(stats)
    if per_finding:
        with atomic_write(out / "per_finding.md", "w", encoding="utf-8") as f:
            f.write(("**SYNTHETIC demo data: meaningless numbers.**\n\n" if demo else "") + per_finding)
        _say(f"per-finding AUCs in {out / 'per_finding.md'}")
    plot_auc_vs_fraction(stats, out / "auc_vs_fraction.png",
                         title=f"Label efficiency ({backbone}, {test_info['n_test']} test images)"
                               + (" - SYNTHETIC demo" if demo else ""))
    _say(f"wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'auc_vs_fraction.png'} "
         f"({time.monotonic() - t_start:.1f} s in all)")
    print("\n" + table, flush=True)
    return results
