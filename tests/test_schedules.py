"""engines/schedules.py: the run's one schedule (learning rate, weight decay, the method's quantities), stepped
per iteration."""

import io
import math

import pytest
import torch

from monai_cxrssl.engines.schedules import RunSchedule, warmup_cosine
from monai_cxrssl.ramps import Ramp


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


# ----------------------------------------------------------------------------------------- the run's schedule
class _Method(torch.nn.Module):
    """What RunSchedule asks of a method: its name and the ramps it declares."""

    name = "stand_in"

    def __init__(self, ramps):
        super().__init__()
        self.weight, self.bias = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.zeros(2))
        self._ramps = ramps

    def schedules(self):
        return self._ramps


def _optimizer(m, wd=0.04):
    return torch.optim.AdamW([{"params": [m.weight], "weight_decay": wd, "name": "decay"},
                              {"params": [m.bias], "weight_decay": 0.0, "name": "no_decay"}], lr=1e-3)


def test_one_schedule_holds_lr_weight_decay_and_the_methods_quantities():
    m = _Method({"momentum": Ramp(0.996, 1.0, "cosine"), "teacher_temp": Ramp(0.07, warmup_steps=3, warmup_start=0.04)})
    opt = _optimizer(m)
    sched = RunSchedule(opt, total_steps=10, warmup_steps=2, weight_decay_end=0.4, method=m)
    assert sorted(sched.table.values) == ["lr_factor", "momentum", "teacher_temp", "weight_decay"]
    seen = []
    for it in range(1, 11):
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"],
                     opt.param_groups[1]["weight_decay"], sched.at(it)))
        opt.step()
        sched.step()
    assert [s[0] for s in seen[:2]] == pytest.approx([5e-4, 1e-3])  # warm-up, then the cosine
    assert seen[0][1] == pytest.approx(0.04) and seen[-1][1] > 0.39 and all(s[2] == 0.0 for s in seen)
    assert [round(s[3]["teacher_temp"], 6) for s in seen[:4]] == [0.04, 0.055, 0.07, 0.07]
    assert seen[0][3]["momentum"] == 0.996 and seen[-1][3]["momentum"] < 1.0
    assert sched.at(11) == {"momentum": 1.0, "teacher_temp": 0.07}  # after the run: the ramps' final values
    assert set(seen[0][3]) == {"momentum", "teacher_temp"}  # the trainer hands the method its own quantities


def test_its_checkpoint_state_is_plain_and_resumes_the_same_values():
    m = _Method({"momentum": Ramp(0.99, 1.0, "cosine")})

    def run(n, state=None):  # as a checkpoint resumes: the optimiser's state, then the schedule's
        opt = _optimizer(m)
        sched = RunSchedule(opt, total_steps=8, warmup_steps=2, weight_decay_end=0.1, method=m)
        if state is not None:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["schedule"])
        out = []
        for _ in range(n):
            out.append((opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]))
            opt.step()
            sched.step()
        return out, {"optimizer": opt.state_dict(), "schedule": sched.state_dict()}

    whole, _ = run(8)
    first, state = run(3)
    torch.save(state, buf := io.BytesIO())
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)  # tensors and plain types only
    assert loaded["schedule"]["schedules"] == ["lr_factor", "momentum", "weight_decay"]
    rest, _ = run(5, loaded)
    assert first + rest == whole
    with pytest.raises(ValueError, match="set up differently"):
        RunSchedule(_optimizer(m), total_steps=8, method=m).load_state_dict(loaded["schedule"])  # no wd schedule


def test_a_method_cannot_declare_what_the_run_schedule_owns_nor_a_non_ramp():
    with pytest.raises(ValueError, match="owns"):
        RunSchedule(_optimizer(_Method({})), 4, method=_Method({"lr_factor": Ramp(1.0)}))
    with pytest.raises(TypeError, match="must be a monai_cxrssl.ramps.Ramp"):
        RunSchedule(_optimizer(_Method({})), 4, method=_Method({"momentum": 0.99}))
