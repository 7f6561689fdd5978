"""Downstream building blocks: targets, masked loss, the classifier's modes, initial weights, the data of a run."""

import json
import logging

import numpy as np
import pytest
import torch

from monai_cxrssl.checkpoints import BACKBONE_EXPORT, atomic_save
from monai_cxrssl.data import ClassificationData, CXRTargetd, check_targets, positive_weights, target_vector
from monai_cxrssl.data.targets import infer_task
from monai_cxrssl.evaluation.metrics import MacroAUC
from monai_cxrssl.exceptions import CheckpointError, DatalistError
from monai_cxrssl.losses import ClassificationLoss
from monai_cxrssl.networks import CXRClassifier, build_backbone, build_classifier
from monai_cxrssl.networks.weights import init_backbone


# ------------------------------------------------------------------------------------------- targets
def test_target_vectors_for_each_task_and_uncertainty_policy():
    assert target_vector({"label": 1}, "binary", 1).tolist() == [1.0]
    assert target_vector({"label": 2}, "multiclass", 3).tolist() == [0.0, 0.0, 1.0]
    entry = {"labels": [1, 0, -1, None]}
    ones, zeros, ignore = (target_vector(entry, "multilabel", 4, u) for u in ("ones", "zeros", "ignore"))
    assert ones.tolist()[:3] == [1, 0, 1] and zeros.tolist()[:3] == [1, 0, 0]
    assert np.isnan(ignore[2]) and np.isnan(ignore[3]) and np.isnan(ones[3])
    out = CXRTargetd("multilabel", 4)({"labels": [1, 0, 0, 1], "image": "x"})
    assert out["target"].dtype == torch.float32 and out["target"].tolist() == [1, 0, 0, 1]


@pytest.mark.parametrize("entry,task,match", [
    ({"image": "a"}, "binary", "no 'label'"),
    ({"label": 3}, "binary", "0 or 1"),
    ({"label": 5}, "multiclass", r"\[0, 3\)"),
    ({"labels": [1, 0]}, "multilabel", "list of 3"),
    ({"labels": [1, 0, 7]}, "multilabel", "must be 0, 1, -1"),
])
def test_bad_labels_name_the_entry(entry, task, match):
    with pytest.raises(DatalistError, match=match):
        check_targets([{"label": 0, "labels": [0, 0, 0]}, entry], task, 3, source="dl.json")
    with pytest.raises(DatalistError, match="entry 1"):
        check_targets([{"label": 0, "labels": [0, 0, 0]}, entry], task, 3, source="dl.json")


def test_positive_weights():
    y = np.array([[1, 0], [0, 0], [0, np.nan], [0, 1]], dtype=np.float32)
    assert positive_weights(y).tolist() == [3.0, 2.0]


# ---------------------------------------------------------------------------------------------- loss
def test_masked_bce_ignores_unknown_labels():
    loss = ClassificationLoss("multilabel")
    logits = torch.tensor([[2.0, -1.0, 5.0]])
    a = loss(logits, torch.tensor([[1.0, 0.0, float("nan")]]))
    b = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, :2], torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(a, b)
    z = loss(logits.requires_grad_(), torch.full((1, 3), float("nan")))
    assert z.item() == 0.0 and torch.isfinite(z)
    ce = ClassificationLoss("multiclass")(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]]))
    assert torch.allclose(ce, torch.nn.functional.cross_entropy(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([1])))


# ------------------------------------------------------------------------------------------ classifier
def test_linear_mode_freezes_backbone_and_batchnorm_statistics():
    torch.manual_seed(0)
    model = CXRClassifier(build_backbone("resnet10", widen_factor=0.25), num_outputs=3, mode="linear")
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    assert not model.backbone.training and model.head.training
    for _ in range(2):
        loss = model(torch.rand(4, 1, 32, 32) * 3).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running stats
    assert [g["name"] for g in model.param_groups(1e-3)] == ["head"]


def test_finetune_mode_trains_backbone_with_its_own_learning_rate():
    model = CXRClassifier(build_backbone("resnet10", widen_factor=0.25), num_outputs=1, mode="finetune")
    groups = model.param_groups(1e-3, backbone_lr_factor=0.1)
    assert [(g["name"], g["lr"]) for g in groups] == [("head", 1e-3), ("backbone", pytest.approx(1e-4))]
    model.train()
    assert model.backbone.training
    with pytest.raises(ValueError, match="mode"):
        CXRClassifier(build_backbone("resnet10"), 1, mode="probe")


