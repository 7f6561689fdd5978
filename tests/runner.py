"""Run the project's command lines in a subprocess, as a user would, and fail the test with the output tail.

One helper for every end-to-end test: ``python -m monai.bundle run``, ``torchrun`` and the package's own
command lines. Imported by the tests as ``from runner import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from monai_cxrssl.paths import REPO_ROOT


def run_python(*args, check: bool = True, timeout: float = 600, threads: int | None = None, cwd=REPO_ROOT):
    """``python ARGS...`` from ``cwd``; on a non-zero exit (with ``check``) fail with the command and output tail.

    ``threads=1`` sets ``OMP_NUM_THREADS=1``: tiny networks run faster without thread synchronisation, above
    all when several processes share two cores.
    """
    cmd = [sys.executable, *map(str, args)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_bundle(config, out_dir, *args, **kwargs):
    """``python -m monai.bundle run --config_file CONFIG --output_dir OUT ARGS...`` (keywords as ``run_python``)."""
    return run_python("-m", "monai.bundle", "run", "--config_file", config, "--output_dir", out_dir, *args, **kwargs)


def torchrun(nproc: int, *args, **kwargs):
    """``torchrun --standalone --nproc_per_node N ARGS...`` on CPU (Gloo), one thread per process by default."""
    kwargs.setdefault("threads", 1)
    return run_python("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", nproc, *args, **kwargs)
