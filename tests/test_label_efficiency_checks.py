"""The study's checks (experiments/label_efficiency/checks.py): options parsed, and bad input refused before any
training, through the command's entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monai_cxrssl.checkpoints import BACKBONE_EXPORT
from monai_cxrssl.experiments.label_efficiency import StudyError, main, parse_init, parse_overrides
from monai_cxrssl.networks import build_backbone

SMALL = ["--backbone", "resnet10", "--image-size", "32", "--batch-size", "8"]


def test_option_parsing():
    assert parse_init("random") == ("random", None)
    assert parse_init("simclr=out/models/backbone.pt") == ("simclr", "out/models/backbone.pt")
    for bad in ("out/backbone.pt", "random=x.pt", "sim-clr=x.pt", "=x.pt", "a="):
        with pytest.raises(StudyError):
            parse_init(bad)
    assert parse_overrides(["patience=3", "device=cuda", "class_weighting=true", "weight_decay=1e-4"]) == {
        "patience": 3, "device": "cuda", "class_weighting": True, "weight_decay": 1e-4}
    with pytest.raises(StudyError, match="--epochs-linear"):
        parse_overrides(["epochs=3"])
    with pytest.raises(StudyError, match="KEY=VALUE"):
        parse_overrides(["patience"])


def test_bad_input_refused_before_training(tmp_path, capsys):
    # a backbone export of resnet18 for a resnet10 study: error naming the init and the file, no runs/ folder
    other = build_backbone("resnet18")
    path = tmp_path / "resnet18_backbone.pt"
    torch.save({"format": BACKBONE_EXPORT, "backbone": other.spec(), "method": "simclr",
                "state_dict": other.state_dict()}, path)
    out = tmp_path / "study"
    code = main(["--out", str(out), "--allow-demo", "--init", "random", f"ssl={path}", "--modes", "linear",
                 "--fractions", "1.0", "--seeds", "0", *SMALL])
    err = capsys.readouterr().err
    assert code == 1 and "init 'ssl'" in err and str(path) in err and "resnet18" in err
    assert not (out / "runs").exists()

    # no data and no --allow-demo: refused, says why
    code = main(["--out", str(out), "--init", "random", "--fractions", "1.0", "--seeds", "0", *SMALL])
    err = capsys.readouterr().err
    assert code == 1 and "SYNTHETIC" in err and "--allow-demo" in err and not out.exists()

    # a datalist without test list, one with an entry missing its label: refused before any training
    dl = _tiny_datalist(tmp_path)
    code = main(["--out", str(out), "--datalist", str(dl), "--init", "random", "--fractions", "1.0", "--seeds", "0",
                 *SMALL])
    assert code == 1 and "no test list" in capsys.readouterr().err and not (out / "runs").exists()
    data = json.loads(dl.read_text())
    data["test"] = data.pop("validation")
    del data["training"][3]["label"]
    dl.write_text(json.dumps(data))
    code = main(["--out", str(out), "--datalist", str(dl), "--init", "random", "--fractions", "1.0", "--seeds", "0",
                 *SMALL])
    err = capsys.readouterr().err
    assert code == 1 and "label fraction 1.0 with seed 0" in err and "'label'" in err and not (out / "runs").exists()

    # a --set of a key the study controls names the option to use
    code = main(["--out", str(out), "--allow-demo", "--init", "random", "--set", "seed=3", *SMALL])
    assert code == 1 and "--seeds" in capsys.readouterr().err


def _tiny_datalist(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    entries = []
    for i in range(12):
        path = tmp_path / "img" / f"p{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(path)
        entries.append({"image": str(path), "label": i % 2, "patient_id": f"p{i}"})
    dl = tmp_path / "datalist.json"
    dl.write_text(json.dumps({"task": "binary", "classes": ["normal", "opacity"], "training": entries[:8],
                              "validation": entries[8:]}))
    return dl
