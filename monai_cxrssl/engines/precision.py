"""The fast path's numerics: reduced precision where the hardware has it, channels_last, fp16 scaling.

- :func:`resolve_precision` turns ``"auto"`` into what the device does fast: bf16 on CPUs with
  AMX/AVX512-BF16 and on CUDA devices that support it, fp16 on older CUDA devices, fp32 elsewhere
  (on a CPU without native bf16, bf16 convolutions take a slow reference path: measured about 14x
  slower than fp32 on an AVX2 machine, see ``benchmarks/``).
- :func:`autocast` is the matching autocast context; losses and softmax statistics are computed
  in float32 by the losses themselves.
- :func:`grad_scaler` gives the loss scaler fp16 needs (``None`` otherwise).
- :class:`FastInferer` is a MONAI ``Inferer`` that runs any network (classifier training,
  validation, evaluation, inference) under that precision and memory format, returning float32.
"""

from __future__ import annotations

import contextlib
import functools
import weakref

import torch
from torch import nn

from monai.inferers import Inferer

from monai_cxrssl.utils import as_bool

__all__ = ["cpu_supports_bf16", "resolve_precision", "autocast", "grad_scaler", "to_channels_last", "FastInferer"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AMX-BF16 or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """Turn ``"auto"`` into ``"bf16"``, ``"fp16"`` or ``"fp32"`` for ``device``; validate the others.

    ``auto``: bf16 on CUDA devices that support it (else fp16), bf16 on CPUs with AMX/AVX512-BF16,
    fp32 elsewhere.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}; got {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision 'fp16' is for CUDA devices; on a CPU use 'bf16' (or 'auto')")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_supports_bf16() else "fp32"
    return "fp32"


def autocast(precision: str, device: torch.device | str):
    """The autocast context for a resolved precision (a null context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device | str) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 training (its small exponent range underflows gradients); ``None`` otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def to_channels_last(module: nn.Module) -> nn.Module:
    """Convert ``module``'s 4-D parameters and buffers to channels_last in place (optimiser references stay valid)."""
    return module.to(memory_format=torch.channels_last)


class FastInferer(Inferer):
    """Run a network under the fast path: reduced precision by :func:`resolve_precision`, channels_last.

    The network is converted to channels_last on its first call (in place: an optimiser built on
    its parameters keeps working); 4-D inputs are made channels_last; floating outputs come back
    as float32, so losses and metrics see full precision. Inputs that are not images (e.g. cached
    feature vectors of a linear probe) pass through unchanged in layout.

    Args:
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA).
        channels_last: use the channels_last memory format for 4-D inputs and the network.
    """

    def __init__(self, precision: str = "auto", channels_last: bool = True):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}; got {precision!r}")
        self.precision = precision
        self.channels_last = as_bool(channels_last, "channels_last")
        self._converted: weakref.WeakSet = weakref.WeakSet()

    def resolved(self, device: torch.device | str) -> str:
        """The precision used on ``device``."""
        return resolve_precision(self.precision, device)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        image_input = inputs.ndim == 4
        if self.channels_last and image_input:
            if isinstance(network, nn.Module) and network not in self._converted:
                to_channels_last(network)
                self._converted.add(network)
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast(self.resolved(inputs.device), inputs.device):
            out = network(inputs, *args, **kwargs)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            return out.float()
        return out
