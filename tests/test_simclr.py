"""methods/simclr.py: SimCLR is NT-Xent between the projections of two views."""

import torch

from monai_cxrssl.losses.ntxent import NTXentLoss
from monai_cxrssl.methods import SimCLR
from monai_cxrssl.networks import build_backbone


def _simclr(**kw):
    torch.manual_seed(0)
    return SimCLR(build_backbone("resnet18", in_channels=1), hidden_dim=32, out_dim=8, **kw)


def test_the_loss_is_nt_xent_of_the_head_over_one_backbone_pass_of_both_views():
    m = _simclr(temperature=0.2)
    m.eval()  # BatchNorm with running statistics: one pass over both views equals two passes
    v1, v2 = torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        loss = m([v1, v2])["loss"]
        expected = NTXentLoss(0.2)(m.head(m.backbone(v1)), m.head(m.backbone(v2)))
    assert torch.allclose(loss, expected, atol=1e-6)


def test_identical_views_give_a_lower_loss_than_unrelated_ones_and_gradients_reach_the_backbone():
    m = _simclr()
    v = torch.rand(6, 1, 32, 32)
    same, other = m([v, v.clone()])["loss"], m([v, torch.rand(6, 1, 32, 32)])["loss"]
    assert same < other
    same.backward()
    assert all(p.grad is not None for p in m.parameters()) and next(m.backbone.parameters()).grad.abs().sum() > 0
