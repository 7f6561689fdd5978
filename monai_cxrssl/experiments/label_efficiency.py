"""Label-efficiency study: how much does a pretrained backbone help as labels get scarce?

One command trains and evaluates the classifier bundle (``bundles/cxr_classifier``) for every
combination of

- **initialisation** (``--init``): ``random``, or a pretraining bundle's ``models/backbone.pt``
  (``name=path``, e.g. ``simclr=bundles/simclr_cxr/models/backbone.pt``);
- **mode** (``--modes``): ``linear`` (linear probe: frozen backbone, only the head trains: how good
  are the features as they are) and ``finetune`` (end to end: how good a starting point they are).
  The linear probe is by default (``--linear-solver lbfgs``) an L2-regularised logistic regression
  on standardised features trained to convergence, its ``C`` chosen by patient-grouped
  cross-validation inside the labelled entries (:class:`~monai_cxrssl.engines.LogisticProbe`);
  ``--linear-solver adamw`` trains the head by AdamW for ``--epochs-linear`` epochs instead;
- **label fraction** (``--fractions``): the share of the labelled entries a run uses, ALL its labels
  counted: a stratified draw that is nested across fractions for one seed (the 1 % draw lies inside
  the 10 % draw), and the validation set (model selection, early stopping) is drawn from inside it
  (:class:`~monai_cxrssl.data.ClassificationData`), so no label outside the budget is used. Every
  run records ``n_labels`` (training + validation) and ``n_patients``, and the table states them;
- **seed** (``--seeds``): which labelled subset is drawn (and the validation carve-out, the head's
  initialisation and the batch order). Several draws per fraction matter most at small fractions,
  where which few images are labelled changes the result more than anything else.

This is the protocol of MoCo-CXR (Sowrirajan et al., MIDL 2021): linear probe vs end-to-end
fine-tuning at label fractions, pretrained vs baseline initialisation, several draws; see also
Azizi et al. (ICCV 2021). Runs of different initialisations with the same (mode, fraction,
seed) see exactly the same labelled images, so their difference is paired.

Usage::

    python -m monai_cxrssl.experiments.label_efficiency --out studies/kermany \\
        --dataset_dir /data/kermany --init random --init simclr=bundles/simclr_cxr/models/backbone.pt \\
        --modes linear finetune --fractions 0.01 0.1 1.0 --seeds 0 1 2 \\
        [--epochs-linear 10 --epochs-finetune 5 --lr-linear 0.01 --lr-finetune 1e-4 --backbone resnet18 \\
         --image-size 64 --batch-size 64 --n-resamples 1000 --set patience=3 --set device=cuda]

or from Python: :func:`run_study` with the same parameters.

**Checks before any training.** Every init file is loaded into the chosen backbone (a checkpoint of
another backbone is an error naming the init and the file); the data source resolves and every
(fraction, seed) draw is valid (:class:`~monai_cxrssl.data.ClassificationData`: every class present
in the drawn labels, label keys present); the test list is non-empty with both classes for at
least one output; ``--set`` names no setting the study controls; a finished run already in the study
folder was made with the same settings, init files included (their SHA-256), else the study refuses
to mix results. Without
``--dataset_dir``/``--datalist`` the classifier would train on the SYNTHETIC demo phantoms: the
study refuses that unless ``--allow-demo`` is given (smoke tests only; a study on phantoms means
nothing).

**Runs and resumption.** Run ``<init>-<mode>-f<fraction>-s<seed>`` trains in
``STUDY_DIR/runs/<name>/`` (the bundle's ``output_dir``: ``models/``, ``checkpoint.pt``,
``tensorboard/``), then the bundle's ``evaluate.json`` writes ``eval/predictions.csv`` and
``eval/metrics.json`` for the test list, and the study writes ``done.json`` (atomically: the
run's settings, wall time, test AUC) last. Bundles run in this process
(:class:`monai.bundle.ConfigWorkflow`); each run's log goes to ``runs/<name>/log.txt``.
Re-running the same command skips every run that has ``done.json``. A run folder without
``done.json`` was interrupted: it is **deleted and restarted from scratch**, not resumed from its
``checkpoint.pt``. Resuming would save at most one run's time, but a run can be interrupted
anywhere (during training, after the last epoch, during evaluation, between writes), and a fresh
start is the one behaviour that is correct in every case and gives results independent of when
the interruption happened.

**Statistics** (after all runs, from the runs' ``eval/predictions.csv``; all runs must have the
same test images in the same order with the same labels, which is checked). The AUC of a run is
the ROC AUC for a binary task, else the macro mean over the outputs (findings, or classes
one-vs-rest) that have both classes in the test set, as in
:func:`~monai_cxrssl.evaluation.stats.multilabel_auc`. For each (init, mode, fraction) with seeds
``s = 1..S``:

- ``AUC mean ± SD``: mean and sample standard deviation (``ddof = 1``) of the per-seed test AUCs:
  the SD is the training variability (labelled subset, initialisation of the head, batch order);
- ``95% CI``: percentile bootstrap (Efron & Tibshirani 1993, ch. 13) of the seed-mean AUC. The test
  set is resampled at the patient level (whole patients with all their images, when every image
  has a patient id; else image by image) ``--n-resamples`` times; the resamples are drawn ONCE and
  every run is evaluated on the same resamples; within a resample the AUCs are averaged over
  seeds; the interval is the 2.5 and 97.5 percentiles of these averages. It is the test-set
  sampling uncertainty of the seed mean, for these trained models;
- ``Δ vs random``: for every init other than ``random``, the seed-averaged paired difference
  ``mean_s (AUC_init,s - AUC_random,s)`` with the same mode, fraction and seed (same labelled
  subset), its percentile interval over the shared resamples (the difference is averaged over
  seeds within each resample) and the two-sided bootstrap p-value
  ``p = min(1, 2 min(1 + #{d* <= 0}, 1 + #{d* >= 0}) / (B + 1))``, as in
  :func:`~monai_cxrssl.evaluation.stats.paired_bootstrap_auc_diff` (smallest possible value
  ``2 / (B + 1)``). Without a ``random`` init the comparisons are skipped, with a note.

- ``verdict``: ``better`` when that interval lies above 0, ``WORSE: negative transfer`` when it lies
  below 0 (also listed in the notes and printed in bold in the table: an initialisation that hurts is
  reported, never hidden), else ``no clear difference``.

**Transfer studies.** The labelled data (``--dataset_dir``/``--datalist``) can be a target dataset
other than the pretraining data, and the inits any mix of pretraining stages: e.g. ``random``,
``source=`` (SSL on the source), ``two_stage=`` (source SSL continued on the target's unlabelled
training images with the pretraining bundle's ``--init_weights``) and ``target=`` (SSL on the target only).
Supervised pretraining on a labelled source, the third arm of the DINOv2 study, is an init like the
others: a classifier fine-tuned on the source (e.g. NIH's 14 findings) writes its backbone to
``models/backbone.pt`` (method ``supervised``), e.g. ``supervised_nih=runs/supervised_nih/models/backbone.pt``.

All of it is :func:`monai_cxrssl.evaluation.stats.seed_averaged_bootstrap`, applied by
:func:`study_statistics`. p-values are not corrected for the number of comparisons.

**Outputs** in ``STUDY_DIR``: ``results.json`` (the study's settings, every run's settings, wall
time, labels used and test AUC, the aggregated table), ``table.md`` (init | mode | fraction | labels
(patients) | n seeds | AUC mean ± SD | 95% CI | Δ vs random [95% CI] | p | verdict; printed at the
end), for a multi-label or multi-class task ``per_finding.md`` (each finding's AUC with its CI and
paired difference; findings with fewer than ``--min-test-positives`` test positives or negatives are
left out of it and of the macro AUC, listed with the reason), and ``auc_vs_fraction.png`` (AUC vs
label fraction on a log axis with the labels used under each tick, one line per init x mode, 95% CI
error bars).

References:

- Sowrirajan H, Yang J, Ng AY, Rajpurkar P. MoCo-CXR: MoCo pretraining improves representation and
  transferability of chest X-ray models. MIDL 2021.
- Azizi S, et al. Big self-supervised models advance medical image classification. ICCV 2021.
- Efron B, Tibshirani RJ. An Introduction to the Bootstrap. Chapman & Hall, 1993.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from monai_cxrssl.exceptions import CXRSSLError
from monai_cxrssl.paths import REPO_ROOT
from monai_cxrssl.utils import atomic_write

__all__ = [
    "StudyError",
    "RunSpec",
    "DEFAULT_BUNDLE_DIR",
    "RUN_FILES",
    "run_study",
    "study_statistics",
    "format_table",
    "format_per_finding",
    "add_label_counts",
    "plot_auc_vs_fraction",
    "parse_init",
    "parse_overrides",
    "main",
]

logger = logging.getLogger(__name__)

#: The classifier bundle run for every (init, mode, fraction, seed).
#: the classifier bundle of the source checkout (an editable install); with the package installed from a wheel,
#: ``bundles/cxr_classifier`` under the current directory (run from a copy of the repository's bundles/)
DEFAULT_BUNDLE_DIR = (REPO_ROOT / "bundles" / "cxr_classifier" if (REPO_ROOT / "bundles" / "cxr_classifier").is_dir()
                      else Path("bundles") / "cxr_classifier")
MODES = ("linear", "finetune")
RANDOM = "random"
DONE = "done.json"
#: bundle settings that the study sets itself for every run (not allowed in ``--set``), and the option to use instead
CONTROLLED = {
    "output_dir": "--out", "bundle_root": "--bundle-dir", "init_weights": "--init", "mode": "--modes",
    "label_fraction": "--fractions", "seed": "--seeds", "epochs": "--epochs-linear/--epochs-finetune",
    "learning_rate": "--lr-linear/--lr-finetune", "backbone": "--backbone", "image_size": "--image-size",
    "batch_size": "--batch-size", "dataset_dir": "--dataset_dir", "datalist": "--datalist",
    "demo_dir": "--allow-demo", "progress": None, "resume": None, "n_resamples": "--eval-resamples",
    "model_path": None, "eval_dir": None, "linear_solver": "--linear-solver",
}
#: The classifier bundle's side of the contract the study relies on (``tests/test_label_efficiency.py`` checks it
#: against the bundle's ``train.json`` and ``evaluate.json``): the settings of :data:`CONTROLLED`, which the study
#: gives every run, and the files a finished run leaves, relative to its ``output_dir``.
RUN_FILES = {"metrics": "eval/metrics.json", "predictions": "eval/predictions.csv",
             "model_info": "models/model_info.json"}
_INIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+]*$")


class StudyError(CXRSSLError, ValueError):
    """The study cannot run as asked: bad option, init file, data, or a study folder holding other settings."""


@dataclass(frozen=True)
class RunSpec:
    """One bundle run of the study."""

    init: str
    mode: str
    fraction: float
    seed: int

    @property
    def name(self) -> str:
        """Folder name: ``<init>-<mode>-f<fraction>-s<seed>``, e.g. ``simclr-linear-f0.01-s0``."""
        return f"{self.init}-{self.mode}-f{float(self.fraction)}-s{self.seed}"

    @property
    def config(self) -> tuple[str, str, float]:
        """The configuration the run is a seed of: ``(init, mode, fraction)``."""
        return (self.init, self.mode, float(self.fraction))


def _say(msg: str) -> None:
    print(f"[label-efficiency] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------
# parsing and checking the options
# ----------------------------------------------------------------------------------------------


def parse_init(text: str) -> tuple[str, str | None]:
    """``"random"`` -> ``("random", None)``; ``"name=path"`` -> ``(name, path)``.

    Raises:
        StudyError: a bare path, an empty part, a name with characters other than letters, digits,
            ``_``, ``.``, ``+`` (``-`` separates the parts of run folder names), or ``random=path``.
    """
    text = str(text).strip()
    if text == RANDOM:
        return RANDOM, None
    if "=" not in text:
        raise StudyError(f"--init {text!r}: expected 'random' or NAME=PATH (e.g. simclr=bundles/simclr_cxr/models/backbone.pt); "
                         "the name labels the init in run folders and in the table")
    name, path = (part.strip() for part in text.split("=", 1))
    if not name or not path:
        raise StudyError(f"--init {text!r}: both NAME and PATH are needed in NAME=PATH")
    if name == RANDOM:
        raise StudyError(f"--init {text!r}: 'random' names the random initialisation (no file); give this file another name")
    if not _INIT_NAME.match(name):
        raise StudyError(f"--init {text!r}: the name {name!r} may hold only letters, digits, '_', '.' and '+', "
                         "starting with a letter or digit ('-' separates the parts of run folder names)")
    return name, path


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_overrides(items: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["patience=3", "device=cuda"]`` -> ``{"patience": 3, "device": "cuda"}`` (values read as JSON
    when they are JSON: numbers, ``true``/``false``, ``null``, lists; else kept as text).

    Raises:
        StudyError: an item without ``=``, or a key the study sets itself (the message names the option to use).
    """
    if items is None:
        return {}
    if isinstance(items, Mapping):
        out = dict(items)
    else:
        out = {}
        for item in items:
            if "=" not in str(item):
                raise StudyError(f"--set {item!r}: expected KEY=VALUE, e.g. --set patience=3")
            key, value = str(item).split("=", 1)
            key = key.strip()
            if not key:
                raise StudyError(f"--set {item!r}: empty key")
            out[key] = _parse_value(value.strip())
    for key in out:
        if key in CONTROLLED:
            hint = f"; use {CONTROLLED[key]}" if CONTROLLED[key] else ""
            raise StudyError(f"--set {key}=...: the study sets '{key}' itself for every run{hint}")
    return out


