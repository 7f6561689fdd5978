"""Multi-process training with torchrun (Gloo on CPU): the same results as one process with the whole batch."""

from __future__ import annotations

import os

import pytest
from runner import torchrun
import torch

from monai_cxrssl.checkpoints import read_checkpoint

HERE = os.path.dirname(__file__)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "micle", "moco"])
def test_two_processes_with_batch_b_equal_one_process_with_batch_2b(tmp_path, method):
    if method == "moco":
        pytest.importorskip("monai_cxrssl.methods.moco")
    script = os.path.join(HERE, "dist_step.py")
    # MoCo's shuffled key batches: 2 chunks in total either way (1 per process, or 2 in one process)
    torchrun(1, script, method, 8, tmp_path / "one.pt", 2)
    torchrun(2, script, method, 8, tmp_path / "two.pt", 1)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-5)
    assert torch.allclose(one["params"], two["params"], atol=1e-5)  # gradients gathered and averaged right
    if method == "moco":  # keys of both processes enqueued, in the global batch's order
        assert one["queue_ptr"] == two["queue_ptr"] == 8
        assert torch.allclose(one["queue"], two["queue"], atol=1e-5)


@pytest.mark.slow
def test_simclr_bundle_under_torchrun(tmp_path):
    out = tmp_path / "out"
    configs = "['bundles/simclr_cxr/configs/train.json','bundles/simclr_cxr/configs/multi_gpu_train.json']"
    torchrun(2, "-m", "monai.bundle", "run", "--config_file", configs, "--output_dir", out,
             "--image_size", "32", "--batch_size", "4", "--backbone", "resnet10",
             "--epochs", "1", "--progress", "false", "--cache_workers", "1")
    ckpt = read_checkpoint(out / "checkpoint.pt")
    import json

    n_train = len(json.loads((out / "demo_data" / "datalist.json").read_text())["training"])
    assert ckpt["iteration"] == n_train // (4 * 2)  # each process takes its half of every global batch
    assert (out / "models" / "backbone.pt").is_file()
    # resume under torchrun: every process loads the checkpoint rank 0 wrote
    torchrun(2, "-m", "monai.bundle", "run", "--config_file", configs, "--output_dir", out, "--image_size", "32",
             "--batch_size", "4", "--backbone", "resnet10", "--epochs", "2", "--progress",
             "false", "--cache_workers", "1", "--resume", "true")
    assert read_checkpoint(out / "checkpoint.pt")["iteration"] == 2 * ckpt["iteration"]