# -------------------------------------------------------------------------------------- initial weights
def test_init_from_outside_state_dict_with_prefixes(tmp_path):
    src = build_backbone("resnet10", widen_factor=0.25)
    outside = {"module.encoder_q." + k[len("net."):]: v for k, v in src.state_dict().items()}
    outside["module.encoder_q.fc.weight"] = torch.zeros(3, 3)  # a head the backbone does not have
    atomic_save({"state_dict": outside}, tmp_path / "outside.pth")
    dst = build_backbone("resnet10", widen_factor=0.25)
    # a key the backbone lacks is an error by default (it could be another architecture), naming it
    with pytest.raises(CheckpointError, match=r"1 weight\(s\) the backbone .* does not have, e.g. \['net.fc.weight'\]"
                                              r".*init_strict false"):
        init_backbone(dst, tmp_path / "outside.pth")
    report = init_backbone(dst, tmp_path / "outside.pth", strict="false")
    assert report["format"] == "state_dict" and report["unexpected"] == ["net.fc.weight"]
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    # a key map says how to read the file: then the head is ignored too
    assert init_backbone(dst, tmp_path / "outside.pth", key_map={"module.encoder_q.": ""})["unexpected"] == [
        "net.fc.weight"]


def test_a_deeper_resnet_state_dict_is_not_loaded_into_a_shallower_one(tmp_path):
    # every ResNet-18 key exists in a ResNet-34 with the same shape: only the extra keys tell them apart
    atomic_save(build_backbone("resnet34").state_dict(), tmp_path / "resnet34.pt")
    with pytest.raises(CheckpointError, match=r"weight\(s\) the backbone .*resnet18.* does not have.*another "
                                              r"architecture"):
        build_classifier("resnet18", 1, init_weights=str(tmp_path / "resnet34.pt"))
    model = build_classifier("resnet18", 1, init_weights=str(tmp_path / "resnet34.pt"), init_strict=False)
    assert len(model.init_report["unexpected"]) > 50


def test_init_refuses_what_would_leave_the_backbone_untrained(tmp_path):
    src = build_backbone("resnet10", widen_factor=0.25).state_dict()
    partial = {k: v for k, v in src.items() if "layer4" not in k}
    atomic_save(partial, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="missing weight"):
        init_backbone(build_backbone("resnet10", widen_factor=0.25), tmp_path / "partial.pt")
    atomic_save({"encoder.a": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="no weight name"):
        init_backbone(build_backbone("resnet10", widen_factor=0.25), tmp_path / "foreign.pt")
    atomic_save({"format": BACKBONE_EXPORT, "backbone": build_backbone("resnet18").spec(),
                 "state_dict": build_backbone("resnet18").state_dict()}, tmp_path / "r18.pt")
    with pytest.raises(CheckpointError, match="resnet18"):
        init_backbone(build_backbone("resnet10", widen_factor=0.25), tmp_path / "r18.pt")
    assert init_backbone(build_backbone("resnet10"), "random") == {"source": "random"}


# ------------------------------------------------------------------------------------------- metric
def test_macro_auc_metric_matches_sklearn_and_masks_unknowns():
    from sklearn.metrics import roc_auc_score

    g = np.random.default_rng(0)
    y = g.integers(0, 2, (60, 2)).astype(np.float32)
    s = y + g.normal(0, 1, y.shape)
    y_nan = y.copy()
    y_nan[:5, 1] = np.nan
    m = MacroAUC("multilabel", output_transform=lambda o: o)
    m.reset()
    m.update((torch.tensor(s[:30]), torch.tensor(y_nan[:30])))
    m.update((torch.tensor(s[30:]), torch.tensor(y_nan[30:])))
    expected = np.mean([roc_auc_score(y[:, 0], s[:, 0]), roc_auc_score(y[5:, 1], s[5:, 1])])
    assert m.compute() == pytest.approx(expected, abs=1e-9)


# -------------------------------------------------------------------------------- data of a classification run
def test_classification_data_on_demo(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        data = ClassificationData(demo_dir=tmp_path / "demo", label_fraction=0.5, seed=1)
    assert data.task == "binary" and data.num_outputs == 1 and data.classes == ["normal", "opacity"]
    full = ClassificationData(demo_dir=tmp_path / "demo")
    used = {e["image"] for e in data.train_items + data.val_items}  # validation drawn from the budget
    assert used < {e["image"] for e in full.train_items + full.val_items}
    assert data.n_labels == len(used) <= round(0.5 * full.n_labels) + 2
    assert data.targets("train").shape == (len(data.train_items), 1)


def test_classification_data_bad_input(tmp_path):
    img = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"task": "binary", "training": [{"image": str(img), "label": 0}] * 4,
                              "validation": [{"image": str(img), "label": 0}]}))
    with pytest.raises(DatalistError, match="no positive example"):
        ClassificationData(datalist=dl)
    dl.write_text(json.dumps({"task": "multilabel", "classes": ["a", "b"],
                              "training": [{"image": str(img), "label": 0}] * 4}))
    with pytest.raises(DatalistError, match="labels"):
        ClassificationData(datalist=dl)


