"""ramps.py: the one ramp every scheduled quantity is made of (learning-rate factor, weight decay, EMA momentum,
DINO's teacher temperature), against the formulas each quantity had before it moved here."""

import math

import numpy as np
import pytest

from monai_cxrssl.ramps import Ramp


def test_a_constant_ramp_is_its_start_throughout_and_after():
    r = Ramp(0.99)
    assert r.values(5).tolist() == [0.99] * 5 and r.final == 0.99
    assert Ramp(0.99, 1.0, "constant").final == 0.99  # a constant ramp ignores end


def test_cosine_from_start_towards_end_reached_after_the_last_iteration():
    v = Ramp(0.996, 1.0, "cosine").values(100)
    assert v[0] == 0.996 and v[50] == pytest.approx(0.998) and v[-1] < 1.0
    assert np.all(np.diff(v) > 0) and Ramp(0.996, 1.0, "cosine").final == 1.0
    # the EMA momentum's former formula (networks/momentum.cosine_schedule), to rounding
    old = [1.0 - (1.0 - 0.996) * (math.cos(math.pi * s / 100) + 1) / 2 for s in range(100)]
    assert v == pytest.approx(old, rel=1e-15, abs=0)


def test_linear_ramp():
    assert Ramp(1.0, 0.0, "linear").values(4).tolist() == [1.0, 0.75, 0.5, 0.25]


def test_warm_up_is_dinos_linspace_and_reaches_start_at_its_last_iteration():
    v = Ramp(0.07, warmup_steps=4, warmup_start=0.04).values(6)
    assert v.tolist() == pytest.approx([0.04, 0.05, 0.06, 0.07, 0.07, 0.07])
    # DINOLoss's former teacher-temperature warm-up
    old = [0.04 + min(s, 3) / 3 * (0.07 - 0.04) for s in range(6)]
    assert v == pytest.approx(old, rel=1e-15, abs=0)
    # a warm-up longer than the run is cut with it
    assert Ramp(0.07, warmup_steps=4, warmup_start=0.04).values(2).tolist() == pytest.approx([0.04, 0.05])
    assert Ramp(0.07, warmup_steps=1, warmup_start=0.04).values(3).tolist() == pytest.approx([0.04, 0.07, 0.07])


def test_the_learning_rate_factor_is_the_former_warmup_cosine():
    total, warmup, final = 37, 5, 0.1
    v = Ramp(1.0, final, "cosine", warmup).values(total)

    def old(step):  # engines/schedules.warmup_cosine before the ramp
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    assert v[warmup:].tolist() == [old(s) for s in range(warmup, total)]  # bit for bit after the warm-up
    assert v[:warmup] == pytest.approx([old(s) for s in range(warmup)], rel=1e-15, abs=0)


@pytest.mark.parametrize("kw, match", [({"kind": "step"}, "kind must be one of"),
                                       ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
                                       ({"end": float("nan"), "kind": "cosine"}, "end must be finite")])
def test_bad_ramps_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        Ramp(1.0, **kw)
