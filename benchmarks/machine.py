"""What a benchmark ran on: the CPU model and its vector/matrix flags (AVX2, AVX-512, AMX), cores and Python.

Every benchmark prints and records this: the CPUs of machines of one kind differ (AVX2 only on one, AVX-512-BF16
on another), and the figures depend on it. Imported by the benchmarks as ``from machine import describe``."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def cpu_flags() -> list[str]:
    """The CPU's AVX, FMA, F16C, AVX-512 and AMX flags (``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f in ("avx", "avx2", "fma", "f16c") or f.startswith(("avx512", "amx")))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def describe() -> dict:
    """``{"cpu", "flags", "cores", "python"}`` of this machine."""
    return {"cpu": cpu_model(), "flags": cpu_flags(), "cores": os.cpu_count(), "python": platform.python_version()}


def write_results(result: dict, out: str | os.PathLike, markdown: str) -> None:
    """``result`` as JSON at ``out`` and ``markdown`` beside it (``.md``), folders created; the table printed."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown)
    print(markdown)
