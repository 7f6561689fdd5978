"""engines/schedules.py: the per-iteration learning-rate schedule."""

import math

import pytest
import torch

from monai_cxrssl.engines.schedules import warmup_cosine


def _lrs(total, warmup, final=0.0, base=1.0):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = warmup_cosine(opt, total, warmup, final)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_linear_warm_up_then_cosine_to_the_final_factor():
    lrs = _lrs(total=10, warmup=4, final=0.1, base=2.0)
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])  # (step + 1) / warmup of the base rate
    # then the cosine from the base rate, half-way at the middle of the 6 decay steps
    assert lrs[4] == pytest.approx(2.0)
    assert lrs[7] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 6))))
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))  # strictly decreasing after the warm-up


def test_without_warm_up_it_starts_at_the_base_rate_and_warm_up_is_capped():
    assert _lrs(total=5, warmup=0)[0] == pytest.approx(1.0)
    # a warm-up as long as the run leaves one decay step instead of dividing by zero
    lrs = _lrs(total=3, warmup=10)
    assert lrs == pytest.approx([0.5, 1.0, 1.0])
