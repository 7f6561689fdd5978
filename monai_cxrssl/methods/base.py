"""The contract every SSL method fulfils, and what methods share.

A method is an ``nn.Module`` that owns its backbone and whatever else it trains or keeps
(heads, momentum encoders, queues, centres): everything in its ``state_dict`` is saved and
restored with the checkpoint. The trainer gives it augmented views and steps the optimiser;
the method turns views into a loss.

What methods share lives here, so that a method declares its parts and its loss and nothing else:

- **momentum pairs**: :meth:`SSLMethod.add_momentum_pair` makes a frozen EMA copy of one of the method's
  networks (MoCo's key encoder, DINO's teacher, BYOL's target) and registers the pair; after each optimiser
  step every pair moves, ``target = m * target + (1 - m) * online``, with this iteration's ``m``;
- **schedules**: a method declares what it needs scheduled (:meth:`SSLMethod.schedules`: the momentum ramp set by
  :meth:`SSLMethod.set_momentum`, constant or a cosine from ``start`` to ``end``; DINO adds its teacher
  temperature) and computes none of it: the run's schedule (:class:`~monai_cxrssl.engines.RunSchedule`)
  precomputes every quantity per iteration and the trainer hands this iteration's values to
  :meth:`SSLMethod.before_step`;
- **optimiser groups**: :meth:`SSLMethod.param_groups`, the trainable parameters with weight decay on weights
  and none on biases and 1-D parameters (norm layers), as DINO and BYOL do; momentum copies are never optimised.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from monai_cxrssl.networks.backbones import Backbone
from monai_cxrssl.networks.momentum import momentum_copy, update_momentum
from monai_cxrssl.networks.weights import init_backbone
from monai_cxrssl.ramps import Ramp

__all__ = ["SSLMethod", "MOMENTUM_SCHEDULES"]

MOMENTUM_SCHEDULES = ("constant", "cosine")


class SSLMethod(nn.Module):
    """Base class of the SSL methods.

    Subclasses set :attr:`name` and :attr:`num_views`, and implement :meth:`forward`.

    Args:
        backbone: the feature extractor being pretrained (exported for downstream use).
        init_weights: ``""``/``"random"``, or a file to start the backbone from before any other network
            (momentum copies, teachers) is derived from it: this project's backbone export or checkpoint
            (same backbone), a timm/DINOv2 ViT file, or an outside state dict (see
            :func:`~monai_cxrssl.networks.init_backbone`). This is two-stage pretraining, not resuming:
            optimiser, schedules and method state start fresh. What was loaded, and where *that* came
            from, is kept in :attr:`init_report` and recorded in every checkpoint and backbone export.
        init_strict: an outside state dict with keys the backbone does not have is an error (it may be another
            architecture: a ResNet-34 file loads its first blocks into a ResNet-18); ``False`` ignores them, logged.
    """

    name: str = "ssl"
    #: how many views the method takes (its bundle's view recipe makes them; which batch key each view comes
    #: from is the recipe's business, not the method's: MICLe's partner image is :func:`~monai_cxrssl.data.pair_views`)
    num_views: int = 2

    def __init__(self, backbone: Backbone, init_weights: str | None = "", init_strict: bool = True):
        super().__init__()
        self.backbone = backbone
        self.init_report = init_backbone(backbone, init_weights, strict=init_strict)
        #: (online, target) attribute names of the momentum pairs, in the order they were made
        self._momentum_pairs: list[tuple[str, str]] = []
        self.set_momentum(1.0)
        self._iteration = 0  # of the step being run (MoCo's shuffle is seeded by it)

    # ------------------------------------------------------------------------ momentum pairs
    def add_momentum_pair(self, online: str, target: str) -> nn.Module:
        """Make ``self.<target>``, a frozen copy of the submodule ``self.<online>`` that follows it as an EMA
        after every optimiser step (:meth:`after_step`), and return it::

            self.add_momentum_pair("backbone", "key_backbone")
        """
        module = getattr(self, online, None)
        if not isinstance(module, nn.Module):
            raise TypeError(f"add_momentum_pair: '{online}' is not a submodule of {type(self).__name__}")
        setattr(self, target, momentum_copy(module))
        self._momentum_pairs.append((online, target))
        return getattr(self, target)

    @property
    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """The (online, target) networks that :meth:`after_step` moves."""
        return [(getattr(self, online), getattr(self, target)) for online, target in self._momentum_pairs]

    def set_momentum(self, start: float, end: float | None = None, schedule: str = "constant") -> None:
        """The EMA momentum of the pairs: ``start`` throughout (``"constant"``), or a cosine from ``start`` at the
        first iteration to ``end`` (default 1) after the last (``"cosine"``: BYOL, DINO)."""
        end = 1.0 if end is None else float(end)
        if schedule not in MOMENTUM_SCHEDULES:
            raise ValueError(f"momentum_schedule must be one of {MOMENTUM_SCHEDULES}, got {schedule!r}")
        if not 0.0 <= float(start) <= 1.0 or not 0.0 <= end <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {start} (start) and {end} (end)")
        if schedule == "cosine" and float(start) > end:
            raise ValueError(f"a cosine momentum schedule rises: expected start <= end, got {start} and {end}")
        self.momentum_start, self.momentum_end, self.momentum_schedule = float(start), end, schedule
        #: the momentum of this iteration's update (set by :meth:`before_step`; logged by methods with pairs)
        self.momentum = float(start)

    # ---------------------------------------------------------------------------- the step
    def schedules(self) -> dict[str, Ramp]:
        """What this method needs scheduled per iteration, by name: ``{"momentum": ...}`` when it has momentum
        pairs. The run's schedule precomputes them; :meth:`before_step` receives this iteration's values.
        Override (calling this) to add quantities."""
        if not self._momentum_pairs:
            return {}
        return {"momentum": Ramp(self.momentum_start, self.momentum_end, self.momentum_schedule)}

    def before_step(self, iteration: int, values: Mapping[str, float]) -> None:
        """Called before each forward pass with the (1-based) iteration and its scheduled values (named as in
        :meth:`schedules`). Call it when overriding."""
        self._iteration = int(iteration)
        self.momentum = float(values.get("momentum", self.momentum_start))

    @torch.no_grad()
    def after_step(self) -> None:
        """Called after each optimiser step: every momentum pair moves towards its online network."""
        for online, target in self.momentum_pairs:
            update_momentum(online, target, self.momentum)

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return at least ``{"loss": scalar}``; other scalars are logged."""
        raise NotImplementedError

    # ---------------------------------------------------------------------- optimiser, export
    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimiser groups over the trainable parameters (momentum copies are frozen, so never in them):
        ``decay`` (weights, with ``weight_decay``) and ``no_decay`` (biases and 1-D parameters: norm layers,
        LayerScale, tokens)."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if name.endswith(".bias") or p.ndim <= 1 else decay).append(p)
        return [{"params": decay, "weight_decay": float(weight_decay), "name": "decay"},
                {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]

    def export_backbone(self) -> nn.Module:
        """The network whose weights downstream tasks start from (the teacher, for DINO)."""
        return self.backbone
