"""Crash safety: a run killed with SIGKILL at any moment, even inside a checkpoint write, resumes to exactly
the weights, queue and optimiser state of an uninterrupted run, and leaves no temporary file behind."""

import signal

import pytest
import runner
import torch

from monai_cxrssl.checkpoints import read_checkpoint
from monai_cxrssl.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "tests" / "crash_run.py"
EPOCHS = 3  # 3 iterations each; one checkpoint write (3 files: checkpoint, model, backbone) per epoch


def _final(out):
    return torch.load(out / "final.pt", weights_only=True)


@pytest.mark.slow
def test_a_run_killed_inside_a_checkpoint_write_resumes_to_the_uninterrupted_result(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("crash_run", SCRIPT)
    crash_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(crash_run)
    threads = torch.get_num_threads()
    try:
        crash_run.main(str(tmp_path / "straight"), EPOCHS, False, None)  # uninterrupted, in this process
    finally:
        torch.set_num_threads(threads)
    expected = _final(tmp_path / "straight")
    # SIGKILL inside the 4th file write: epoch 2's checkpoint.pt is on disk as a temporary file, not renamed yet
    out = tmp_path / "killed"
    proc = runner.run_python(SCRIPT, out, EPOCHS, "false", "write:4", check=False, threads=1)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])
    assert read_checkpoint(out / "checkpoint.pt")["epoch"] == 1  # epoch 1's checkpoint is intact
    assert list(out.glob(".checkpoint.pt.*.tmp"))  # the killed write's temporary file
    runner.run_python(SCRIPT, out, EPOCHS, "true", threads=1)
    got = _final(out)
    for key, value in expected["state"].items():  # backbone, head, key encoder, queue and its pointer
        assert torch.equal(value, got["state"][key]), key
    for a, b in zip(expected["optimizer"]["state"].values(), got["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(out.rglob("*.tmp"))  # removed when the resumed run started
