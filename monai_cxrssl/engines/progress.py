"""Progress display and scalar logging for long runs, for any engine (SSL or supervised)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Number

import torch
from ignite.engine import Engine

from monai_cxrssl.utils import as_bool

__all__ = ["ProgressHandler", "scalar_outputs"]


def _scalar(value) -> float | None:
    if isinstance(value, torch.Tensor):
        return float(value.detach()) if value.numel() == 1 else None
    if isinstance(value, Number) and not isinstance(value, bool):
        return float(value)
    return None


def scalar_outputs(output) -> dict[str, float]:
    """The scalars of an engine's iteration output as plain floats, everything else left out.

    Works for every engine of the project: :class:`~monai_cxrssl.engines.SSLTrainer` returns a
    dictionary of scalars (loss, learning rate, ...); MONAI's ``SupervisedTrainer`` returns the
    batch with it (images, labels, predictions: tensors with many elements, which are dropped) as
    one dictionary (``decollate=False``) or as a list of per-image dictionaries
    (``decollate=True``: the first one's scalars, as ``from_engine(..., first=True)``). Used by
    the progress bar, ``StatsHandler`` and ``TensorBoardStatsHandler``.
    """
    if isinstance(output, Sequence) and not isinstance(output, (str, bytes)) and output \
            and isinstance(output[0], Mapping):
        output = output[0]
    if isinstance(output, Mapping):
        scalars = {str(k): _scalar(v) for k, v in output.items()}
        return {k: v for k, v in scalars.items() if v is not None}
    value = _scalar(output)
    return {} if value is None else {"loss": value}


class ProgressHandler:
    """A tqdm progress bar per epoch showing the latest loss (Ignite ``ProgressBar``), MONAI-attachable.

    It shows the scalars of the iteration output (:func:`scalar_outputs`) of any engine: the SSL
    trainer's loss and learning rate, or a supervised trainer's loss.

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
