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

The package, one concept per module::

    contract.py     what the study relies on of the classifier bundle (CONTROLLED, RUN_FILES), a run (RunSpec)
    checks.py       the options, inits, data and an earlier study folder, checked before anything trains
    runner.py       one classifier-bundle run in this process, its log; reading its predictions back
    study.py        run_study: every run, resumable, then statistics, table and plot
    statistics.py   AUCs with bootstrap intervals over seeds, paired differences, per-finding rows, verdicts
    report.py       the Markdown tables and the AUC-vs-fraction plot
    cli.py          the command line (``python -m monai_cxrssl.experiments.label_efficiency``)
"""

from __future__ import annotations

from .cli import build_parser, main
from .contract import CONTROLLED, DEFAULT_BUNDLE_DIR, DONE, MODES, RANDOM, RUN_FILES, RunSpec, StudyError
from .checks import parse_init, parse_overrides
from .report import format_per_finding, format_table, plot_auc_vs_fraction
from .statistics import BETTER, UNCLEAR, WORSE, add_label_counts, study_statistics, transfer_verdict
from .study import run_study

__all__ = [
    "StudyError",
    "RunSpec",
    "CONTROLLED",
    "DEFAULT_BUNDLE_DIR",
    "RUN_FILES",
    "DONE",
    "MODES",
    "RANDOM",
    "BETTER",
    "UNCLEAR",
    "WORSE",
    "run_study",
    "study_statistics",
    "format_table",
    "format_per_finding",
    "add_label_counts",
    "plot_auc_vs_fraction",
    "parse_init",
    "parse_overrides",
    "transfer_verdict",
    "build_parser",
    "main",
]