def _unique(values, what: str, cast) -> list:
    out = []
    for v in values:
        try:
            c = cast(v)
        except (TypeError, ValueError):
            raise StudyError(f"{what}: {v!r} is not a valid value") from None
        if c not in out:
            out.append(c)
    if not out:
        raise StudyError(f"{what}: give at least one value")
    return out


def _positive(value, what: str, cast=float):
    kind = "integer" if cast is int else "number"
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or not (v > 0 and math.isfinite(v)) or (cast is int and v != int(v)):
        raise StudyError(f"{what} must be a positive {kind}, got {value!r}")
    return cast(v)


def _normalise_inits(inits) -> dict[str, str | None]:
    pairs = list(inits.items()) if isinstance(inits, Mapping) else [parse_init(t) for t in (inits or [])]
    if not pairs:
        raise StudyError("no --init given: give 'random' and/or NAME=PATH of pretrained backbones")
    out: dict[str, str | None] = {}
    for name, path in pairs:
        if name in out:
            raise StudyError(f"--init: the name {name!r} is given twice")
        if name != RANDOM and path in (None, "", RANDOM):
            raise StudyError(f"--init {name}: no file given")
        out[name] = None if name == RANDOM else str(Path(path).expanduser().resolve())
    return out


def _check_inits(inits: dict[str, str | None], backbone: str) -> dict[str, dict]:
    """Load every init file into a fresh ``backbone``; return ``{name: {"path", "sha256", "method"}}``."""
    from monai_cxrssl.networks import build_backbone, init_backbone

    try:
        build_backbone(backbone)
    except Exception as e:
        raise StudyError(f"--backbone {backbone!r} cannot be built: {e}") from None
    checked = {}
    for name, path in inits.items():
        if path is None:
            checked[name] = {"path": None, "sha256": None}
            continue
        if not Path(path).is_file():
            raise StudyError(f"init '{name}': the file '{path}' does not exist")
        try:
            report = init_backbone(build_backbone(backbone), path)
        except Exception as e:  # CheckpointError and anything a foreign file may raise
            raise StudyError(f"init '{name}': the file '{path}' cannot initialise the backbone {backbone!r}: {e}") from None
        checked[name] = {"path": path, "sha256": report["sha256"], "method": report.get("method"),
                         "format": report.get("format")}
        _say(f"init {name}: {path} loads into {backbone} ({report.get('format')}, method {report.get('method')})")
    return checked


