"""An interpreter with the heavy imports done, which forks one fresh process per command (for ``runner.py``).

Every end-to-end test runs a command line (``python -m monai.bundle run ...``, a test script) in its own
process, as a user would. Most of such a process's time on a 2-core CPU is the interpreter importing torch,
MONAI (which loads all its submodules), Ignite, scikit-learn and this package: about 8 s of CPU each, for well
over a hundred commands per test session. This server pays that once: it imports them, then for each request
forks a child that takes the request's working directory, environment, ``sys.argv`` and standard streams,
runs the module (``runpy.run_module(..., run_name="__main__")``, as ``python -m``) or the script, and exits
with its exit status (``-N`` when killed by signal N, as ``subprocess`` reports it). The child is a separate
process with its own memory: what one command does to module state, logging, RNGs or torch's settings does
not reach the next command or the test process.

What differs from a fresh interpreter: the modules listed in :data:`PRELOAD` are already imported (with the
server's environment), and string hashing uses the server's seed. The documented commands (``tests/test_docs.py``)
come here too, each group's to a server of its own that imports the package from the group's copy of the
repository; ``torchrun`` jobs do not: they start fresh interpreters. ``CXRSSL_TEST_FRESH_PROCESSES=1`` sends every
command to a fresh interpreter instead.

Protocol (one JSON object per line on stdin/stdout): the server prints ``{"ready": true}``; a request
``{"argv": [...], "cwd": ..., "env": {...}, "stdout": path, "stderr": path}`` is answered by
``{"pid": N}`` when the child starts and ``{"returncode": R}`` when it ends; end of input stops the server.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import signal
import sys
import traceback
import warnings

#: imported once by the server (each takes seconds on a small CPU); anything else is imported by the child
PRELOAD = ("torch", "numpy", "scipy.stats", "sklearn.linear_model", "sklearn.model_selection", "ignite.engine",
           "fire", "monai", "monai.bundle", "monai.bundle.scripts", "torch.utils.tensorboard", "tqdm",
           "pydicom", "monai_cxrssl", "monai_cxrssl.data", "monai_cxrssl.engines", "monai_cxrssl.methods",
           "monai_cxrssl.networks", "monai_cxrssl.losses", "monai_cxrssl.evaluation")


#: the protocol's channel: the server's original stdout (its fd 1 then points to stderr, so that anything an
#: import prints cannot garble the protocol)
_CHANNEL = None


def _send(message: dict) -> None:
    _CHANNEL.write(json.dumps(message) + "\n")
    _CHANNEL.flush()


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)  # sys.exit("message"), as the interpreter does
    return 1


def _child(request: dict) -> None:
    """In the forked child: become the requested command, run it, and never return."""
    code = 1
    try:
        _CHANNEL.close()
        os.setpgid(0, 0)  # its own process group: a timeout kills what it started too
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        warnings.resetwarnings()
        for spec in filter(None, os.environ.get("PYTHONWARNINGS", "").split(",")):
            warnings.simplefilter(spec.split(":")[0])  # the action of each entry ("ignore", "error", ...)
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        argv = list(request["argv"])
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path[0] = os.getcwd()  # python -m puts the working directory first
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            script = os.path.abspath(argv[0])
            sys.argv = [script, *argv[1:]]
            sys.path[0] = os.path.dirname(script)  # python SCRIPT puts the script's folder first
            runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as e:
        code = _exit_code(e)
    except BaseException:  # an uncaught exception: sys.excepthook (the command may have set its own) and status 1
        try:
            sys.excepthook(*sys.exc_info())
        except BaseException:
            traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()  # what a normal interpreter exit runs (logging shutdown, writers' flush)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    import importlib

    global _CHANNEL
    _CHANNEL = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional one missing: the child imports what it needs itself
            pass
    sys.stdout.flush()
    _send({"ready": True})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        _send({"pid": pid})
        _, status = os.waitpid(pid, 0)
        _send({"returncode": -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)})


if __name__ == "__main__":
    serve()
