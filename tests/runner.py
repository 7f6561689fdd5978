"""Run the project's command lines in a process of their own, as a user would, and fail the test with the
output tail.

One helper for every end-to-end test: ``python -m monai.bundle run``, ``torchrun`` and the package's own
command lines. Imported by the tests as ``from runner import ...`` (pytest puts ``tests/`` on ``sys.path``).

``python`` commands are forked from a server that has done the heavy imports once (``tests/zygote.py``: the
same command line, working directory and environment in a fresh child process, without the ~8 s of imports
per command); ``torchrun`` and ``CXRSSL_TEST_FRESH_PROCESSES=1`` start fresh interpreters.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from monai_cxrssl.paths import REPO_ROOT

ZYGOTE = Path(__file__).with_name("zygote.py")
#: every command in a fresh interpreter instead of the zygote's forks
FRESH_PROCESSES = os.environ.get("CXRSSL_TEST_FRESH_PROCESSES", "").strip().lower() in ("1", "true", "yes")


class Zygote:
    """The client of one ``tests/zygote.py`` server (started on first use, stopped when the tests end)."""

    def __init__(self, package_root=None, env: dict | None = None):
        """``package_root``: a copy of the repository whose ``monai_cxrssl`` the server imports (first on its path),
        for commands run in that copy; default: this checkout's. ``env``: the server's environment when it imports
        (thread pools are sized then); default: this process's."""
        env = {**(os.environ if env is None else env), "PYTHONWARNINGS": "ignore"}
        if package_root is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package_root), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen([sys.executable, str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=package_root or REPO_ROOT, env=env)
        self.lock = threading.Lock()
        self._buffer = b""
        if not self._read(timeout=300).get("ready"):
            raise RuntimeError("tests/zygote.py did not start")

    def _read(self, timeout: float | None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"tests/zygote.py ended (exit status {self.proc.wait()})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def run(self, args: list[str], cwd, env: dict, timeout: float) -> subprocess.CompletedProcess:
        with self.lock, tempfile.TemporaryDirectory(prefix="zygote-") as tmp:
            out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
            request = {"argv": args, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
            pid = self._read(timeout=60)["pid"]
            try:
                rc = self._read(timeout=timeout)["returncode"]
            except TimeoutError:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:  # it ended just now
                    pass
                self._read(timeout=60)
                raise subprocess.TimeoutExpired([sys.executable, *args], timeout, out.read_text(errors="replace"),
                                                err.read_text(errors="replace")) from None
            return subprocess.CompletedProcess([sys.executable, *args], rc, out.read_text(errors="replace"),
                                               err.read_text(errors="replace"))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


_ZYGOTE: Zygote | None = None


def _zygote() -> Zygote:
    global _ZYGOTE
    if _ZYGOTE is None:
        _ZYGOTE = Zygote()
        atexit.register(_ZYGOTE.close)
    return _ZYGOTE


def run_python(*args, check: bool = True, timeout: float = 600, threads: int | None = None, cwd=REPO_ROOT,
               env: dict | None = None):
    """``python ARGS...`` from ``cwd``; on a non-zero exit (with ``check``) fail with the command and output tail.

    ``threads=1`` sets ``OMP_NUM_THREADS=1``: tiny networks run faster without thread synchronisation, above
    all when several processes share two cores. ``env`` adds to the environment.
    """
    cmd = [sys.executable, *map(str, args)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    # torchrun: its workers are fresh interpreters anyway
    if FRESH_PROCESSES or cmd[1:3] == ["-m", "torch.distributed.run"]:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    else:
        proc = _zygote().run(cmd[1:], cwd, env, timeout)
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_nodes(nnodes: int, nproc: int, *args, node_env: list[dict] | None = None, timeout: float = 600,
                   threads: int = 1, cwd=REPO_ROOT) -> list[subprocess.CompletedProcess]:
    """``nnodes`` nodes simulated on this machine: ``torchrun --nnodes N --nproc_per_node P --rdzv_backend c10d
    --rdzv_endpoint 127.0.0.1:PORT ARGS...`` started N times at once, as each node of a cluster starts it (the
    rendezvous on loopback); ``node_env[i]`` adds to node i's environment. Fails the test with every node's
    output tail unless each exits 0."""
    port, env = free_port(), {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc_per_node", str(nproc),
           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", f"test{port}",
           *map(str, args)]
    procs = [subprocess.Popen(cmd, cwd=cwd, env={**env, **((node_env or [{}] * nnodes)[i])}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(nnodes)]
    results = []
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            out, err = proc.communicate()
        results.append(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
    if any(r.returncode != 0 for r in results):
        pytest.fail(f"{' '.join(cmd)} on {nnodes} nodes failed:\n" + "\n".join(
            f"--- node {i} ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}" for i, r in enumerate(results)))
    return results
