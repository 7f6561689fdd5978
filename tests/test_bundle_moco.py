"""End to end: the MoCo bundle through ``python -m monai.bundle run`` in a subprocess."""

from __future__ import annotations

import json

import pytest
import runner
import torch

from monai_cxrssl.checkpoints import load_backbone_weights, read_checkpoint
from monai_cxrssl.networks import build_backbone
from monai_cxrssl.paths import REPO_ROOT

CONFIG = REPO_ROOT / "bundles" / "moco_cxr" / "configs" / "train.json"
SMALL = ["--image_size", "32", "--batch_size", "8", "--backbone", "resnet10",
         "--progress", "false", "--cache_workers", "1", "--queue_size", "20"]


def run_bundle(out_dir, *args, check=True):
    return runner.run_bundle(CONFIG, out_dir, *SMALL, *args, check=check)


@pytest.mark.slow
def test_demo_run_checkpoints_queue_and_key_encoder_and_resumes(tmp_path):
    out = tmp_path / "out"
    proc = run_bundle(out, "--epochs", "1")
    assert "SYNTHETIC" in proc.stdout + proc.stderr
    n_train = len(json.loads((out / "demo_data" / "datalist.json").read_text())["training"])

    ckpt = read_checkpoint(out / "checkpoint.pt")
    sd = ckpt["state_dict"]
    assert ckpt["method"] == "moco" and ckpt["epoch"] == 1 and ckpt["iteration"] == n_train // 8
    assert sd["memory.keys"].shape == (20, 128) and int(sd["memory.ptr"]) == (ckpt["iteration"] * 8) % 20
    assert torch.allclose(sd["memory.keys"].norm(dim=1), torch.ones(20), atol=1e-4)
    key_params = [k for k in sd if k.startswith(("key_backbone.", "key_head."))]
    assert len(key_params) == len([k for k in sd if k.startswith(("backbone.", "head."))])
    assert ckpt["metadata"]["queue_size"] == 20 and ckpt["metadata"]["key_splits"] == 2

    backbone = build_backbone("resnet10")
    meta = load_backbone_weights(backbone, out / "models" / "backbone.pt")
    assert meta["method"] == "moco" and meta["epoch"] == 1
    for k, v in backbone.state_dict().items():  # the exported backbone is the query encoder's
        assert torch.equal(v, sd["backbone." + k]), k

    run_bundle(out, "--epochs", "2", "--resume", "true")
    ckpt2 = read_checkpoint(out / "checkpoint.pt")
    assert ckpt2["epoch"] == 2 and ckpt2["iteration"] == 2 * ckpt["iteration"]
    assert int(ckpt2["state_dict"]["memory.ptr"]) == (ckpt2["iteration"] * 8) % 20
    for k in ("memory.keys", "key_head.0.weight", "backbone.net.conv1.weight"):
        assert not torch.equal(ckpt["state_dict"][k], ckpt2["state_dict"][k]), k


@pytest.mark.slow
def test_real_kermany_short_run(tmp_path, kermany_dir):
    # a short run on real radiographs: a 48-image datalist drawn from the Kermany training folder
    from monai_cxrssl.data.datalist import datalist_from_class_folders, write_datalist

    dl = datalist_from_class_folders(kermany_dir)
    dl["training"] = dl["training"][::100][:48]
    dl_path = write_datalist(dl, tmp_path / "kermany48.json")
    out = tmp_path / "out"
    run_bundle(out, "--epochs", "1", "--datalist", dl_path, "--momentum_schedule", "cosine")
    ckpt = read_checkpoint(out / "checkpoint.pt")
    assert ckpt["iteration"] == 6 and ckpt["metadata"]["datalist"] == str(dl_path)
    assert int(ckpt["state_dict"]["memory.ptr"]) == (6 * 8) % 20
    assert not (out / "demo_data").exists()
