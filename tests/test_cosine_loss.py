"""NegativeCosineSimilarity (BYOL's loss): 2 - 2 cos, into the prediction only, in float32."""

import pytest
import torch

from monai_cxrssl.losses.cosine import NegativeCosineSimilarity


def test_values_at_the_extremes_and_scale_invariance():
    loss = NegativeCosineSimilarity()
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert loss(p, 3 * p).item() == pytest.approx(0.0, abs=1e-6)  # same directions, whatever the lengths
    assert loss(p, -p).item() == pytest.approx(4.0)
    assert loss(p, p.flip(1)).item() == pytest.approx(2.0)  # orthogonal
    # the mean over the batch of the squared distance between the unit vectors (BYOL, equation 2)
    torch.manual_seed(0)
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    expected = ((a / a.norm(dim=1, keepdim=True) - b / b.norm(dim=1, keepdim=True)) ** 2).sum(dim=1).mean()
    assert loss(a, b).item() == pytest.approx(expected.item(), rel=1e-5)


def test_float32_under_bf16_autocast_and_shapes_checked():
    p, z = torch.randn(4, 8, dtype=torch.bfloat16), torch.randn(4, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = NegativeCosineSimilarity()(p, z)
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match=r"one shape \(N, D\)"):
        NegativeCosineSimilarity()(torch.randn(4, 8), torch.randn(4, 7))