def test_infer_task_from_labels():
    assert infer_task([{"label": 0}, {"label": 1}, {"label": True}]) [:2] == ("binary", ["0", "1"])
    assert infer_task([{"label": 0}, {"label": 1}], classes=["NORMAL", "PNEUMONIA"])[:2] == \
        ("binary", ["NORMAL", "PNEUMONIA"])
    assert infer_task([{"label": 0}, {"label": 1}], classes=["a", "b", "c"])[:2] == ("multiclass", ["a", "b", "c"])
    assert infer_task([{"label": 0}, {"label": 3}])[:2] == ("multiclass", ["0", "1", "2", "3"])
    assert infer_task([{"labels": [0, 1, None]}])[:2] == ("multilabel", ["finding_0", "finding_1", "finding_2"])
    assert infer_task([{"label": [0, 1]}], classes=["Effusion", "Mass"])[:2] == ("multilabel", ["Effusion", "Mass"])
    assert infer_task([{"image": "a"}, {"label": 1}, {"label": 0}])[0] == "binary"  # unlabelled entries don't count
    with pytest.raises(DatalistError, match=r"entry 1: cannot infer the task from 'label' 'PNEUMONIA'"):
        infer_task([{"label": 0}, {"label": "PNEUMONIA"}], source="dl.json")
    with pytest.raises(DatalistError, match="-1"):
        infer_task([{"label": -1}, {"label": 1}])
    with pytest.raises(DatalistError, match="no entry has a 'label'"):
        infer_task([{"image": "a"}])


@pytest.mark.parametrize("labels, task, classes", [
    (lambda i: i % 2, "binary", ["0", "1"]),
    (lambda i: i % 3, "multiclass", ["0", "1", "2"]),
    (lambda i: [i % 2, (i // 2) % 2], "multilabel", ["finding_0", "finding_1"]),
])
def test_a_plain_monai_datalist_trains_with_its_task_inferred(tmp_path, caplog, labels, task, classes):
    from monai_cxrssl.data.phantoms import write_demo_dataset

    demo = write_demo_dataset(tmp_path / "demo", n_train=24, n_val=0, n_test=8, size=32)
    plain = {k: [{"image": str(tmp_path / "demo" / e["image"]), "label": labels(i), "patient_id": e["patient_id"]}
                 for i, e in enumerate(demo[k])] for k in ("training", "test")}  # no task, no classes
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    with caplog.at_level(logging.INFO, logger="monai_cxrssl.data.classification"):
        data = ClassificationData(datalist=tmp_path / "plain.json")
    assert (data.task, data.classes) == (task, classes)
    assert data.num_outputs == (1 if task == "binary" else len(classes))
    assert f"inferred {task} from its labels" in caplog.text
    y = data.targets("test")
    assert y.shape == (8, data.num_outputs) and not np.isnan(y).any()


def test_classification_data_nih_multilabel(nih_dir):
    data = ClassificationData(dataset_dir=nih_dir, label_fraction=0.1, seed=0)
    assert data.task == "multilabel" and data.num_outputs == 14 and len(data.test_items) == 200
    y = data.targets("train")
    assert (np.nansum(y, axis=0) >= 1).all()  # every finding present at 10%
