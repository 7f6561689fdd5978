"""Numerical precision of training: fp32, or bf16/fp16 autocast where the hardware supports it."""

from __future__ import annotations

import contextlib
import functools

import torch

__all__ = ["cpu_supports_bf16", "resolve_precision", "autocast"]


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
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be one of 'auto', 'fp32', 'bf16', 'fp16'; got {precision!r}")
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