def _test_signature(data) -> dict:
    items = data.test_items
    return {"images": [str(e["image"]) for e in items], "patients": [str(e.get("patient_id", "")) for e in items]}


def _check_data(source: dict, fractions, seeds, data_options: dict, validated: bool = True) -> dict:
    """Build :class:`ClassificationData` for every (fraction, seed); return a description of the test set."""
    from monai_cxrssl.data import ClassificationData

    reference = None
    description = {}
    for f in fractions:
        for s in seeds:
            try:
                options = data_options if validated else {**data_options, "val_fraction": 0.0}
                data = ClassificationData(dataset_dir=source["dataset_dir"] or None, datalist=source["datalist"] or None,
                                          demo_dir=source["demo_dir"], label_fraction=f, seed=s, **options)
            except (CXRSSLError, ValueError, OSError) as e:
                raise StudyError(f"the data cannot be drawn at label fraction {f} with seed {s}: {e}") from None
            signature = _test_signature(data)
            if reference is None:
                if not signature["images"]:
                    raise StudyError(f"'{data.source}' has no test list: the study evaluates every run on it; "
                                     "split the datalist first (python -m monai_cxrssl split ... --test 0.2)")
                y = data.targets("test")
                usable = [k for k in range(y.shape[1])
                          if ((y[:, k] == 1).any() and (y[:, k] == 0).any())]
                if not usable:
                    raise StudyError(f"the test list of '{data.source}' has no output with both a positive and a "
                                     "negative example: its AUC is undefined")
                reference = signature
                description = {"source": data.source, "task": data.task, "classes": list(data.classes),
                               "n_test": len(signature["images"]), "n_val": len(data.val_items)}
            elif signature != reference:
                raise StudyError(f"the test list changes with label fraction {f} / seed {s}; it must be fixed")
            description.setdefault("n_train", {})[f"f{float(f)}-s{s}"] = len(data.train_items)
            description.setdefault("n_labels", {})[f"f{float(f)}-s{s}"] = data.n_labels
    return description


