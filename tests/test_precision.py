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
