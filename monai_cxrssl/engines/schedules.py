"""Learning-rate schedules stepped once per iteration."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["warmup_cosine"]


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, final_factor: float = 0.0) -> LambdaLR:
    """Linear warm-up from 0 over ``warmup_steps``, then cosine decay to ``final_factor`` x the base rate.

    Step it every iteration (MONAI ``LrScheduleHandler(epoch_level=False)``).
    """
    total_steps = max(1, int(total_steps))
    warmup_steps = max(0, min(int(warmup_steps), total_steps - 1))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return LambdaLR(optimizer, factor)