def _settings_diff(found: Mapping, expected: Mapping) -> dict:
    keys = sorted(set(found) | set(expected))
    return {k: (found.get(k), expected.get(k)) for k in keys if found.get(k) != expected.get(k)}


# ----------------------------------------------------------------------------------------------
# running the bundle in this process
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _run_log(path: Path) -> Iterator[None]:
    """Send every log record of at least INFO to ``path`` while the run lasts."""
    root = logging.getLogger()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    old_level = root.level
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def _bundle(config_files: Sequence[Path], workflow_type: str, overrides: dict) -> None:
    """``initialize``, ``run``, ``finalize`` of a config workflow, in this process."""
    from monai.bundle import ConfigWorkflow
    from monai.handlers import TensorBoardHandler

    quiet = logging.getLogger("monai.bundle.workflows")  # it warns that we pass no logging file: on purpose
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        wf = ConfigWorkflow(config_file=[str(f) for f in config_files], workflow_type=workflow_type, logging_file=False,
                            **overrides)
    finally:
        quiet.setLevel(level)
    saved_path = list(sys.path)  # ConfigWorkflow.run prepends the bundle folder
    try:
        wf.initialize()
        wf.run()
        wf.finalize()
    finally:
        sys.path[:] = saved_path
        # close the TensorBoard writers the run created (open files otherwise, one per handler and run)
        for obj in list(getattr(wf.parser.ref_resolver, "resolved_content", {}).values()):
            if isinstance(obj, TensorBoardHandler):
                with contextlib.suppress(Exception):
                    obj.close()
        del wf
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------


