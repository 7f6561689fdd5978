"""Momentum (EMA) encoders: the teacher of DINO and the key encoder of MoCo.

A momentum copy is a frozen duplicate of a network whose weights follow the trained network
as an exponential moving average, ``target = m * target + (1 - m) * source``, after each
optimiser step. ``m`` is fixed (MoCo: 0.999) or follows a cosine schedule towards 1 (DINO:
0.996 -> 1): a :class:`~monai_cxrssl.ramps.Ramp` of the run's schedule.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["momentum_copy", "update_momentum"]


def momentum_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with gradients off: it is only ever updated by :func:`update_momentum`."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def update_momentum(source: nn.Module, target: nn.Module, m: float) -> None:
    """``target = m * target + (1 - m) * source`` for every parameter.

    Buffers (BatchNorm running statistics) are left alone: as in the MoCo and DINO reference
    code, the momentum copy runs in training mode and keeps statistics of its own batches, so the
    exported teacher's statistics match its own weights.

    Raises:
        ValueError: when ``m`` is outside [0, 1], or the two modules do not have the same parameters
            (names and shapes).
    """
    m = float(m)  # a 0-d tensor would fail as ``alpha`` below
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {m}")
    src, tgt = dict(source.named_parameters()), dict(target.named_parameters())
    if src.keys() != tgt.keys():
        differ = sorted(src.keys() ^ tgt.keys())[:3]
        raise ValueError(f"momentum update between modules with different parameters (e.g. {differ})")
    # same names but other shapes would broadcast silently in ``add_``
    shapes = [n for n, p in src.items() if p.shape != tgt[n].shape]
    if shapes:
        raise ValueError(f"momentum update between modules whose parameters differ in shape: '{shapes[0]}' is "
                         f"{tuple(src[shapes[0]].shape)} in the source, {tuple(tgt[shapes[0]].shape)} in the target")
    for name, p in src.items():
        tgt[name].mul_(m).add_(p.detach(), alpha=1.0 - m)
