"""End to end: the SimCLR bundle through ``python -m monai.bundle run`` in a subprocess."""

from __future__ import annotations

import json

import numpy as np
import pytest
import runner
import torch

from monai_cxrssl.checkpoints import load_backbone_weights, read_checkpoint
from monai_cxrssl.networks import build_backbone
from monai_cxrssl.paths import REPO_ROOT, RUN_OUTPUTS

CONFIG = REPO_ROOT / "bundles" / "simclr_cxr" / "configs" / "train.json"
INFERENCE = CONFIG.with_name("inference.json")
SMALL = ["--image_size", "32", "--batch_size", "8", "--backbone", "resnet10",
         "--progress", "false", "--cache_workers", "1"]


def run_bundle(out_dir, *args, check=True, small=True):
    return runner.run_bundle(CONFIG, out_dir, *(SMALL if small else []), *args, check=check)


@pytest.mark.slow
def test_demo_run_writes_checkpoint_that_resumes(tmp_path):
    out = tmp_path / "out"
    proc = run_bundle(out, "--epochs", "1")
    log = proc.stdout + proc.stderr
    assert "SYNTHETIC" in log  # the demo data says what it is
    demo = json.loads((out / "demo_data" / "datalist.json").read_text())
    n_train = len(demo["training"])

    ckpt = read_checkpoint(out / "checkpoint.pt")
    assert ckpt["method"] == "simclr" and ckpt["epoch"] == 1
    assert ckpt["iteration"] == n_train // 8  # drop_last batches of 8
    assert ckpt["optimizer"]["state"] and ckpt["lr_scheduler"]["last_epoch"] == ckpt["iteration"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    losses = [e.value for e in events.Scalars("loss")]
    assert len(losses) == ckpt["iteration"] and all(v > 0 for v in losses)

    backbone = build_backbone("resnet10")
    meta = load_backbone_weights(backbone, out / "models" / "backbone.pt")
    assert meta["epoch"] == 1
    assert backbone(torch.rand(2, 1, 32, 32)).shape == (2, 512)

    # resume: continue to epoch 2 from the checkpoint, not from scratch
    run_bundle(out, "--epochs", "2", "--resume", "true")
    ckpt2 = read_checkpoint(out / "checkpoint.pt")
    assert ckpt2["epoch"] == 2 and ckpt2["iteration"] == 2 * ckpt["iteration"]
    changed = any(not torch.equal(a, b) for a, b in zip(ckpt["state_dict"].values(), ckpt2["state_dict"].values()))
    assert changed

    # inference.json: one embedding per image of the demo set from the exported encoder (precision as the user
    # gets it), preprocessed as in pretraining (32 px, read from the export)
    runner.run_bundle(INFERENCE, out, "--backbone", "resnet10")
    from monai_cxrssl.data import LoadCXRd, ResizeCXRd
    from monai_cxrssl.evaluation import read_embeddings

    emb, paths, groups = read_embeddings(out / "embeddings")
    items = [e for k in ("training", "validation", "test") for e in demo.get(k, [])]
    assert emb.shape == (len(items), 512) and np.isfinite(emb).all()
    assert groups == [str(e.get("patient_id", "")) for e in items] and groups[0]
    load, resize = LoadCXRd("image"), ResizeCXRd("image", size=32, mode="pad")
    x = torch.stack([torch.as_tensor(resize(load({"image": p}))["image"]) for p in paths[:6]]).float()
    load_backbone_weights(backbone, out / "models" / "backbone.pt")
    with torch.no_grad():
        eager = backbone.eval()((x - 0.5) / 0.25)
    assert torch.nn.functional.cosine_similarity(torch.from_numpy(emb[:6]), eager).min() > 0.99


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
    # embeddings of the same real radiographs, with their Kermany patient ids
    runner.run_bundle(INFERENCE, out, "--backbone", "resnet10", "--input", dl_path, "--datalist_split", "training")
    from monai_cxrssl.evaluation import read_embeddings

    emb, paths, groups = read_embeddings(out / "embeddings")
    assert emb.shape == (48, 512) and paths == [str(e["image"]) for e in dl["training"]]
    assert groups == [e["patient_id"] for e in dl["training"]]


@pytest.mark.slow
def test_bad_input_fails_before_training_naming_the_problem(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_bundle(tmp_path / "o1", "--dataset_dir", empty, check=False)
    assert proc.returncode != 0 and str(empty) in proc.stdout + proc.stderr

    missing = tmp_path / "nowhere.png"
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"training": [{"image": str(missing)}] * 16}))
    proc = run_bundle(tmp_path / "o2", "--datalist", dl, check=False)
    assert proc.returncode != 0 and "nowhere.png" in proc.stdout + proc.stderr
    assert not (tmp_path / "o2" / "checkpoint.pt").exists()

    # initial weights of another backbone (two-stage pretraining): refused before the first iteration
    other = tmp_path / "resnet18_backbone.pt"
    torch.save({"format": "monai_cxrssl/backbone", "backbone": build_backbone("resnet18").spec(),
                "state_dict": build_backbone("resnet18").state_dict()}, other)
    proc = run_bundle(tmp_path / "o3", "--init_weights", other, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "resnet18_backbone.pt" in log and "Engine run" not in log


@pytest.mark.slow
def test_runs_from_inside_its_own_folder_as_the_model_zoo_does(tmp_path):
    """bundle_root is the bundle's folder and the default output_dir: from inside it (a copy, as the zoo holds it)
    the weights go to ./models (the zoo's ckpt_dir, models/model.pt) and the run's state beside them; from the
    repository root to bundles/simclr_cxr/models (the docs' commands)."""
    import shutil

    from monai_cxrssl.paths import bundle_root

    folder = tmp_path / "simclr_cxr"
    shutil.copytree(REPO_ROOT / "bundles" / "simclr_cxr", folder, ignore=shutil.ignore_patterns(*RUN_OUTPUTS))
    runner.run_python("-m", "monai.bundle", "run", "--config_file", "configs/train.json", *SMALL, "--epochs", "1",
                      cwd=folder)
    assert (folder / "models" / "model.pt").is_file() and (folder / "models" / "backbone.pt").is_file()
    assert (folder / "checkpoint.pt").is_file() and (folder / "tensorboard").is_dir()
    runner.run_python("-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--batch_size", "8",
                      "--backbone", "resnet10",
                      cwd=folder)
    assert (folder / "embeddings" / "embeddings.npy").is_file()
    assert not (folder / "outputs").exists() and not (folder / "bundles").exists()
    assert bundle_root("simclr_cxr") == "bundles/simclr_cxr"  # this process runs from the repository root
