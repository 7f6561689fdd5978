"""Precision selection and the reduced-precision training path."""

import pytest
import torch

from monai_cxrssl.engines.precision import autocast, cpu_supports_bf16, resolve_precision


def test_auto_follows_the_cpu_flags():
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_supports_bf16() else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("half", "cpu")


def test_bf16_autocast_runs_convolutions_in_bf16_and_loss_stays_fp32():
    from monai_cxrssl.losses import NTXentLoss

    conv = torch.nn.Conv2d(1, 4, 3)
    with autocast("bf16", "cpu"):
        y = conv(torch.rand(2, 1, 8, 8))
        loss = NTXentLoss(0.1)(y.flatten(1)[:1], y.flatten(1)[1:])
    assert y.dtype == torch.bfloat16 and loss.dtype == torch.float32
    with autocast("fp32", "cpu"):
        assert conv(torch.rand(1, 1, 8, 8)).dtype == torch.float32


def test_fp16_is_refused_on_the_cpu():
    with pytest.raises(ValueError, match="CUDA"):
        resolve_precision("fp16", "cpu")


def test_bf16_and_fp32_simclr_losses_and_gradients_agree_on_a_fixed_batch():
    import numpy as np

    from monai_cxrssl.data.views import CXRViewAugment
    from monai_cxrssl.methods import SimCLR
    from monai_cxrssl.networks import build_backbone

    torch.manual_seed(0)
    method = SimCLR(build_backbone("resnet10", widen_factor=0.5), hidden_dim=64, out_dim=32, temperature=0.2)
    aug = CXRViewAugment(out_size=32)
    x = torch.rand(8, 1, 40, 40)
    views = [aug(x, np.random.RandomState(i), torch.Generator().manual_seed(i)) for i in range(2)]
    results = {}
    for precision, channels_last in (("fp32", False), ("bf16", True)):
        method.zero_grad()
        if channels_last:
            method.to(memory_format=torch.channels_last)
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        with autocast(precision, "cpu"):
            loss = method(views)["loss"]
        assert loss.dtype == torch.float32
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in method.backbone.parameters()])
        results[precision] = (loss.item(), grad)
    (l32, g32), (l16, g16) = results["fp32"], results["bf16"]
    assert abs(l32 - l16) < 0.02 * abs(l32), (l32, l16)
    assert torch.nn.functional.cosine_similarity(g32, g16, dim=0) > 0.95


def test_fast_inferer_runs_the_network_in_the_chosen_precision_and_layout():
    from monai_cxrssl.engines import FastInferer

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    net(torch.rand(1, 1, 8, 8))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    inferer = FastInferer(precision="bf16", channels_last=True)
    y = inferer(torch.rand(2, 1, 8, 8), net)
    assert y.dtype == torch.float32
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    before = net[0].weight.detach().clone()
    y.sum().backward()
    opt.step()  # the optimiser still holds the (converted) parameters
    assert not torch.equal(before, net[0].weight)
    # feature vectors (a linear probe on cached features) pass through unchanged in layout
    lin = torch.nn.Linear(3, 1)
    assert FastInferer("fp32")(torch.rand(4, 3), lin).shape == (4, 1)
    assert FastInferer("auto").resolved("cpu") == resolve_precision("auto", "cpu")
    with pytest.raises(ValueError, match="precision"):
        FastInferer("half")


def test_ntxent_similarities_stay_float32_under_bf16_autocast():
    from monai_cxrssl.losses import NTXentLoss

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    loss = NTXentLoss(0.1)
    expected = loss(z1, z2)
    with autocast("bf16", "cpu"):
        assert torch.equal(loss(z1, z2), expected)
