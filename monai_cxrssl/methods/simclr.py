"""SimCLR (Chen et al., 2020): two views of each image, an MLP projection head, NT-Xent.

The whole method is ``loss = NT-Xent(head(backbone(view1)), head(backbone(view2)))``.
"""

from __future__ import annotations

import torch

from monai_cxrssl.losses.ntxent import NTXentLoss
from monai_cxrssl.methods.base import SSLMethod
from monai_cxrssl.networks.backbones import Backbone
from monai_cxrssl.networks.heads import ProjectionHead

__all__ = ["SimCLR"]


class SimCLR(SSLMethod):
    """SimCLR.

    Args:
        backbone: feature extractor (e.g. ``build_backbone("resnet18")``).
        hidden_dim: projection head width.
        out_dim: embedding dimension (128 in SimCLR).
        temperature: NT-Xent temperature.
        init_weights: initial backbone weights (two-stage pretraining), see :class:`SSLMethod`.
    """

    name = "simclr"
    num_views = 2

    def __init__(self, backbone: Backbone, hidden_dim: int = 2048, out_dim: int = 128, temperature: float = 0.1,
                 init_weights: str | None = "", init_strict: bool = True):
        super().__init__(backbone, init_weights, init_strict)
        self.head = ProjectionHead(backbone.out_dim, hidden_dim, out_dim, num_layers=2)
        self.criterion = NTXentLoss(temperature)

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        v1, v2 = views
        # one backbone pass over both views: BatchNorm sees the whole 2N batch, as in SimCLR
        z = self.head(self.backbone(torch.cat([v1, v2])))
        z1, z2 = z.chunk(2)
        return {"loss": self.criterion(z1, z2)}