def _read_predictions(path: Path) -> dict:
    from monai_cxrssl.evaluation.report import read_predictions

    try:
        return read_predictions(path)
    except FileNotFoundError:
        raise StudyError(f"'{path}' does not exist: the run did not finish its evaluation") from None
    except ValueError as e:
        raise StudyError(str(e)) from None


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


def format_per_finding(stats: Mapping) -> str:
    """Markdown: per finding, mode and fraction, each init's AUC [CI] and its difference from the reference."""
    rows = stats.get("per_finding") or []
    if not rows:
        return ""
    ref = stats.get("reference", RANDOM)
    pct = round(100 * stats["bootstrap"]["confidence"])
    inits = list(dict.fromkeys(r["init"] for r in rows))
    lines = [f"| finding | test pos / neg | mode | fraction | " + " | ".join(
        f"{i} AUC [{pct}% CI]" + ("" if i == ref else f" (Δ vs {ref} [{pct}% CI])") for i in inits) + " |",
        "|---|---|---|---|" + "---|" * len(inits)]
    keys = list(dict.fromkeys((r["finding"], r["mode"], r["fraction"]) for r in rows))
    by = {(r["finding"], r["mode"], r["fraction"], r["init"]): r for r in rows}
    for finding, mode, fraction in keys:
        cells = []
        for i in inits:
            r = by.get((finding, mode, fraction, i))
            if r is None:
                cells.append("—")
                continue
            cell = f"{_fmt(r['auc_mean'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
            v = r["vs_reference"]
            if v is not None:
                cell += f" ({v['diff']:+.3f} [{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}])"
            cells.append(cell)
        any_row = next(r for r in rows if r["finding"] == finding)
        lines.append(f"| {finding} | {any_row['n_test_positive']} / {any_row['n_test_negative']} | {mode} | "
                     f"{fraction:g} | " + " | ".join(cells) + " |")
    excluded = stats["test_set"].get("excluded") or {}
    legend = ["", f"Per finding: seed-mean test AUC, {pct}% percentile bootstrap CI on the resamples shared with "
                  "the macro table; Δ: paired difference from the same mode, fraction and seeds of the "
                  f"{ref} init (not corrected for multiple comparisons)."]
    legend += [f"Left out: {name}: {why}." for name, why in excluded.items()]
    return "\n".join(lines + legend) + "\n"


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


