"""Two-stage pretraining: every SSL method starts from given backbone weights (not a resume), records where
they came from, and the chain of initialisations survives export and downstream use."""

from __future__ import annotations

import pytest
import torch
from monai.data import Dataset
from monai.handlers import LrScheduleHandler
from monai.utils import set_determinism

from monai_cxrssl.checkpoints import atomic_save, file_sha256, initialisation_chain, read_checkpoint
from monai_cxrssl.data.loaders import ssl_dataloader
from monai_cxrssl.data.views import CXRViewAugment
from monai_cxrssl.engines import SSLCheckpoint, SSLTrainer, warmup_cosine
from monai_cxrssl.exceptions import CheckpointError
from monai_cxrssl.methods import SimCLR
from monai_cxrssl.networks import build_backbone, build_classifier
from small_methods import METHODS, bundles, small

SMALL = {"widen_factor": 0.25}


def _backbone(name="resnet10", seed=0):
    torch.manual_seed(seed)
    return build_backbone(name, **SMALL)


def _export(path, backbone, **extra):
    """A backbone file as the SSL bundles export it (format, spec, weights)."""
    atomic_save({"format": "monai_cxrssl/backbone", "backbone": backbone.spec(), "method": "simclr", "epoch": 7,
                 "metadata": {"dataset_dir": "/data/source"}, "state_dict": backbone.state_dict(), **extra}, path)
    return path


@pytest.mark.parametrize("name", METHODS)
def test_init_weights_set_the_starting_point_of_every_network_the_method_trains(tmp_path, name):
    source = _backbone(seed=1)
    path = _export(tmp_path / "source.pt", source)
    fresh = small(name, _backbone(seed=2))
    method = small(name, _backbone(seed=2), init_weights=str(path))
    want = source.state_dict()
    for k, v in method.backbone.state_dict().items():
        assert torch.equal(v, want[k]), k
    assert any(not torch.equal(v, want[k]) for k, v in fresh.backbone.state_dict().items())  # the file changed it
    # momentum copies are made after the initialisation: the key encoder / teacher / target start there too
    for online, target in method.momentum_pairs:
        if online is method.backbone:
            for k, v in target.state_dict().items():
                assert torch.equal(v, want[k]), k
    report = method.init_report
    assert report["source"] == str(path) and report["sha256"] == file_sha256(path)
    assert report["method"] == "simclr" and report["epoch"] == 7
    assert fresh.init_report == {"source": "random"}


@pytest.mark.parametrize("name", METHODS)
def test_a_backbone_of_another_architecture_is_an_error_naming_the_file(tmp_path, name):
    path = _export(tmp_path / "resnet18.pt", _backbone("resnet18"))
    with pytest.raises(CheckpointError, match="resnet18.pt"):
        small(name, _backbone("resnet10"), init_weights=str(path))


def _pretrain(out_dir, init_weights, seed=0):
    set_determinism(seed=seed)
    method = SimCLR(_backbone(seed=seed), hidden_dim=32, out_dim=16, init_weights=init_weights)
    opt = torch.optim.AdamW(method.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    loader = ssl_dataloader(Dataset([{"image": torch.rand(1, 32, 32, generator=g)} for _ in range(8)]),
                            batch_size=4, seed=seed)
    sched = warmup_cosine(opt, total_steps=len(loader), warmup_steps=1)
    handlers = [LrScheduleHandler(sched, epoch_level=False, print_lr=False),
                SSLCheckpoint(out_dir, method, opt, sched, metadata={"datalist": f"{out_dir.name}.json"})]
    trainer = SSLTrainer("cpu", 1, loader, method, opt, CXRViewAugment(out_size=32), seed=seed, precision="fp32",
                         handlers=handlers)
    trainer.run()
    return trainer, method


def test_continuing_ssl_starts_fresh_and_records_the_chain_down_to_random(tmp_path):
    _pretrain(tmp_path / "source", "")
    first = tmp_path / "source" / "models" / "backbone.pt"
    trainer, _ = _pretrain(tmp_path / "target", str(first))
    # not a resume: the second stage ran its own full schedule from iteration 0 with a fresh optimiser
    ckpt = read_checkpoint(tmp_path / "target" / "checkpoint.pt")
    assert ckpt["iteration"] == trainer.state.iteration == 2 and ckpt["epoch"] == 1
    assert ckpt["optimizer"]["state"][0]["step"].item() == 2
    second = tmp_path / "target" / "models" / "backbone.pt"
    for path in (tmp_path / "target" / "checkpoint.pt", second):
        rec = read_checkpoint(path)["initialisation"]
        assert rec["source"] == str(first) and rec["sha256"] == file_sha256(first)
        assert rec["initialisation"] == {"source": "random"}
    # downstream: the classifier knows both stages
    clf = build_classifier("resnet10", num_outputs=1, init_weights=str(second), **SMALL)
    chain = initialisation_chain(clf.init_report)
    assert [link["source"] for link in chain] == [str(second), str(first), "random"]
    assert [link["data"] for link in chain[:2]] == ["target.json", "source.json"]
    assert chain[0]["sha256"] == file_sha256(second)


def test_a_file_from_before_the_record_ends_the_chain_as_unknown(tmp_path):
    path = _export(tmp_path / "old.pt", _backbone())  # no "initialisation" key
    method = SimCLR(_backbone(), hidden_dim=32, out_dim=16, init_weights=str(path))
    chain = initialisation_chain(method.init_report)
    assert [link["source"] for link in chain] == [str(path), None]


@pytest.mark.parametrize("bundle", bundles())
def test_every_pretraining_bundle_wires_init_weights_into_its_method_and_checkpoint(tmp_path, bundle):
    from monai.bundle import ConfigParser

    from monai_cxrssl.paths import REPO_ROOT

    torch.manual_seed(3)
    source = build_backbone("resnet10")
    path = _export(tmp_path / "source.pt", source)
    parser = ConfigParser()
    parser.read_config(REPO_ROOT / "bundles" / bundle / "configs" / "train.json")
    parser.update({"backbone": "resnet10", "init_weights": str(path), "device": "cpu", "output_dir": str(tmp_path)})
    method = parser.get_parsed_content("network_def")
    assert method.init_report["source"] == str(path)
    for k, v in method.export_backbone().state_dict().items():
        assert torch.equal(v, source.state_dict()[k]), k
    checkpoint = [h for h in parser.get("train#handlers") if h["_target_"].endswith("SSLCheckpoint")]
    assert len(checkpoint) == 1 and "_disabled_" not in checkpoint[0]  # every process resumes
    assert checkpoint[0]["metadata"] == "@train::checkpoint_metadata"
    assert parser.get("train#checkpoint_metadata")["init_weights"] == "@init_weights"
