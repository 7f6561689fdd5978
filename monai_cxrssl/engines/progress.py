"""Progress display for long runs."""

from __future__ import annotations

from ignite.engine import Engine

from monai_cxrssl.engines.trainer import scalar_outputs
from monai_cxrssl.utils import as_bool

__all__ = ["ProgressHandler"]


class ProgressHandler:
    """A tqdm progress bar per epoch showing the latest loss (Ignite ``ProgressBar``), MONAI-attachable.

    Args:
        enabled: ``False`` attaches nothing (e.g. in batch jobs whose logs should stay clean).
        persist: keep each epoch's finished bar on screen.
    """

    def __init__(self, enabled: bool = True, persist: bool = False):
        self.enabled = as_bool(enabled, "progress")
        self.persist = as_bool(persist, "persist")

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        from ignite.handlers import ProgressBar

        ProgressBar(persist=self.persist).attach(engine, output_transform=scalar_outputs)