def _span(values) -> str:
    values = [v for v in (values or []) if v is not None]
    if not values:
        return "n/a"
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "1" if p >= 1.0 else f"{p:.2g}" if p < 0.01 else f"{p:.3f}"


def format_table(stats: Mapping) -> str:
    """The Markdown table of :func:`study_statistics`'s rows, with a legend."""
    ref = stats.get("reference", RANDOM)
    boot = stats["bootstrap"]
    pct = round(100 * boot["confidence"])
    counts = any(r.get("n_labels") for r in stats["rows"])
    lines = [f"| init | mode | fraction |{' labels (patients) |' if counts else ''} n seeds | AUC mean ± SD | {pct}% CI "
             f"| Δ vs {ref} [{pct}% CI] | p | verdict |",
             "|---|---|---|" + ("---|" if counts else "") + "---|---|---|---|---|---|"]
    for r in stats["rows"]:
        sd = "" if r["auc_sd"] is None else f" ± {_fmt(r['auc_sd'])}"
        ci = f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
        v = r["vs_reference"]
        if v is None:
            delta, p = "—", "—"
        else:
            delta = f"{v['diff']:+.3f} [{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}]"
            p = _fmt_p(v["p_value"])
        verdict = r.get("verdict", transfer_verdict(v)) or "—"
        used = f" {_span(r.get('n_labels'))} ({_span(r.get('n_patients'))}) |" if counts else ""
        lines.append(f"| {r['init']} | {r['mode']} | {r['fraction']:g} |{used} {r['n_seeds']} | {_fmt(r['auc_mean'])}{sd} "
                     f"| {ci} | {delta} | {p} | {'**' + verdict + '**' if verdict == WORSE else verdict} |")
    ts = stats["test_set"]
    unit = (f"{ts['n_patients']} patients" if boot["resampling"] == "patient" else f"{ts['n_images']} images")
    legend = [
        "",
        f"Test set: {ts['n_images']} images"
        + (f", {ts['n_patients']} patients" if ts.get("n_patients") else "") + f"; AUC = {ts['auc']}.",
        *(["Labels: every label a run used, training and validation (model selection) together, over the seeds' "
           "draws; patients: those they come from."] if counts else []),
        f"AUC mean ± SD over seeds (label-fraction draws). {pct}% CI: percentile bootstrap of the seed-mean AUC, "
        f"{boot['n_resamples']} {boot['resampling']}-level resamples of the test set ({unit}), shared by all runs.",
        f"Δ: seed-averaged paired AUC difference vs the {ref} init (same mode, fraction and seed, hence the same "
        "labelled images), percentile CI and two-sided bootstrap p-value on the same resamples (not corrected for "
        "multiple comparisons). Verdict: better / WORSE (negative transfer) when that interval lies entirely above / "
        "below 0, else no clear difference.",
    ]
    legend += [f"Note: {n}" for n in stats.get("notes", [])]
    return "\n".join(lines + legend) + "\n"


