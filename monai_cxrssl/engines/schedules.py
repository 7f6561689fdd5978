"""The run's schedule: every scheduled quantity of a training run in one object, precomputed per iteration.

:class:`RunSchedule` is the learning-rate scheduler of a run (a ``LambdaLR``, stepped every iteration by MONAI's
``LrScheduleHandler(epoch_level=False)`` and saved in the checkpoint) and also holds one array per other quantity,
as DINO's ``main_dino.py`` does: the weight decay of the decayed parameter groups, and whatever the method declares
(:meth:`~monai_cxrssl.methods.SSLMethod.schedules`: the EMA momentum of its momentum pairs, DINO's teacher
temperature). The SSL trainer reads :meth:`RunSchedule.at` for the iteration it runs and hands the values to the
method, so a method computes no schedule itself. Every array comes from one ramp, :class:`monai_cxrssl.ramps.Ramp`.

The values are a function of the iteration alone: a resumed run gets exactly the values of the uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from monai_cxrssl.ramps import Ramp

__all__ = ["RunSchedule", "ScheduleTable", "warmup_cosine"]

#: the optimiser group name whose weight decay :class:`RunSchedule` schedules (``SSLMethod.param_groups``)
DECAY_GROUP = "decay"


class ScheduleTable:
    """One precomputed array per named :class:`~monai_cxrssl.ramps.Ramp` over a run of ``total_steps`` iterations."""

    def __init__(self, total_steps: int, ramps: Mapping[str, Ramp]):
        self.total_steps = max(1, int(total_steps))
        for name, ramp in ramps.items():
            if not isinstance(ramp, Ramp):
                raise TypeError(f"schedule '{name}' must be a monai_cxrssl.ramps.Ramp, got {type(ramp).__name__}")
        self.ramps = dict(ramps)
        #: one float64 array of ``total_steps`` values per quantity (index: 0-based iteration)
        self.values = {name: ramp.values(self.total_steps) for name, ramp in self.ramps.items()}

    def value(self, name: str, step: int) -> float:
        """``name``'s value at the 0-based ``step`` (the ramp's final value after the run)."""
        if step >= self.total_steps:
            return self.ramps[name].final
        return float(self.values[name][max(0, int(step))])

    def at(self, iteration: int, names=None) -> dict[str, float]:
        """The values for the (1-based) ``iteration`` the trainer runs (of ``names``, default all)."""
        return {name: self.value(name, int(iteration) - 1) for name in (self.ramps if names is None else names)}


class RunSchedule(LambdaLR):
    """Learning rate, weight decay and the method's scheduled quantities of one run, one array each.

    Args:
        optimizer: the run's optimiser; each group's learning rate is its own base rate times the factor.
        total_steps: iterations of the whole run (epochs x iterations per epoch).
        warmup_steps: iterations of linear learning-rate warm-up (factor ``1 / warmup_steps`` up to 1; cut to
            ``total_steps - 1``).
        final_factor: learning-rate factor at the end of the cosine decay.
        weight_decay_end: when set, the weight decay of the decayed groups (named ``"decay"``, or every group with
            a non-zero weight decay when none is named) follows a cosine from its initial value to this one (DINO:
            0.04 -> 0.4); ``None`` keeps it constant.
        method: an SSL method whose :meth:`~monai_cxrssl.methods.SSLMethod.schedules` are precomputed here too
            (``None``: learning rate and weight decay only, e.g. the classifier's run).
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, final_factor: float = 0.0,
                 weight_decay_end: float | None = None, method=None):
        total = max(1, int(total_steps))
        warm = max(0, min(int(warmup_steps), total - 1))
        ramps: dict[str, Ramp] = {"lr_factor": Ramp(1.0, float(final_factor), "cosine", warm)}
        declared = dict(method.schedules()) if method is not None else {}
        clash = sorted(set(declared) & {"lr_factor", "weight_decay"})
        if clash:
            raise ValueError(f"method '{getattr(method, 'name', method)}' declares schedules named {clash}, which "
                             f"the run schedule owns")
        groups = optimizer.param_groups
        # indices, not the dictionaries: loading the optimiser's state (a resume) replaces them
        self._decay_groups = [i for i, g in enumerate(groups) if g.get("name") == DECAY_GROUP] or \
            [i for i, g in enumerate(groups) if g.get("weight_decay", 0.0)]
        if weight_decay_end is not None:
            starts = {float(groups[i]["weight_decay"]) for i in self._decay_groups}
            if len(starts) != 1:
                raise ValueError(f"weight_decay_end needs one initial weight decay over the decayed groups, got "
                                 f"{sorted(starts) or 'no decayed group'}")
            ramps["weight_decay"] = Ramp(starts.pop(), float(weight_decay_end), "cosine")
        #: the arrays: ``lr_factor``, ``weight_decay`` (when scheduled) and the method's quantities
        self.table = ScheduleTable(total, {**ramps, **declared})
        #: the names of the method's quantities, which :meth:`at` returns
        self.method_quantities = tuple(declared)
        super().__init__(optimizer, lambda step: self.table.value("lr_factor", step))

    @property
    def total_steps(self) -> int:
        return self.table.total_steps

    def at(self, iteration: int) -> dict[str, float]:
        """The method's quantities for the (1-based) ``iteration`` the trainer runs."""
        return self.table.at(iteration, self.method_quantities)

    def step(self, epoch=None):
        super().step(epoch)
        self._set_weight_decay()  # the coming iteration's, as the learning rate

    def _set_weight_decay(self) -> None:
        if "weight_decay" in self.table.values:
            for i in self._decay_groups:
                self.optimizer.param_groups[i]["weight_decay"] = self.table.value("weight_decay", self.last_epoch)

    # the arrays are a function of the settings: the checkpoint keeps the position, in plain types only
    def state_dict(self) -> dict:
        state = {k: v for k, v in super().state_dict().items()
                 if k not in ("table", "method_quantities")}
        state["schedules"] = sorted(self.table.values)
        return state

    def load_state_dict(self, state_dict: Mapping) -> None:
        state = dict(state_dict)
        saved = state.pop("schedules", None)
        if saved is not None and sorted(saved) != sorted(self.table.values):
            raise ValueError(f"the checkpoint's run schedule has the quantities {sorted(saved)}, this run's "
                             f"{sorted(self.table.values)}: the run was set up differently")
        state.pop("lr_lambdas", None)  # a LambdaLR's own entry (None for a lambda), from older checkpoints too
        self.__dict__.update(state)
        self._set_weight_decay()


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, final_factor: float = 0.0,
                  weight_decay_end: float | None = None, method=None) -> RunSchedule:
    """Linear warm-up from ``1 / warmup_steps`` of the base rate over ``warmup_steps``, then cosine decay to
    ``final_factor`` x the base rate: a :class:`RunSchedule` (with the method's quantities when ``method`` is given).

    Step it every iteration (MONAI ``LrScheduleHandler(epoch_level=False)``).
    """
    return RunSchedule(optimizer, total_steps, warmup_steps, final_factor, weight_decay_end, method)
