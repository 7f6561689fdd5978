"""The command line: ``python -m monai_cxrssl.experiments.label_efficiency``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from monai_cxrssl.exceptions import CXRSSLError

from .contract import DEFAULT_BUNDLE_DIR, MODES
from .study import run_study


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
