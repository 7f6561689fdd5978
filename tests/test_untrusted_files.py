"""Files from outside are data, never code: a pickle payload handed in at any entry point (initial weights,
resume checkpoint, a trained model for inference or export, a planted cache file) does not run; the file is
refused with a clear error naming it (the cache decodes the image again instead)."""

import json

import pytest
import torch

from monai_cxrssl.checkpoints import read_checkpoint
from monai_cxrssl.engines import SSLCheckpoint, export_torchscript, load_trained_classifier
from monai_cxrssl.exceptions import CheckpointError
from monai_cxrssl.methods import SimCLR
from monai_cxrssl.networks import build_backbone, build_classifier


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # unpickling this would create the marker file: code run by loading
        return (open, (self.path, "w"))


def _plant(path, marker, **extra):
    torch.save({"format": "monai_cxrssl/backbone", "state_dict": {}, "metadata": {"x": _Payload(str(marker))},
                **extra}, path)
    return path


def test_a_pickle_payload_runs_at_no_entry_point(tmp_path):
    marker = tmp_path / "code_ran"
    bad = _plant(tmp_path / "weights.pt", marker)
    safely = r"cannot be read safely.*arbitrary code"
    # initial weights: an SSL method's and a classifier's init_weights
    with pytest.raises(CheckpointError, match=safely):
        SimCLR(build_backbone("resnet10", widen_factor=0.25), init_weights=str(bad))
    with pytest.raises(CheckpointError, match=safely):
        build_classifier("resnet10", 1, init_weights=str(bad), widen_factor=0.25)
    # the resume checkpoint
    method = SimCLR(build_backbone("resnet10", widen_factor=0.25), hidden_dim=16, out_dim=8)
    handler = SSLCheckpoint(tmp_path / "run", method, torch.optim.SGD(method.parameters(), lr=0.1), resume=str(bad))
    with pytest.raises(CheckpointError, match=safely):
        handler.maybe_resume(type("E", (), {"state": None})())
    # a trained model for inference and TorchScript export
    models = tmp_path / "clf" / "models"
    models.mkdir(parents=True)
    _plant(models / "model.pt", marker)
    (models / "model_info.json").write_text(json.dumps({"backbone": {"name": "resnet10"}, "num_outputs": 1}))
    for load in (lambda: load_trained_classifier(tmp_path / "clf"), lambda: export_torchscript(tmp_path / "clf")):
        with pytest.raises(CheckpointError, match=rf"model.pt.*{safely}"):
            load()
    with pytest.raises(CheckpointError, match=r"weights.pt' cannot be read safely"):
        read_checkpoint(bad)
    assert not marker.exists()


def test_nothing_in_the_repository_unpickles_with_weights_only_false():
    """The code, tests, notebooks, benchmarks and docs never show ``torch.load(..., weights_only=False)``."""
    import re

    from monai_cxrssl.paths import REPO_ROOT

    pattern = re.compile(r"weights_only\s*=\s*False")
    files = [p for d in ("monai_cxrssl", "tests", "tutorials", "benchmarks", "bundles", "docs")
             for p in (REPO_ROOT / d).rglob("*") if p.suffix in {".py", ".ipynb", ".md", ".json"}]
    files += [REPO_ROOT / "README.md"]
    assert len(files) > 50
    this = "test_untrusted_files.py"
    found = [str(p.relative_to(REPO_ROOT)) for p in files if p.name != this and pattern.search(p.read_text())]
    assert found == []
