"""End to end: the MICLe bundle through ``python -m monai.bundle run`` in a subprocess."""

from __future__ import annotations

import json

import pytest
import runner

from monai_cxrssl.checkpoints import read_checkpoint
from monai_cxrssl.paths import REPO_ROOT

CONFIG = REPO_ROOT / "bundles" / "micle_cxr" / "configs" / "train.json"
SMALL = ["--image_size", "32", "--batch_size", "8", "--backbone", "resnet10",
         "--progress", "false", "--cache_workers", "1"]


def run_bundle(out_dir, *args, check=True):
    return runner.run_bundle(CONFIG, out_dir, *SMALL, *args, check=check)


@pytest.mark.slow
def test_demo_run_pairs_images_of_one_patient_and_logs_the_share(tmp_path):
    out = tmp_path / "out"
    proc = run_bundle(out, "--epochs", "1")
    assert "SYNTHETIC" in proc.stdout + proc.stderr
    ckpt = read_checkpoint(out / "checkpoint.pt")
    demo = json.loads((out / "demo_data" / "datalist.json").read_text())
    assert ckpt["method"] == "micle" and ckpt["iteration"] == len(demo["training"]) // 8
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    share = [e.value for e in events.Scalars("multi_instance")]
    assert len(share) == ckpt["iteration"] and 0 < sum(share) / len(share) < 1  # demo patients have 1-3 images
    assert (out / "models" / "backbone.pt").is_file()


@pytest.mark.slow
def test_real_kermany_patients(tmp_path, kermany_dir):
    from monai_cxrssl.data.datalist import datalist_from_class_folders, write_datalist

    entries = datalist_from_class_folders(kermany_dir)["training"]
    by_patient: dict[str, list] = {}
    for e in entries:
        by_patient.setdefault(e["patient_id"], []).append(e)
    multi = [p for p, v in by_patient.items() if len(v) >= 2][:12]
    single = [p for p, v in by_patient.items() if len(v) == 1][:24]
    dl = {"training": [e for p in multi for e in by_patient[p][:2]] + [by_patient[p][0] for p in single]}
    path = write_datalist(dl, tmp_path / "kermany_patients.json")
    out = tmp_path / "out"
    proc = run_bundle(out, "--epochs", "1", "--datalist", path)
    assert "50.0% of images have another image of their patient" in proc.stdout + proc.stderr
    assert read_checkpoint(out / "checkpoint.pt")["iteration"] == len(dl["training"]) // 8


@pytest.mark.slow
def test_datalist_without_patients_fails_before_training(tmp_path):
    from PIL import Image
    import numpy as np

    entries = []
    for i in range(16):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(np.full((40, 40), 10 * i, dtype=np.uint8)).save(p)
        entries.append({"image": str(p)})
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"training": entries}))
    proc = run_bundle(tmp_path / "o", "--datalist", dl, check=False)
    assert proc.returncode != 0 and "patient_id" in proc.stdout + proc.stderr
    assert not (tmp_path / "o" / "checkpoint.pt").exists()
