"""Experiments built on the bundles: studies made of many bundle runs, with their statistics.

- :mod:`monai_cxrssl.experiments.label_efficiency`: the label-efficiency study (initialisations x
  linear probe / fine-tuning x label fractions x seeds, AUC with bootstrap CIs and paired
  comparisons with the random initialisation); ``python -m monai_cxrssl.experiments.label_efficiency``.

Names are imported lazily, so that importing this package (and ``python -m`` on its modules)
stays cheap and never imports a module twice.
"""

from __future__ import annotations

import importlib

__all__ = ["run_study", "study_statistics"]

_LAZY = {"run_study": "label_efficiency", "study_statistics": "label_efficiency"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
