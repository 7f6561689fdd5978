"""Classifier engine pieces: batch preparation, best model and early stopping, the report, TorchScript export."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ignite.engine import Events
from sklearn.metrics import roc_auc_score

from monai_cxrssl.engines import BestModelHandler, export_torchscript, load_trained_classifier
from monai_cxrssl.evaluation import PredictionReport
from monai_cxrssl.exceptions import CheckpointError
from monai_cxrssl.networks import CXRClassifier, build_backbone


def _batch(n=4, size=16):
    return {"image": torch.rand(n, 1, size, size), "target": torch.ones(n, 1)}


class _Trainer:
    def __init__(self):
        self.state = SimpleNamespace(epoch=0)
        self.terminated = False

    def terminate(self):
        self.terminated = True


def _small_classifier(outputs=2):
    torch.manual_seed(0)
    return CXRClassifier(build_backbone("resnet10", widen_factor=0.25), outputs, mode="finetune")


def test_best_model_kept_and_early_stopping(tmp_path):
    net = _small_classifier()
    trainer = _Trainer()
    info = {"task": "multilabel", "classes": ["a", "b"], "num_outputs": 2, "mode": "finetune",
            "backbone": net.backbone.spec(), "image_size": 32, "resize_mode": "pad", "apply_voi": True}
    best = BestModelHandler(tmp_path, net, patience=2, info=info, trainer=trainer)
    saved_weights = None
    for epoch, score in enumerate([0.5, 0.7, 0.6, 0.65, 0.9], start=1):
        trainer.state.epoch = epoch
        with torch.no_grad():
            net.head[-1].bias.fill_(epoch)  # a visible change per epoch
        best(SimpleNamespace(state=SimpleNamespace(metrics={"val_auc": score})))
        if score == 0.7:
            saved_weights = {k: v.clone() for k, v in net.state_dict().items()}
        if trainer.terminated:
            break
    assert trainer.terminated and epoch == 4  # two validations without gain after the best
    assert best.state_dict() == {"best": 0.7, "best_epoch": 2, "bad_rounds": 2}
    stored = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(stored[k], v) for k, v in saved_weights.items())
    meta = json.loads((tmp_path / "models" / "model_info.json").read_text())
    assert meta["best_epoch"] == 2 and meta["best_metric"] == {"val_auc": 0.7}

    loaded = load_trained_classifier(tmp_path)
    assert loaded.info["classes"] == ["a", "b"] and torch.equal(loaded.head[-1].bias, saved_weights["head.1.bias"])
    ts = export_torchscript(tmp_path)
    scripted = torch.jit.load(str(ts))
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(scripted(x), loaded(x), atol=1e-5)


def test_loading_a_model_dir_without_info_fails_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="model_info.json"):
        load_trained_classifier(tmp_path)


def test_report_matches_sklearn_with_masks_and_patients(tmp_path):
    g = np.random.default_rng(1)
    y = g.integers(0, 2, (80, 3)).astype(np.float32)
    y[:10, 2] = np.nan
    logits = torch.tensor(np.where(np.isnan(y), 0, y) * 1.5 + g.normal(0, 1, y.shape), dtype=torch.float32)
    report = PredictionReport(tmp_path, "multilabel", ["a", "b", "c"], n_resamples=100)
    for i in range(0, 80, 20):
        engine = SimpleNamespace(state=SimpleNamespace(
            output={"pred": logits[i:i + 20], "label": torch.tensor(y[i:i + 20])},
            batch={"path": [f"img{j}.png" for j in range(i, i + 20)], "patient_id": [f"p{j // 2}" for j in range(i, i + 20)]}))
        report.collect(engine)
    m = report.write()
    probs = torch.sigmoid(logits).numpy()
    expected = [roc_auc_score(y[:, 0], probs[:, 0]), roc_auc_score(y[:, 1], probs[:, 1]),
                roc_auc_score(y[10:, 2], probs[10:, 2])]
    assert [m["per_output"][k]["auc"] for k in "abc"] == pytest.approx(expected, abs=1e-9)
    assert m["auc"] == pytest.approx(np.mean(expected), abs=1e-9)
    assert m["resampling"] == "group" and m["n_patients"] == 40
    assert sum(m["sensitivity_specificity"]["c"][k] for k in ("tp", "fp", "tn", "fn")) == 70
    lines = (tmp_path / "predictions.csv").read_text().splitlines()
    assert len(lines) == 81 and lines[0].startswith("image,patient_id,prob_a")
    assert lines[1].split(",")[-1] == ""  # unknown label written as empty


def test_a_finetuned_classifier_exports_its_backbone_as_supervised_pretraining(tmp_path):
    from monai_cxrssl.checkpoints import initialisation_chain
    from monai_cxrssl.networks import init_backbone

    net = _small_classifier()
    net.init_report = {"source": "random"}
    info = {"task": "multilabel", "classes": ["a", "b"], "num_outputs": 2, "mode": "finetune",
            "backbone": net.backbone.spec(), "data_source": "/data/nih.json", "n_labels": 70, "n_patients": 50}
    best = BestModelHandler(tmp_path, net, info=info, trainer=_Trainer())
    best.trainer.state.epoch = 3
    best(SimpleNamespace(state=SimpleNamespace(metrics={"val_auc": 0.8})))
    path = tmp_path / "models" / "backbone.pt"
    fresh = build_backbone("resnet10", widen_factor=0.25)
    report = init_backbone(fresh, path)  # what --init_weights and the study's --init do with it
    assert report["method"] == "supervised" and report["epoch"] == 3 and report["origin"]["n_labels"] == 70
    assert all(torch.equal(v, net.backbone.state_dict()[k]) for k, v in fresh.state_dict().items())
    chain = initialisation_chain(report)
    assert [(c["method"], c["data"]) for c in chain] == [("supervised", "/data/nih.json"), (None, None)]
    assert chain[-1]["source"] == "random"
    # a linear probe leaves the backbone as it was: no "supervised" export of an unchanged backbone
    probe = CXRClassifier(build_backbone("resnet10", widen_factor=0.25), 1, mode="linear")
    BestModelHandler(tmp_path / "probe", probe, info={}).save({"best_epoch": None})
    assert not (tmp_path / "probe" / "models" / "backbone.pt").exists()


def test_a_non_finite_classifier_loss_stops_training_at_once():
    from monai.engines import SupervisedTrainer

    from monai_cxrssl.engines import NonFiniteLossCheck
    from monai_cxrssl.exceptions import NonFiniteLossError

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 1))
    images = torch.rand(8, 1, 4, 4)
    images[5] = float("nan")  # one bad image in the second batch
    data = [{"image": images[i], "target": torch.ones(1)} for i in range(8)]
    seen = []
    trainer = SupervisedTrainer("cpu", 3, torch.utils.data.DataLoader(data, batch_size=4), net,
                                torch.optim.SGD(net.parameters(), lr=0.1), torch.nn.BCEWithLogitsLoss(),
                                prepare_batch=lambda b, device=None, non_blocking=False, **k: (b["image"], b["target"]),
                                train_handlers=[NonFiniteLossCheck()], decollate=False)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.iteration))
    with pytest.raises(NonFiniteLossError, match=r"classifier loss is nan at epoch 1, iteration 2"):
        trainer.run()
    assert seen == [1]  # handlers after it never saw the NaN iteration
