"""Backbones and heads."""

import pytest
import torch

from monai_cxrssl.networks import BACKBONES, ProjectionHead, build_backbone


@pytest.mark.parametrize("name,dim", [("resnet10", 512), ("resnet18", 512), ("resnet50", 2048), ("densenet121", 1024)])
def test_backbone_feature_shape(name, dim):
    net = build_backbone(name, in_channels=1).eval()
    with torch.no_grad():
        y = net(torch.rand(2, 1, 64, 64))
    assert y.shape == (2, dim) and net.out_dim == dim
    assert net.spec()["name"] == name


def test_resnet_uses_imagenet_stem():
    net = build_backbone("resnet18")
    conv1 = net.net.conv1
    assert conv1.in_channels == 1 and tuple(conv1.stride) == (2, 2) and tuple(conv1.kernel_size) == (7, 7)


def test_widen_factor_recorded_and_feature_dim():
    net = build_backbone("resnet10", widen_factor=0.25)
    assert net.out_dim == 128 and net.spec()["widen_factor"] == 0.25
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 128)


def test_unknown_backbone_lists_known():
    with pytest.raises(ValueError, match="resnet18"):
        build_backbone("vgg16")
    assert {"resnet18", "resnet50", "densenet121"} <= set(BACKBONES)


def test_projection_head():
    head = ProjectionHead(64, 32, 16, num_layers=3)
    assert head(torch.rand(5, 64)).shape == (5, 16)
    assert sum(isinstance(m, torch.nn.Linear) for m in head) == 3
