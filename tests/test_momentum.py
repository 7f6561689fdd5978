"""Momentum (EMA) encoders: the copy and the update by hand (their schedule is a ramp: tests/test_ramps.py)."""

import pytest
import torch
from torch import nn

from monai_cxrssl.networks.momentum import momentum_copy, update_momentum


def _net():
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


def test_copy_is_frozen_equal_and_independent():
    source = _net()
    target = momentum_copy(source)
    assert target is not source
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), name
        assert a.data_ptr() != b.data_ptr(), name
    assert all(p.requires_grad for p in source.parameters())
    assert not any(p.requires_grad for p in target.parameters())
    with torch.no_grad():
        source[0].weight.add_(1.0)
    assert not torch.equal(source[0].weight, target[0].weight)


def test_update_by_hand():
    source, target = _net(), _net()
    with torch.no_grad():
        source[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        source[0].bias.copy_(torch.tensor([8.0, -8.0]))
        target[0].weight.copy_(torch.tensor([[5.0, 6.0], [7.0, 8.0]]))
        target[0].bias.copy_(torch.tensor([0.0, 0.0]))
    update_momentum(source, target, 0.75)  # target = 0.75 target + 0.25 source
    assert target[0].weight.tolist() == [[4.0, 5.0], [6.0, 7.0]]
    assert target[0].bias.tolist() == [2.0, -2.0]
    # the source is untouched; m = 1 keeps the target, m = 0 copies the source
    assert source[0].weight.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    update_momentum(source, target, 1.0)
    assert target[0].weight.tolist() == [[4.0, 5.0], [6.0, 7.0]]
    update_momentum(source, target, torch.tensor(0.0))  # a 0-d tensor works as m
    assert torch.equal(target[0].weight, source[0].weight)


def test_buffers_are_left_to_the_copy():
    # the momentum copy keeps BatchNorm statistics of its own batches (MoCo and DINO reference code)
    source, target = _net(), _net()
    source.train()
    source(torch.randn(8, 2))  # updates the source's BatchNorm running statistics
    before = {k: v.clone() for k, v in target[1].state_dict().items()}
    update_momentum(source, target, 0.9)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(target[1], name), before[name]), name


def test_errors():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        update_momentum(_net(), _net(), 1.5)
    with pytest.raises(ValueError, match="different parameters"):
        update_momentum(_net(), nn.Sequential(nn.Linear(2, 2)), 0.9)
    with pytest.raises(ValueError, match="shape"):
        update_momentum(nn.Linear(2, 3), nn.Linear(2, 1), 0.9)  # (1,) would broadcast into (3,) silently
