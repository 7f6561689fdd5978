"""Heads put on top of a backbone's features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["ProjectionHead", "DINOHead"]


class ProjectionHead(nn.Sequential):
    """MLP projection head: ``Linear -> BN -> ReLU`` blocks, then ``Linear`` (SimCLR; MoCo v2 uses it without BN).

    Args:
        in_dim: backbone feature dimension.
        hidden_dim: width of the hidden layers.
        out_dim: embedding dimension the loss sees (128 in SimCLR and MoCo-CXR).
        num_layers: number of linear layers (2 in SimCLR v1 and MoCo v2).
        batch_norm: BatchNorm after each hidden linear layer.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, num_layers: int = 2,
                 batch_norm: bool = True):
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        super().__init__(*layers)


class DINOHead(nn.Module):
    """Projection head of DINO (Caron et al., 2021) and DINOv2.

    ``Linear -> GELU`` blocks (in -> hidden -> ... -> bottleneck), L2 normalisation, then a
    weight-normalised linear layer without bias onto ``out_dim`` prototypes. With
    ``norm_last_layer`` (DINO's default, recommended for stability) the last layer's norm ``g``
    is fixed at 1: every prototype is a unit vector, the logits are cosine similarities.

    Args:
        in_dim: backbone feature dimension.
        out_dim: number of prototypes, the dimension the DINO loss sees (65,536 at ImageNet scale;
            a few thousand suit small data sets).
        hidden_dim: width of the hidden layers (2048 in DINO).
        bottleneck_dim: dimension before the last layer (256 in DINO).
        num_layers: linear layers before the last one (3 in DINO).
        batch_norm: BatchNorm after each hidden linear layer (DINO's ``use_bn_in_head``, off for ViTs).
        norm_last_layer: fix the last layer's weight norm at 1.
    """

    def __init__(self, in_dim: int, out_dim: int = 4096, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, batch_norm: bool = False, norm_last_layer: bool = True):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if out_dim < 1 or bottleneck_dim < 1:
            raise ValueError(f"out_dim and bottleneck_dim must be positive, got {out_dim} and {bottleneck_dim}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        if norm_last_layer:
            g.requires_grad_(False)
        self.out_dim = int(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)
