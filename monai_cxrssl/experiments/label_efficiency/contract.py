"""What the study relies on, declared: the classifier bundle it runs (its settings the study controls, the files a run
leaves), the identity of a run, the study's error."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from monai_cxrssl.exceptions import CXRSSLError
from monai_cxrssl.paths import REPO_ROOT


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
