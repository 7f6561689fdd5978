"""End to end: the BYOL bundle through ``python -m monai.bundle run`` in a subprocess."""

from __future__ import annotations

import pytest
import runner
import torch

from monai_cxrssl.checkpoints import read_checkpoint
from monai_cxrssl.paths import REPO_ROOT

CONFIG = REPO_ROOT / "bundles" / "byol_cxr" / "configs" / "train.json"
SMALL = ["--image_size", "32", "--batch_size", "8", "--backbone", "resnet10", "--progress", "false",
         "--cache_workers", "1", "--network_def#hidden_dim", "64", "--network_def#predictor_hidden_dim", "64"]


def run_bundle(out_dir, *args, check=True):
    return runner.run_bundle(CONFIG, out_dir, *SMALL, *args, check=check)


@pytest.mark.slow
def test_demo_run_logs_the_rising_momentum_and_resumes(tmp_path):
    out = tmp_path / "out"
    proc = run_bundle(out, "--epochs", "1")
    assert "SYNTHETIC" in proc.stdout + proc.stderr
    ckpt = read_checkpoint(out / "checkpoint.pt")
    assert ckpt["method"] == "byol" and ckpt["epoch"] == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    momentum = [e.value for e in events.Scalars("momentum")]
    assert len(momentum) == ckpt["iteration"] and momentum[0] == pytest.approx(0.996) and momentum == sorted(momentum)
    assert momentum[-1] > momentum[0]  # the cosine to 1 over the run
    assert (out / "models" / "backbone.pt").is_file()
    # resumed (an exact resume is tests/test_byol.py's): the run goes on from the checkpoint, target included
    run_bundle(out, "--epochs", "2", "--resume", "true")
    ckpt2 = read_checkpoint(out / "checkpoint.pt")
    assert ckpt2["epoch"] == 2 and ckpt2["iteration"] == 2 * ckpt["iteration"]
    for k in ("target_projector.0.weight", "predictor.0.weight", "backbone.net.conv1.weight"):
        assert not torch.equal(ckpt["state_dict"][k], ckpt2["state_dict"][k]), k
