"""The contract every SSL method fulfils.

A method is an ``nn.Module`` that owns its backbone and whatever else it trains or keeps
(heads, momentum encoders, queues, centres): everything in its ``state_dict`` is saved and
restored with the checkpoint. The trainer gives it augmented views and steps the optimiser;
the method turns views into a loss, and may act before and after each optimiser step.
"""

from __future__ import annotations

import torch
from torch import nn

from monai_cxrssl.networks.backbones import Backbone
from monai_cxrssl.networks.weights import init_backbone

__all__ = ["SSLMethod"]


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
    #: how many augmented views of each image the trainer produces
    num_views: int = 2
    #: batch key each view is made from (``None``: every view from the trainer's image key).
    #: MICLe makes its second view from another image of the same patient.
    view_keys: tuple[str, ...] | None = None

    def __init__(self, backbone: Backbone, init_weights: str | None = "", init_strict: bool = True):
        super().__init__()
        self.backbone = backbone
        self.init_report = init_backbone(backbone, init_weights, strict=init_strict)

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return at least ``{"loss": scalar}``; other scalars are logged."""
        raise NotImplementedError

    def before_step(self, iteration: int, max_iterations: int) -> None:
        """Called before each forward pass with the (1-based) iteration: schedules. Default: nothing."""

    def after_step(self, iteration: int, max_iterations: int) -> None:
        """Called after each optimiser step (momentum updates, schedules). Default: nothing."""

    def export_backbone(self) -> nn.Module:
        """The network whose weights downstream tasks start from (the teacher, for DINO)."""
        return self.backbone
