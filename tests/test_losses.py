"""NT-Xent against a direct implementation of its definition."""

import math

import pytest
import torch
import torch.nn.functional as F

from monai_cxrssl.losses import NTXentLoss


def reference_ntxent(z1, z2, t):
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        sims = [math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i]
        total += -(float(z[i] @ z[pos]) / t - math.log(sum(sims)))
    return total / n2


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_matches_definition(t):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    assert NTXentLoss(t)(z1, z2).item() == pytest.approx(reference_ntxent(z1, z2, t), rel=1e-5)


def test_aligned_pairs_give_low_loss_and_scale_invariance():
    z = torch.eye(8)[:4] * 3.0
    low = NTXentLoss(0.05)(z, z * 7.0).item()
    high = NTXentLoss(0.05)(z, torch.roll(z, 1, dims=0)).item()
    assert low < 1e-3 < high


def test_gradients_flow_and_bf16_inputs():
    z1 = torch.randn(4, 16, requires_grad=True)
    z2 = torch.randn(4, 16)
    loss = NTXentLoss(0.1)(z1.bfloat16(), z2.bfloat16())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert z1.grad is not None and z1.grad.abs().sum() > 0


def test_shape_errors():
    with pytest.raises(ValueError):
        NTXentLoss(0.1)(torch.randn(4, 8), torch.randn(3, 8))
    with pytest.raises(ValueError):
        NTXentLoss(0.0)
