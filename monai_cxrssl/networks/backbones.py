"""Backbones: MONAI networks turned into feature extractors for one-channel radiographs.

Every backbone maps ``(B, C, H, W)`` to a feature vector ``(B, out_dim)``. A small registry
keeps names stable across bundles and checkpoints, so a checkpoint records which backbone
(and with which arguments) produced it, and a mismatch is caught when it is loaded.

ResNets use the ImageNet stem (7x7 convolution with stride 2, then max pooling): MONAI's
default stride 1 costs four times the compute for no benefit at radiograph resolutions.

Vision Transformers (``vit_tiny``, ``vit_small``, ``vit_base``, or ``vit`` with explicit sizes)
are MONAI's ViT returning the [CLS] feature, at any input size (see
:mod:`monai_cxrssl.networks.vit`); they also load timm/DINOv2 checkpoints
(:mod:`monai_cxrssl.networks.vit_import`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from monai.networks.nets import DenseNet121, resnet10, resnet18, resnet34, resnet50

from monai_cxrssl.networks.vit import VIT_SIZES, ViTEncoder

__all__ = ["Backbone", "BACKBONES", "build_backbone", "register_backbone"]


class Backbone(nn.Module):
    """A network returning one feature vector per image.

    Args:
        net: a module mapping images to features ``(B, out_dim)``.
        out_dim: feature dimension.
        name: registry name, recorded in checkpoints.
        config: the keyword arguments that rebuild it with :func:`build_backbone`.
    """

    def __init__(self, net: nn.Module, out_dim: int, name: str, config: dict | None = None):
        super().__init__()
        self.net = net
        self.out_dim = int(out_dim)
        self.name = name
        self.config = dict(config or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def spec(self) -> dict:
        """What identifies this backbone: its name, arguments and feature dimension."""
        return {"name": self.name, "out_dim": self.out_dim, **self.config}


BACKBONES: dict[str, Callable[..., Backbone]] = {}


def register_backbone(name: str):
    """Decorator registering a factory ``f(in_channels, **kwargs) -> Backbone`` under ``name``."""

    def deco(fn):
        BACKBONES[name] = fn
        return fn

    return deco


def _resnet(factory, feat_dim: int):
    def build(in_channels: int = 1, widen_factor: float = 1.0, **kwargs) -> nn.Module:
        net = factory(
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            feed_forward=False,
            widen_factor=widen_factor,
            **kwargs,
        )
        return net, int(feat_dim * widen_factor)

    return build


for _name, _factory, _dim in (
    ("resnet10", resnet10, 512),
    ("resnet18", resnet18, 512),
    ("resnet34", resnet34, 512),
    ("resnet50", resnet50, 2048),
):
    register_backbone(_name)(_resnet(_factory, _dim))


class _DenseNetFeatures(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        dense = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=1)
        self.features = dense.features
        self.pool = nn.Sequential(nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))

    def forward(self, x):
        return self.pool(self.features(x))


@register_backbone("densenet121")
def _densenet121(in_channels: int = 1) -> tuple[nn.Module, int]:
    return _DenseNetFeatures(in_channels), 1024


def _vit(default_dim: int | None = None, default_heads: int | None = None):
    def build(in_channels: int = 1, img_size: int = 224, patch_size: int = 16, depth: int = 12,
              mlp_ratio: float = 4.0, qkv_bias: bool = True, embed_dim: int | None = default_dim,
              num_heads: int | None = default_heads) -> tuple[nn.Module, int]:
        if embed_dim is None or num_heads is None:
            raise ValueError("backbone 'vit' needs embed_dim and num_heads (or use vit_tiny/vit_small/vit_base)")
        net = ViTEncoder(in_channels=in_channels, img_size=img_size, patch_size=patch_size, hidden_size=embed_dim,
                         num_layers=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias)
        return net, int(embed_dim)

    return build


register_backbone("vit")(_vit())
for _name, (_dim, _heads) in VIT_SIZES.items():
    register_backbone(_name)(_vit(_dim, _heads))


def build_backbone(name: str = "resnet18", in_channels: int = 1, **kwargs) -> Backbone:
    """Build a registered backbone.

    Args:
        name: one of :data:`BACKBONES` (``resnet10``, ``resnet18``, ``resnet34``, ``resnet50``,
            ``densenet121``, ``vit_tiny``, ``vit_small``, ``vit_base``, ``vit``).
        in_channels: image channels (1 for radiographs).
        kwargs: passed to the factory, e.g. ``widen_factor`` for the ResNets; ``img_size``,
            ``patch_size``, ``depth``, ``mlp_ratio``, ``qkv_bias`` for the ViTs (and ``embed_dim``,
            ``num_heads`` for ``vit``).

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; expected one of {sorted(BACKBONES)}")
    net, dim = BACKBONES[name](in_channels=in_channels, **kwargs)
    return Backbone(net, dim, name, {"in_channels": in_channels, **kwargs})
