"""Handlers on the gradients of a training step: they attach to MONAI's ``IterationEvents.BACKWARD_COMPLETED``,
which the SSL trainer fires between ``loss.backward()`` and the optimiser step.

- :class:`GradientClipping`: the gradients' total norm clipped (DINO: 3.0), after unscaling an fp16 loss scale;
- :class:`FreezeLastLayer`: no update of one submodule during the first epochs (DINO's ``freeze_last_layer``: the
  head's prototypes stay put for the first epoch, which helps it start).

Attach them as any Ignite handler (``handler.attach(trainer)``), or list them in a bundle's ``train#handlers``.
"""

from __future__ import annotations

import torch
from torch import nn

from ignite.engine import Events
from monai.engines.utils import IterationEvents

__all__ = ["GradientClipping", "FreezeLastLayer"]


def _trained(engine) -> nn.Module:
    for name in ("method", "network"):  # the SSL trainer's, MONAI's SupervisedTrainer's
        module = getattr(engine, name, None)
        if isinstance(module, nn.Module):
            return module
    raise TypeError(f"{type(engine).__name__} has neither a 'method' nor a 'network' module to act on")


class GradientClipping:
    """Clip the total gradient norm of the trained module (``torch.nn.utils.clip_grad_norm_``) before each step.

    Args:
        max_norm: the largest total norm (DINO: 3.0); ``0`` or less: the handler does nothing.
        norm_type: the norm (2).

    The norm before clipping is logged into ``engine.state.output["grad_norm"]`` (shown with the loss).
    With an fp16 loss scaler (the trainer's ``grad_scaler``) the gradients are unscaled first, as PyTorch's AMP
    recipe asks.
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0):
        self.max_norm, self.norm_type = float(max_norm), float(norm_type)

    def attach(self, engine) -> None:
        if self.max_norm > 0:
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine) -> None:
        scaler = getattr(engine, "grad_scaler", None)
        if scaler is not None:
            scaler.unscale_(engine.optimizer)
        params = [p for p in _trained(engine).parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, self.norm_type)
        if isinstance(engine.state.output, dict):
            engine.state.output["grad_norm"] = norm.detach().float()


class FreezeLastLayer:
    """Drop the gradients of one submodule of the trained module during the first ``epochs`` epochs.

    Args:
        epochs: epochs during which ``module`` is not updated (DINO: 1); ``0``: the handler does nothing.
        module: dotted name of the submodule inside the trained module (DINO's prototypes: ``"head.last_layer"``).

    Raises:
        AttributeError: when the trained module has no such submodule (checked when the run starts, before the
            first iteration: a trainer attaches its handlers before it holds the module).
    """

    def __init__(self, epochs: int = 1, module: str = "head.last_layer"):
        if int(epochs) < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        self.epochs, self.module = int(epochs), str(module)

    def attach(self, engine) -> None:
        if self.epochs > 0:
            engine.add_event_handler(Events.STARTED, self.check)
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def check(self, engine) -> None:
        """The trained module has the submodule to freeze."""
        try:
            _trained(engine).get_submodule(self.module)
        except AttributeError as e:
            raise AttributeError(f"FreezeLastLayer: {type(_trained(engine)).__name__} has no submodule "
                                 f"'{self.module}'") from e

    def __call__(self, engine) -> None:
        if engine.state.epoch <= self.epochs:
            for p in _trained(engine).get_submodule(self.module).parameters():
                p.grad = None