def plot_auc_vs_fraction(stats: Mapping, path: str | os.PathLike, title: str | None = None) -> Path:
    """AUC vs label fraction (log axis), one line per init x mode with CI error bars; written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    rows = stats["rows"]
    inits = list(dict.fromkeys(r["init"] for r in rows))
    colors = {init: f"C{i % 10}" for i, init in enumerate(inits)}
    styles = {"linear": ("--", "s"), "finetune": ("-", "o")}
    fractions = sorted({r["fraction"] for r in rows})
    lines = [(init, mode) for init in inits for mode in dict.fromkeys(r["mode"] for r in rows)
             if any(r["init"] == init and r["mode"] == mode for r in rows)]
    for k, (init, mode) in enumerate(lines):
        sel = sorted((r for r in rows if r["init"] == init and r["mode"] == mode), key=lambda r: r["fraction"])
        dodge = 10 ** (0.015 * (k - (len(lines) - 1) / 2))  # side by side, so that the error bars stay apart
        x = np.array([r["fraction"] for r in sel]) * dodge
        m = np.array([r["auc_mean"] for r in sel], dtype=float)
        lo = np.array([r["ci_low"] if r["ci_low"] is not None else r["auc_mean"] for r in sel], dtype=float)
        hi = np.array([r["ci_high"] if r["ci_high"] is not None else r["auc_mean"] for r in sel], dtype=float)
        ls, marker = styles.get(mode, (":", "^"))
        ax.errorbar(x, m, yerr=np.vstack([m - lo, hi - m]).clip(min=0), color=colors[init], linestyle=ls,
                    marker=marker, capsize=3, label=f"{init} ({mode})")
    ax.set_xscale("log")
    ax.set_xticks(fractions)
    used = {f: _span([n for r in rows if r["fraction"] == f for n in (r.get("n_labels") or [])]) for f in fractions}
    ax.set_xticklabels([f"{100 * f:g}%" + (f"\n{used[f]} labels" if used[f] != "n/a" else "") for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("label fraction (log scale), and the labels a run used (training + validation)")
    pct = round(100 * stats["bootstrap"]["confidence"])
    ax.set_ylabel(f"test AUC (mean over seeds, {pct}% CI)")
    ax.set_title(title or "Label efficiency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    return path


# ----------------------------------------------------------------------------------------------
# the study
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from monai_cxrssl.engines.classification import LINEAR_SOLVERS

    p = argparse.ArgumentParser(
        prog="python -m monai_cxrssl.experiments.label_efficiency",
        description="Label-efficiency study: the cxr_classifier bundle for every init x mode x label fraction x seed, "
                    "then mean AUC over seeds with patient-level bootstrap CIs and paired comparisons with the random "
                    "init. Re-running the same command skips finished runs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="study folder")
    p.add_argument("--dataset_dir", "--dataset-dir", dest="dataset_dir", help="labelled dataset folder")
    p.add_argument("--datalist", help="MONAI datalist JSON with training/(validation)/test lists")
    p.add_argument("--init", dest="inits", action="extend", nargs="+", required=True, metavar="INIT",
                   help="'random' or NAME=PATH of a backbone export (repeatable)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1, 1.0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--linear-solver", "--linear_solver", dest="linear_solver", choices=LINEAR_SOLVERS,
                   default="lbfgs", help="linear probe: logistic regression to convergence with C by cross-validation "
                                         "(lbfgs), or the head by AdamW for --epochs-linear epochs (adamw)")
    p.add_argument("--epochs-linear", "--epochs_linear", dest="epochs_linear", type=int, default=10)
    p.add_argument("--epochs-finetune", "--epochs_finetune", dest="epochs_finetune", type=int, default=5)
    p.add_argument("--lr-linear", "--lr_linear", dest="lr_linear", type=float, default=0.01)
    p.add_argument("--lr-finetune", "--lr_finetune", dest="lr_finetune", type=float, default=1e-4)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", "--image_size", dest="image_size", type=int, default=64)
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=64)
    p.add_argument("--n-resamples", "--n_resamples", dest="n_resamples", type=int, default=1000,
                   help="bootstrap resamples of the study's statistics")
    p.add_argument("--eval-resamples", "--eval_resamples", dest="eval_resamples", type=int, default=200,
                   help="bootstrap resamples of each run's own eval/metrics.json")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--bootstrap-seed", "--bootstrap_seed", dest="bootstrap_seed", type=int, default=0)
    p.add_argument("--min-test-positives", "--min_test_positives", dest="min_test_positives", type=int, default=5,
                   help="multi-label/multi-class: outputs with fewer positive (or negative) test patients are left "
                        "out of the macro AUC, with the reason")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any other classifier-bundle setting, e.g. --set patience=3 --set device=cuda")
    p.add_argument("--allow-demo", "--allow_demo", dest="allow_demo", action="store_true",
                   help="allow the SYNTHETIC demo phantoms when no data are given (smoke tests only)")
    p.add_argument("--bundle-dir", "--bundle_dir", dest="bundle_dir", default=str(DEFAULT_BUNDLE_DIR))
    p.add_argument("--verbose", action="store_true", help="also print the bundles' INFO logs (always in runs/*/log.txt)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    verbose = args.pop("verbose")
    root = logging.getLogger()
    if not root.handlers:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
        console.setLevel(logging.INFO if verbose else logging.WARNING)
        root.addHandler(console)
    try:
        run_study(**args)
    except CXRSSLError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
