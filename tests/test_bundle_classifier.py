"""End to end through ``python -m monai.bundle``: SimCLR pretraining -> linear probe at a label fraction
-> evaluation with confidence intervals -> inference; resumption and bad input."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import runner
import torch
from sklearn.metrics import roc_auc_score

from monai_cxrssl.checkpoints import read_checkpoint
from monai_cxrssl.paths import REPO_ROOT

BUNDLES = REPO_ROOT / "bundles"
TRAIN = str(BUNDLES / "cxr_classifier" / "configs" / "train.json")
EVALUATE = str(BUNDLES / "cxr_classifier" / "configs" / "evaluate.json")
INFER = str(BUNDLES / "cxr_classifier" / "configs" / "inference.json")
SHIFT = str(BUNDLES / "cxr_classifier" / "configs" / "evaluate_shift.json")
SMALL = ["--image_size", "32", "--batch_size", "8", "--backbone", "resnet10", "--progress", "false",
         "--cache_workers", "1"]


def bundle(config, out_dir, *args, check=True):
    return runner.run_bundle(config, out_dir, *args, check=check)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("simclr")
    bundle(str(BUNDLES / "simclr_cxr" / "configs" / "train.json"), out, "--epochs", "1", *SMALL)
    return out / "models" / "backbone.pt"


@pytest.mark.slow
def test_pretrain_probe_evaluate_infer(tmp_path, pretrained):
    out = tmp_path / "probe"
    bundle(TRAIN, out, "--mode", "linear", "--init_weights", pretrained, "--label_fraction", "0.5", *SMALL)
    info = json.loads((out / "models" / "model_info.json").read_text())
    assert info["mode"] == "linear" and info["init"]["source"] == str(pretrained) and info["init"]["method"] == "simclr"
    # the default probe: logistic regression on every label of the budget, C by cross-validation
    assert info["label_fraction"] == 0.5 and info["linear_solver"] == "lbfgs" and info["best_epoch"] is None
    assert info["probe"]["n_labelled"] == info["n_labels"] == info["n_train"] + info["n_val"]
    assert info["probe"]["fits"][0]["C"] > 0 and 0 <= info["best_metric"]["cv_auc"] <= 1
    # where the initialisation came from, back to random: the SimCLR export, which itself started from random
    assert [link["source"] for link in info["init_chain"]] == [str(pretrained), "random"]
    assert info["init_chain"][0]["method"] == "simclr" and len(info["init_chain"][0]["sha256"]) == 64
    # linear probe: the backbone in the trained model is exactly the pretrained one
    pre = read_checkpoint(pretrained)["state_dict"]
    model = read_checkpoint(out / "models" / "model.pt")
    assert all(torch.equal(model["backbone." + k], v) for k, v in pre.items())

    bundle(f"['{TRAIN}','{EVALUATE}']", out, "--mode", "linear", "--label_fraction", "0.5", "--n_resamples", "100",
           *SMALL)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    rows = list(csv.DictReader(open(out / "eval" / "predictions.csv")))
    y = np.array([int(r["target_opacity"]) for r in rows])
    p = np.array([float(r["prob_opacity"]) for r in rows])
    assert metrics["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-4)
    assert metrics["ci_low"] <= metrics["auc"] <= metrics["ci_high"] and metrics["resampling"] == "group"

    bundle(INFER, out, "--input", out / "demo_data" / "datalist.json", "--datalist_split", "test")
    inferred = list(csv.DictReader(open(out / "inference" / "predictions.csv")))
    assert [r["image"] for r in inferred] == [r["image"] for r in rows]
    assert np.allclose([float(r["prob_opacity"]) for r in inferred], p, atol=1e-5)


@pytest.mark.slow
def test_finetune_resumes_and_refuses_a_foreign_backbone(tmp_path, pretrained):
    out = tmp_path / "ft"
    bundle(TRAIN, out, "--mode", "finetune", "--epochs", "1", *SMALL)
    shutil.copy(out / "checkpoint.pt", tmp_path / "epoch1.pt")
    bundle(TRAIN, out, "--mode", "finetune", "--epochs", "2", "--resume", "true", *SMALL)
    ckpt = read_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 2 and set(ckpt["extra_state"]) == {"best"}  # the views follow the restored iteration
    # epoch 2 again, from the epoch-1 checkpoint (as after a crash late in epoch 2): TensorBoard shows each
    # training iteration and each validation epoch once
    bundle(TRAIN, out, "--mode", "finetune", "--epochs", "2", "--resume", tmp_path / "epoch1.pt", *SMALL)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for folder, tag, steps in (("tensorboard/validation", "val_auc", [1, 2]),
                               ("tensorboard", "train_loss", list(range(1, ckpt["iteration"] + 1)))):
        acc = EventAccumulator(str(out / folder))
        acc.Reload()
        assert tag in acc.Tags()["scalars"], (folder, acc.Tags()["scalars"])
        assert [e.step for e in acc.Scalars(tag)] == steps, (folder, [e.step for e in acc.Scalars(tag)])
    # a checkpoint of another backbone is refused before training, naming the problem
    proc = bundle(TRAIN, tmp_path / "bad", "--init_weights", pretrained, *[a if a != "resnet10" else "resnet18"
                                                                          for a in SMALL], check=False)
    assert proc.returncode != 0 and "resnet18" in proc.stdout + proc.stderr
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_multilabel_nih_and_missing_label_column(tmp_path, nih_dir):
    out = tmp_path / "nih"
    bundle(TRAIN, out, "--dataset_dir", nih_dir, "--mode", "finetune", "--epochs", "1", "--label_fraction", "0.1",
           *SMALL)
    info = json.loads((out / "models" / "model_info.json").read_text())
    assert info["task"] == "multilabel" and info["num_outputs"] == 14 and len(info["classes"]) == 14
    bundle(f"['{TRAIN}','{EVALUATE}']", out, "--dataset_dir", nih_dir, "--n_resamples", "50", *SMALL)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert set(metrics["per_output"]) <= set(info["classes"]) and metrics["n_images"] == 200
    # a binary task on a datalist without 'label' fails up front naming the key
    proc = bundle(TRAIN, tmp_path / "bad", "--dataset_dir", nih_dir, "--task", "binary", *SMALL, check=False)
    assert proc.returncode != 0 and "'label'" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_binary_linear_probe_on_real_kermany_then_shifted_to_nih(tmp_path, kermany_dir, nih_dir):
    from monai_cxrssl.data.datalist import datalist_from_class_folders, datalist_from_csv, write_datalist
    from monai_cxrssl.evaluation import read_predictions

    dl = datalist_from_class_folders(kermany_dir)
    dl["training"] = dl["training"][::50]  # 105 images of both classes
    dl["test"] = dl["test"][::12]  # 52 images of both classes
    path = write_datalist(dl, tmp_path / "kermany_small.json")
    nih = datalist_from_csv(nih_dir / "labels.csv", label_col="binary_label", patient_col="patient_id",
                            split_col="split")
    nih_path = write_datalist(nih, tmp_path / "nih_binary.json")
    out = tmp_path / "k"
    bundle(TRAIN, out, "--datalist", path, "--mode", "linear", "--linear_solver", "adamw", "--epochs", "3",
           "--learning_rate", "0.01", *SMALL)
    info = json.loads((out / "models" / "model_info.json").read_text())
    assert info["linear_solver"] == "adamw" and info["best_epoch"] in (1, 2, 3) and "val_auc" in info["best_metric"]
    # own test set, then the NIH adult test set without retraining, then the AUC drop
    bundle(f"['{TRAIN}','{EVALUATE}','{SHIFT}']", out, "--datalist", path, "--mode", "linear", "--n_resamples", "50",
           "--shift_datalist", nih_path, "--label_map", "{'0_normal': 'NORMAL', '1_abnormal': 'PNEUMONIA'}", *SMALL)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["task"] == "binary" and metrics["n_images"] == len(dl["test"])
    assert list(metrics["per_output"]) == ["PNEUMONIA"]
    shift = json.loads((out / "eval_shift" / "shift.json").read_text())
    assert shift["n_images"] == [len(dl["test"]), len(nih["test"])] and shift["mapping"]["1_abnormal"] == "PNEUMONIA"
    own, shifted = read_predictions(out / "eval" / "predictions.csv"), read_predictions(out / "eval_shift" / "predictions.csv")
    assert shift["auc_own"] == pytest.approx(roc_auc_score(own["targets"][:, 0], own["probs"][:, 0]))
    assert shift["auc_shifted"] == pytest.approx(roc_auc_score(shifted["targets"][:, 0], shifted["probs"][:, 0]))
    assert shift["drop"] == pytest.approx(shift["auc_own"] - shift["auc_shifted"])
    assert shift["ci_low"] <= shift["drop"] <= shift["ci_high"]
    nih_abnormal = sum(e["label"] for e in nih["test"])
    assert shifted["targets"][:, 0].sum() == nih_abnormal  # abnormal -> the model's positive class

    # a class without a counterpart: refused before evaluating, naming the class and the way out
    proc = bundle(f"['{TRAIN}','{EVALUATE}','{SHIFT}']", out, "--datalist", path, "--mode", "linear",
                  "--shift_datalist", nih_path, *SMALL, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "0_normal" in log and "label_map" in log


@pytest.mark.slow
def test_multiclass_on_generated_data(tmp_path):
    from monai_cxrssl.data.phantoms import write_demo_dataset
    from monai_cxrssl.data.datalist import load_datalist, write_datalist

    demo = tmp_path / "demo"
    write_demo_dataset(demo, n_train=36, n_val=12, n_test=12, size=64)
    dl = load_datalist(demo / "datalist.json", keys=None)
    for key in ("training", "validation", "test"):
        for i, e in enumerate(dl[key]):
            e["label"] = i % 3  # three classes, each present in every list
    dl.update(task="multiclass", classes=["a", "b", "c"])
    path = write_datalist(dl, tmp_path / "three.json")
    out = tmp_path / "mc"
    bundle(TRAIN, out, "--datalist", path, "--mode", "finetune", "--epochs", "2", "--val_interval", "2", *SMALL)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard" / "validation"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("val_auc")] == [2]  # val_interval 2: validated after epoch 2 only
    bundle(f"['{TRAIN}','{EVALUATE}']", out, "--datalist", path, "--n_resamples", "50", *SMALL)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    rows = list(csv.DictReader(open(out / "eval" / "predictions.csv")))
    probs = np.array([[float(r[f"prob_{c}"]) for c in "abc"] for r in rows])
    assert metrics["task"] == "multiclass" and set(metrics["per_output"]) == {"a", "b", "c"}
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)  # softmax over classes
