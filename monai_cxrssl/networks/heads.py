"""Heads put on top of a backbone's features."""

from __future__ import annotations

from torch import nn

__all__ = ["ProjectionHead"]


class ProjectionHead(nn.Sequential):
    """MLP projection head of SimCLR / MoCo v2: ``Linear -> BN -> ReLU`` blocks, then ``Linear``.

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
