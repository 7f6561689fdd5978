"""Every SSL method, found as users' bundles find it (``monai_cxrssl.methods.available()``), built small.

A test over all methods parametrises over :data:`METHODS` and builds each with :func:`small`, so that a new
method module is tested without editing the tests. Settings a method does not take are left out.
"""

from __future__ import annotations

import inspect
import json

from monai_cxrssl import methods
from monai_cxrssl.engines.schedules import ScheduleTable
from monai_cxrssl.paths import REPO_ROOT

METHODS = sorted(methods.available())
#: small values of the methods' settings (each method takes those its constructor names)
SMALL_SETTINGS = {"hidden_dim": 32, "out_dim": 16, "predictor_hidden_dim": 32, "queue_size": 24, "n_local_crops": 2,
                  "bottleneck_dim": 8, "temperature": 0.2}


def small(name: str, backbone, **settings):
    """Method ``name`` on ``backbone`` with :data:`SMALL_SETTINGS` and ``settings`` (those it takes)."""
    cls = methods.available()[name]
    takes = inspect.signature(cls).parameters
    return cls(backbone, **{k: v for k, v in {**SMALL_SETTINGS, **settings}.items() if k in takes})


def step_values(method, iteration: int, total: int) -> dict[str, float]:
    """What the trainer hands ``method.before_step`` at ``iteration`` of a ``total``-iteration run."""
    return ScheduleTable(total, method.schedules()).at(iteration)


def bundles() -> list[str]:
    """The pretraining bundles: folders of ``bundles/`` with a ``configs/method.json``."""
    return sorted(p.parent.parent.name for p in (REPO_ROOT / "bundles").glob("*/configs/method.json"))


def default_backbone(name: str) -> str:
    """The backbone the bundle of method ``name`` trains by default."""
    for bundle in bundles():
        config = json.loads((REPO_ROOT / "bundles" / bundle / "configs" / "train.json").read_text())
        if config["network_def"]["_target_"].rsplit(".", 1)[-1] == methods.available()[name].__name__:
            return config["backbone"]
    raise LookupError(f"no bundle trains the method '{name}'")
