"""BYOL (Grill et al. 2020): an online network predicts a momentum target's embedding of another view; no negatives.

The online network is backbone + projector + predictor; the target is a momentum copy of backbone + projector
(the momentum pairs of :class:`~monai_cxrssl.methods.SSLMethod`, cosine from ``momentum`` to 1 over training).
For views ``v1, v2``::

    loss = D(predictor(projector(backbone(v1))), target(v2)) + D(predictor(projector(backbone(v2))), target(v1))

with ``D = 2 - 2 cos`` (:class:`~monai_cxrssl.losses.cosine.NegativeCosineSimilarity`) and no gradient through
the target. The predictor and the slow target keep the online network from collapsing without negative pairs,
so BYOL does not need the large batches contrastive methods do. Downstream tasks start from the online backbone.
"""

from __future__ import annotations

import torch

from monai_cxrssl.losses.cosine import NegativeCosineSimilarity
from monai_cxrssl.methods.base import SSLMethod
from monai_cxrssl.networks.backbones import Backbone
from monai_cxrssl.networks.heads import ProjectionHead

__all__ = ["BYOL"]


class BYOL(SSLMethod):
    """BYOL.

    Args:
        backbone: feature extractor (e.g. ``build_backbone("resnet18")``), what :meth:`export_backbone` returns.
        hidden_dim: width of the projector's hidden layer (BYOL: 4096).
        out_dim: projection dimension (BYOL: 256).
        predictor_hidden_dim: width of the predictor's hidden layer (BYOL: 4096).
        momentum: the target's EMA momentum at the first step (BYOL: 0.996), rising on a cosine to 1.
        init_weights: initial backbone weights (two-stage pretraining), copied into the target too; see
            :class:`SSLMethod`.
    """

    name = "byol"
    num_views = 2

    def __init__(self, backbone: Backbone, hidden_dim: int = 4096, out_dim: int = 256, predictor_hidden_dim: int = 4096,
                 momentum: float = 0.996, init_weights: str | None = "", init_strict: bool = True):
        super().__init__(backbone, init_weights, init_strict)  # before the target is copied from it
        self.set_momentum(momentum, 1.0, "cosine")
        self.projector = ProjectionHead(backbone.out_dim, hidden_dim, out_dim, num_layers=2)
        self.predictor = ProjectionHead(out_dim, predictor_hidden_dim, out_dim, num_layers=2)
        self.add_momentum_pair("backbone", "target_backbone")
        self.add_momentum_pair("projector", "target_projector")
        self.criterion = NegativeCosineSimilarity()

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(views) != 2:
            raise ValueError(f"BYOL takes 2 views, got {len(views)}")
        both = torch.cat(views)  # one pass per network over both views: BatchNorm sees the 2N batch
        p1, p2 = self.predictor(self.projector(self.backbone(both))).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target_projector(self.target_backbone(both)).chunk(2)
        loss = self.criterion(p1, z2) + self.criterion(p2, z1)
        return {"loss": loss, "momentum": torch.tensor(self.momentum, device=loss.device)}
