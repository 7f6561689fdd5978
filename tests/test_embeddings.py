"""Embeddings of a pretrained encoder: the loader of a pretraining export and the writer behind the pretraining
bundles' ``inference.json`` (the bundle run itself: ``test_bundle_simclr.py``; every bundle's defaults:
``test_docs.py``)."""

import numpy as np
import pytest
import torch
from monai.engines import SupervisedEvaluator

from monai_cxrssl.checkpoints import BACKBONE_EXPORT, atomic_save, load_pretrained_encoder
from monai_cxrssl.data import ViewBatch
from monai_cxrssl.engines import FastInferer
from monai_cxrssl.evaluation import EmbeddingWriter, read_embeddings
from monai_cxrssl.exceptions import CheckpointError
from monai_cxrssl.networks import build_backbone


def _export(path, backbone, metadata):
    atomic_save({"format": BACKBONE_EXPORT, "method": "simclr", "epoch": 3, "backbone": backbone.spec(),
                 "metadata": metadata, "state_dict": backbone.state_dict()}, path)
    return path


def _batches(n: int, batch: int, size: int = 32):
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, size, size, generator=gen)
    return images, [{"image": images[i:i + batch], "path": [f"img{j}.png" for j in range(i, min(n, i + batch))],
                     "patient_id": [f"p{j // 2}" for j in range(i, min(n, i + batch))]} for i in range(0, n, batch)]


def _embed(network, batches, out_dir, precision="fp32"):
    writer = EmbeddingWriter(out_dir)
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=batches, network=network,
                                    inferer=FastInferer(precision, channels_last=False),
                                    prepare_batch=ViewBatch(), val_handlers=[writer], decollate=False)
    evaluator.run()
    return read_embeddings(out_dir)


def test_loaded_encoder_carries_the_pretraining_preprocessing_and_its_weights(tmp_path):
    torch.manual_seed(0)
    trained = build_backbone("resnet10")
    path = _export(tmp_path / "backbone.pt", trained, {"image_size": 64, "resize_mode": "crop", "apply_voi": False})
    enc = load_pretrained_encoder(build_backbone("resnet10"), path)
    assert not enc.training
    assert enc.info["image_size"] == 64 and enc.info["resize_mode"] == "crop" and enc.info["apply_voi"] is False
    assert enc.info["method"] == "simclr" and enc.info["epoch"] == 3 and len(enc.info["sha256"]) == 64
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), enc.state_dict().values()))
    # an export that predates the preprocessing record: the pretraining bundles' defaults
    old = load_pretrained_encoder(build_backbone("resnet10"), _export(tmp_path / "old.pt", trained, {"image_size": 32}))
    assert (old.info["image_size"], old.info["resize_mode"], old.info["apply_voi"]) == (32, "pad", True)


def test_loader_names_the_missing_file_and_the_other_backbone(tmp_path):
    with pytest.raises(CheckpointError, match="no pretrained backbone at .*missing.pt.*train.json"):
        load_pretrained_encoder(build_backbone("resnet10"), tmp_path / "missing.pt")
    path = _export(tmp_path / "r10.pt", build_backbone("resnet10"), {"image_size": 32})
    with pytest.raises(CheckpointError, match="resnet10.*resnet18"):
        load_pretrained_encoder(build_backbone("resnet18"), path)
    no_size = _export(tmp_path / "nosize.pt", build_backbone("resnet10"), {})
    with pytest.raises(CheckpointError, match="image_size"):
        load_pretrained_encoder(build_backbone("resnet10"), no_size)


def test_written_embeddings_are_the_encoder_features_in_input_order(tmp_path):
    torch.manual_seed(0)
    net = build_backbone("resnet10").eval()
    images, batches = _batches(10, 4)
    emb, paths, groups = _embed(net, batches, tmp_path / "emb")
    with torch.no_grad():
        expected = net((images - 0.5) / 0.25).numpy()  # normalised as the pretraining views and the classifier
    assert emb.dtype == np.float32 and emb.shape == (10, net.out_dim)
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-6)
    assert paths == [f"img{j}.png" for j in range(10)] and groups == [f"p{j // 2}" for j in range(10)]
    # the CSV holds the same values as the array (repr: no rounding)
    rows = (tmp_path / "emb" / "embeddings.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["image", "patient_id", "e0"] and len(rows) == 11
    assert np.array_equal(np.array(rows[3].split(",")[2:], dtype=np.float32), emb[2])


def test_a_non_finite_embedding_stops_the_run_naming_its_image(tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, x):
            out = x.flatten(1)[:, :8].clone()
            out[1] = float("nan")
            return out

    _, batches = _batches(4, 4, size=8)
    with pytest.raises(ValueError, match=r"non-finite embeddings for 1 image.*img1\.png"):
        _embed(Broken(), batches, tmp_path / "emb")
    assert not (tmp_path / "emb" / "embeddings.npy").exists()


def test_an_empty_input_is_an_error_not_an_empty_file(tmp_path):
    writer = EmbeddingWriter(tmp_path / "emb")
    with pytest.raises(ValueError, match="no images were embedded"):
        writer.write()
