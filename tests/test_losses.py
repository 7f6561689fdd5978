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


# ------------------------------------------------------------------------------- InfoNCE (MoCo)
from monai_cxrssl.losses import InfoNCELoss  # noqa: E402


def test_infonce_hand_computed():
    # query 1 = its key = (1, 0); query 2 = (0, 3) with key (0, 2): both normalised inside.
    # The queue (0, 1), (-1, 0) is already normalised. T = 0.5:
    # logits 1 = [1, 0, -1] / 0.5 = [2, 0, -2]; logits 2 = [1, 1, 0] / 0.5 = [2, 2, 0]
    q = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    loss1 = math.log(math.exp(2) + 1 + math.exp(-2)) - 2
    loss2 = math.log(2 * math.exp(2) + 1) - 2
    loss = InfoNCELoss(0.5)(q, k, queue)
    assert loss.item() == pytest.approx((loss1 + loss2) / 2, rel=1e-6)
    assert InfoNCELoss(0.5).logits(q, k, queue).tolist() == [[2.0, 0.0, -2.0], [2.0, 2.0, 0.0]]


def test_infonce_matches_definition_and_stays_float32_under_autocast():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    queue = F.normalize(torch.randn(7, 8, generator=g), dim=1)
    qn, kn = F.normalize(q.double(), dim=1), F.normalize(k.double(), dim=1)
    ref = 0.0
    for i in range(5):
        logits = [float(qn[i] @ kn[i]) / 0.2] + [float(qn[i] @ queue[j].double()) / 0.2 for j in range(7)]
        ref += -(logits[0] - math.log(sum(math.exp(v) for v in logits)))
    assert InfoNCELoss(0.2)(q, k, queue).item() == pytest.approx(ref / 5, rel=1e-5)

    qb = q.bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = InfoNCELoss(0.2).logits(qb, k.bfloat16(), queue)
        loss = InfoNCELoss(0.2)(qb, k.bfloat16(), queue)
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32
    loss.backward()
    assert qb.grad is not None and qb.grad.abs().sum() > 0


def test_infonce_errors():
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(0.0)
    with pytest.raises(ValueError, match="one shape"):
        InfoNCELoss()(torch.randn(4, 8), torch.randn(3, 8), torch.randn(5, 8))
    with pytest.raises(ValueError, match="queue"):
        InfoNCELoss()(torch.randn(4, 8), torch.randn(4, 8), torch.randn(5, 6))
