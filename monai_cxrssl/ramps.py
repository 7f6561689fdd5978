"""Ramps: how one scheduled quantity moves over a run, as one array of values per iteration.

Every scheduled quantity of this project is a :class:`Ramp` (learning-rate factor, weight decay, EMA momentum,
DINO's teacher temperature), precomputed for a run's iterations by :meth:`Ramp.values`, as DINO's ``main_dino.py``
builds one schedule array per quantity::

    iteration:      0 ... warmup_steps-1 | warmup_steps ... total_steps-1
    value:          linear warm-up       | start -> end ("constant", "linear" or "cosine")
                    warmup_start -> start|

The run's schedule (:class:`monai_cxrssl.engines.RunSchedule`) holds the arrays; methods only declare their ramps
(:meth:`monai_cxrssl.methods.SSLMethod.schedules`). This module depends on nothing else in the package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Ramp", "RAMP_KINDS"]

RAMP_KINDS = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class Ramp:
    """A scheduled quantity: ``start`` -> ``end`` after an optional linear warm-up.

    Args:
        start: the value after the warm-up (at the first iteration when there is none).
        end: the value at the end of the run (``None``: ``start``, i.e. constant).
        kind: ``"constant"`` (``start`` throughout), ``"linear"`` or ``"cosine"`` (half a cosine from ``start`` at
            the first post-warm-up iteration towards ``end``, which it reaches after the last).
        warmup_steps: iterations of linear warm-up before that, ``linspace(warmup_start, start, warmup_steps)``
            (DINO's warm-ups: it reaches ``start`` at its last iteration). A learning-rate warm-up is cut to
            leave at least one iteration of decay (:class:`~monai_cxrssl.engines.RunSchedule`).
        warmup_start: the value at the first warm-up iteration (default ``start / warmup_steps``: a learning-rate
            warm-up whose first step is not wasted at zero).
    """

    start: float
    end: float | None = None
    kind: str = "constant"
    warmup_steps: int = 0
    warmup_start: float | None = None

    def __post_init__(self):
        if self.kind not in RAMP_KINDS:
            raise ValueError(f"a ramp's kind must be one of {RAMP_KINDS}, got {self.kind!r}")
        if int(self.warmup_steps) < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        for name in ("start", "end", "warmup_start"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(float(v)):
                raise ValueError(f"a ramp's {name} must be finite, got {v}")

    @property
    def final(self) -> float:
        """The value after the run's last iteration (``end``; ``start`` for a constant ramp)."""
        return float(self.start if self.end is None or self.kind == "constant" else self.end)

    def values(self, total_steps: int) -> np.ndarray:
        """The value at each of ``total_steps`` iterations (0-based), float64.

        A warm-up longer than the run is cut with it (the run ends inside the warm-up).
        """
        total = max(1, int(total_steps))
        warm = int(self.warmup_steps)
        start, end = float(self.start), self.final
        first = start / warm if self.warmup_start is None and warm else self.warmup_start
        head = np.linspace(float(first), start, warm)[:total] if warm else np.empty(0)
        n = total - len(head)
        t = np.arange(n, dtype=np.float64) / max(n, 1)
        if self.kind == "cosine":  # math.cos: the same values on every machine (NumPy's may use SIMD kernels)
            tail = end + (start - end) * 0.5 * (1 + np.array([math.cos(math.pi * x) for x in t]))
        elif self.kind == "linear":
            tail = start + (end - start) * t
        else:
            tail = np.full(n, start)
        return np.concatenate([head, tail]).astype(np.float64)
