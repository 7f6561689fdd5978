"""End to end: the DINO bundle through ``python -m monai.bundle run`` in a subprocess."""

from __future__ import annotations

import json

import pytest
import runner
import torch

from monai_cxrssl.checkpoints import load_backbone_weights, read_checkpoint
from monai_cxrssl.networks import build_backbone, init_backbone
from monai_cxrssl.paths import REPO_ROOT

from timm_vit_reference import random_timm_state_dict

BUNDLES = REPO_ROOT / "bundles"
CONFIG = BUNDLES / "dino_cxr" / "configs" / "train.json"
# ViT-tiny/16 (192-d) cut to 2 blocks, on 32-pixel global and 16-pixel local crops (2 x 2 and 1 x 1 patch grids)
DEPTH = 2
SMALL = ["--image_size", "32", "--local_size", "16", "--local_crops", "2", "--batch_size", "8",
         "--backbone", "vit_tiny", "--network_def#backbone#depth", str(DEPTH), "--out_dim", "256", "--hidden_dim",
         "128", "--bottleneck_dim", "64", "--progress", "false", "--cache_workers", "1"]


def run_bundle(out_dir, *args, config=CONFIG, small=SMALL, check=True):
    # one thread: these tiny networks run faster without thread synchronisation, above all on a busy machine
    return runner.run_bundle(config, out_dir, *small, *args, check=check, threads=1)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """One set of synthetic phantoms for every run of this module (written by the first run)."""
    return tmp_path_factory.mktemp("dino_demo") / "demo_data"


@pytest.mark.slow
def test_demo_run_checkpoints_teacher_and_centre(tmp_path, demo_dir):
    # exact resumption of student, teacher and centre: tests/test_dino.py (the handler: test_bundle_simclr.py)
    out = tmp_path / "out"
    proc = run_bundle(out, "--epochs", "1", "--demo_dir", demo_dir)
    assert "SYNTHETIC" in proc.stdout + proc.stderr
    n_train = len(json.loads((demo_dir / "datalist.json").read_text())["training"])

    ckpt = read_checkpoint(out / "checkpoint.pt")
    sd = ckpt["state_dict"]
    assert ckpt["method"] == "dino" and ckpt["epoch"] == 1 and ckpt["iteration"] == n_train // 8
    assert ckpt["backbone"] == {"name": "vit_tiny", "out_dim": 192, "in_channels": 1, "depth": DEPTH}
    assert ckpt["metadata"]["local_crops"] == 2
    assert sd["criterion.center"].shape == (1, 256) and torch.count_nonzero(sd["criterion.center"]) > 0
    teacher = {k[len("teacher_backbone."):]: v for k, v in sd.items() if k.startswith("teacher_backbone.")}
    student = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    assert teacher.keys() == student.keys() and any(not torch.equal(teacher[k], student[k]) for k in teacher)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert len(events.Scalars("loss")) == ckpt["iteration"]
    temps = [e.value for e in events.Scalars("teacher_temp")]
    assert temps[0] == pytest.approx(0.04) and temps[-1] == pytest.approx(0.07)  # warmed up over the epoch

    # models/backbone.pt is the teacher, loadable by name as the classifier bundle does
    backbone = build_backbone("vit_tiny", depth=DEPTH)
    meta = load_backbone_weights(backbone, out / "models" / "backbone.pt")
    assert meta["method"] == "dino" and meta["epoch"] == 1
    assert all(torch.equal(v, teacher[k]) for k, v in backbone.state_dict().items())
    assert backbone(torch.rand(2, 1, 32, 32)).shape == (2, 192)


@pytest.mark.slow
def test_init_weights_from_a_dinov2_layout_file(tmp_path, demo_dir):
    # a DINOv2-ViT-S/14-like file for ViT-tiny: 3 channels, 14-pixel patches, a 16 x 16 position grid, LayerScale
    weights = tmp_path / "dinov2_vit_tiny14.pth"
    torch.save(random_timm_state_dict(dim=192, depth=DEPTH, patch=14, grid=16), weights)
    out = tmp_path / "out"
    proc = run_bundle(out, "--epochs", "1", "--init_weights", weights, "--demo_dir", demo_dir)
    log = proc.stdout + proc.stderr
    assert "timm/DINOv2 layout" in log and "FlexiViT" in log and "16x16 to a 14x14" in log

    ckpt = read_checkpoint(out / "checkpoint.pt")
    assert ckpt["metadata"]["init_weights"] == str(weights)
    expected = build_backbone("vit_tiny", depth=DEPTH)
    init_backbone(expected, weights)
    exported = build_backbone("vit_tiny", depth=DEPTH)
    load_backbone_weights(exported, out / "models" / "backbone.pt")
    # the teacher started from the imported weights and moved little in one short epoch (lr ~1e-5)
    for k, v in expected.state_dict().items():
        assert torch.allclose(exported.state_dict()[k], v, atol=1e-3), k



@pytest.mark.slow
def test_real_kermany_short_run(tmp_path, kermany_dir):
    # a short run on real radiographs: a 48-image datalist drawn from the Kermany training folder
    from monai_cxrssl.data.datalist import datalist_from_class_folders, write_datalist

    dl = datalist_from_class_folders(kermany_dir)
    dl["training"] = dl["training"][::100][:48]
    dl_path = write_datalist(dl, tmp_path / "kermany48.json")
    out = tmp_path / "out"
    run_bundle(out, "--epochs", "1", "--datalist", dl_path)
    ckpt = read_checkpoint(out / "checkpoint.pt")
    assert ckpt["iteration"] == 6 and ckpt["metadata"]["datalist"] == str(dl_path)
    assert not (out / "demo_data").exists()
    assert torch.isfinite(ckpt["state_dict"]["criterion.center"]).all()
