"""The default linear probe: cross-validated logistic regression, equal to scikit-learn's on fixed features."""

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from monai_cxrssl.engines import BestModelHandler, LogisticProbe, fit_classifier, load_trained_classifier
from monai_cxrssl.exceptions import CXRSSLError
from monai_cxrssl.networks import CXRClassifier, build_backbone


def _features(n=160, d=24, k=1, patients=None, seed=0, kind="binary"):
    """Gaussian features whose first directions carry the labels; several entries per patient."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d) + rng.normal(size=d)  # unstandardised on purpose
    if kind == "multiclass":
        cls = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=1.0, size=n) > 0).astype(int) + (x[:, 2] > 1).astype(int)
        y = np.eye(3)[cls]
    else:
        logits = x[:, :k] @ np.eye(k) + rng.normal(scale=1.5, size=(n, k))
        y = (logits > np.median(logits, 0)).astype(float)
    groups = [f"p{i // 2}" for i in range(n)] if patients is None else patients
    items = [{"image": torch.tensor(x[i], dtype=torch.float32), "target": torch.tensor(y[i], dtype=torch.float32),
              "patient_id": groups[i]} for i in range(n)]
    return x.astype(np.float32).astype(np.float64), y, items


def _network(d, k):
    class Tiny(torch.nn.Module):  # a stand-in backbone of dimension d (the probe only uses features)
        out_dim = d

        def forward(self, x):
            return x.flatten(1)[:, :d]

    return CXRClassifier(Tiny(), num_outputs=k, mode="linear")


def _probs(net, x, kind):
    with torch.no_grad():
        logits = net(torch.as_tensor(x, dtype=torch.float32))
    return torch.softmax(logits, 1).numpy() if kind == "multiclass" else torch.sigmoid(logits).numpy()


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_probe_equals_scikit_learn_at_the_chosen_c(tmp_path, kind):
    k = 3 if kind == "multiclass" else 1
    x, y, items = _features(kind=kind, k=k)
    net = _network(x.shape[1], k)
    best = BestModelHandler(tmp_path, net, info={"task": kind})
    train, val = items[:140], items[140:]  # the probe fits on both: both are labels the run has
    report = LogisticProbe(net, train, val, task=kind, best=best, seed=0).run()
    (fit,) = report["fits"]
    assert report["n_labelled"] == 160 and report["n_patients"] == 80 and fit["n_splits"] == 5
    assert 0.5 < fit["cv_auc"] <= 1.0
    target = y.argmax(1) if kind == "multiclass" else y[:, 0].astype(int)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=fit["C"], max_iter=5000)).fit(x, target)
    expected = ref.predict_proba(x)
    got = _probs(net, x, kind)
    got = got if kind == "multiclass" else np.c_[1 - got[:, 0], got[:, 0]]
    np.testing.assert_allclose(got, expected, atol=2e-3)
    # the model the bundle evaluates is the fitted one, with how C was chosen
    info = json.loads((tmp_path / "models" / "model_info.json").read_text())
    assert info["probe"]["fits"][0]["C"] == fit["C"] and info["best_metric"]["cv_auc"] == pytest.approx(fit["cv_auc"])
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    np.testing.assert_allclose(state["head.1.weight"].numpy(), net.head[1].weight.detach().numpy())


def test_multilabel_probe_fits_each_finding_on_its_known_labels():
    x, y, items = _features(k=3, seed=1)
    y[::5, 1] = np.nan  # unknown (uncertain 'ignore'): left out of finding 1's fit only
    for item, row in zip(items, y):
        item["target"] = torch.tensor(row, dtype=torch.float32)
    net = _network(x.shape[1], 3)
    report = LogisticProbe(net, items, [], task="multilabel").run()
    assert [f["n"] for f in report["fits"]] == [160, 160 - 32, 160]
    got = _probs(net, x, "multilabel")
    for k, fit in enumerate(report["fits"]):
        known = ~np.isnan(y[:, k])
        ref = make_pipeline(StandardScaler(), LogisticRegression(C=fit["C"], max_iter=5000))
        ref.fit(x[known], y[known, k].astype(int))
        np.testing.assert_allclose(got[:, k], ref.predict_proba(x)[:, 1], atol=2e-3)


def test_folds_are_drawn_by_patient_and_too_few_patients_fall_back_to_a_fixed_c():
    # one patient per 20 entries: 8 patients, so at most 4 per class -> 4 folds, every patient in one fold only
    x, y, items = _features(patients=[f"p{i // 20}" for i in range(160)], seed=2)
    for item in items:  # labels by patient, as a patient-level finding
        item["target"] = torch.tensor([float(int(item["patient_id"][1:]) % 2)])
    net = _network(x.shape[1], 1)
    report = LogisticProbe(net, items, None, task="binary").run()
    assert report["fits"][0]["n_splits"] == 4 and report["n_patients"] == 8
    # a single patient of a class: no cross-validation is possible: the fallback C, said so
    few = [dict(it, target=torch.tensor([float(it["patient_id"] == "p0")])) for it in items]
    report = LogisticProbe(_network(x.shape[1], 1), few, None, task="binary", fallback_C=0.1).run()
    assert report["fits"][0] == {"output": 0, "C": 0.1, "cv_auc": None, "n_splits": 0, "n": 160}


def test_probe_refuses_a_finetune_network_and_an_unknown_solver():
    _, _, items = _features()
    net = _network(24, 1)
    net.mode = "finetune"
    with pytest.raises(CXRSSLError, match="linear-mode classifier"):
        LogisticProbe(net, items).run()
    with pytest.raises(ValueError, match="linear_solver must be one of"):
        fit_classifier("linear", "lbgfs", None, None)


def test_probe_on_images_computes_the_features_once(tmp_path):
    rng = np.random.default_rng(0)
    backbone = build_backbone("resnet10")
    net = CXRClassifier(backbone, num_outputs=1, mode="linear")
    images = [{"image": torch.tensor(rng.random((1, 32, 32)), dtype=torch.float32),
               "target": torch.tensor([float(i % 2)]), "patient_id": f"p{i}"} for i in range(24)]
    best = BestModelHandler(tmp_path, net, info={"task": "binary", "num_outputs": 1, "mode": "linear",
                                                 "backbone": backbone.spec()})
    report = LogisticProbe(net, images[:20], images[20:], task="binary", best=best).run()
    assert report["n_labelled"] == 24
    loaded = load_trained_classifier(tmp_path)
    x = torch.stack([im["image"] for im in images])
    with torch.no_grad():
        np.testing.assert_allclose(loaded((x - 0.5) / 0.25).numpy(), net((x - 0.5) / 0.25).numpy(), atol=1e-5)


def _train_bundle(out, datalist):
    from monai.bundle import ConfigWorkflow

    from monai_cxrssl.paths import REPO_ROOT

    bundle = REPO_ROOT / "bundles" / "cxr_classifier"
    wf = ConfigWorkflow(config_file=str(bundle / "configs" / "train.json"), workflow_type="train", logging_file=False,
                        bundle_root=str(bundle), output_dir=str(out), datalist=str(datalist), mode="linear",
                        backbone="resnet10", image_size=32, progress=False, cache_workers=1)
    wf.initialize()
    wf.run()
    wf.finalize()
    return torch.load(out / "models" / "model.pt", weights_only=True), json.loads(
        (out / "models" / "model_info.json").read_text())


def test_bundle_probe_never_sees_the_test_list(tmp_path):
    from monai_cxrssl.data.phantoms import write_demo_dataset

    demo = write_demo_dataset(tmp_path / "demo", n_train=40, n_val=8, n_test=12, size=32)
    dl = {k: [{**e, "image": str(tmp_path / "demo" / e["image"])} for e in demo[k]] for k in ("training", "validation", "test")}
    dl.update(task="binary", classes=["normal", "opacity"])
    (tmp_path / "a.json").write_text(json.dumps(dl))
    dl["test"] = [{**e, "label": 1 - e["label"]} for e in dl["test"][::-1]]  # other order, every label flipped
    (tmp_path / "b.json").write_text(json.dumps(dl))
    state_a, info_a = _train_bundle(tmp_path / "a", tmp_path / "a.json")
    state_b, info_b = _train_bundle(tmp_path / "b", tmp_path / "b.json")
    assert info_a["probe"]["fits"] == info_b["probe"]["fits"] and info_a["n_labels"] == 48 == info_a["probe"]["n_labelled"]
    assert info_a["linear_solver"] == "lbfgs" and info_a["n_labels"] == info_a["n_train"] and info_a["n_val"] == 0
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


class _Untouchable(list):
    """A validation set that fails the test if anything reads it."""

    def __getitem__(self, i):
        raise AssertionError("the validation entries were read")

    def __len__(self):
        return 7


def test_lp_ft_fits_the_head_of_a_finetune_network_on_its_training_entries_only(tmp_path):
    rng = np.random.default_rng(3)
    backbone = build_backbone("resnet10")
    images = [{"image": torch.tensor(rng.random((1, 32, 32)), dtype=torch.float32),
               "target": torch.tensor([float(i % 2)]), "patient_id": f"p{i // 2}"} for i in range(40)]
    net = CXRClassifier(backbone, num_outputs=1, mode="finetune")
    assert all(p.requires_grad for p in net.backbone.parameters())
    report = LogisticProbe(net, images, _Untouchable(), task="binary").init_head()
    (fit,) = report["fits"]
    assert report["n_labelled"] == 40 and report["n_patients"] == 20 and fit["n_splits"] == 5
    # the head is scikit-learn's fit at the chosen C on the frozen features of the training entries
    x = torch.stack([im["image"] for im in images])
    net.eval()
    with torch.no_grad():
        feats = net.features((x - 0.5) / 0.25).double().numpy()
        got = torch.sigmoid(net((x - 0.5) / 0.25))[:, 0].numpy()
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=fit["C"], max_iter=5000)).fit(feats, np.arange(40) % 2)
    np.testing.assert_allclose(got, ref.predict_proba(feats)[:, 1], atol=2e-3)
    assert all(p.requires_grad for p in net.backbone.parameters()), "the backbone must still train"
    # fit_classifier runs it before the trainer, only when fine-tuning, and not when resuming
    calls = []

    class Probe:
        def init_head(self):
            calls.append("probe")

    class Trainer:
        def run(self):
            calls.append("train")

    fit_classifier("finetune", "lbfgs", Probe(), Trainer(), head_init="probe")
    assert calls == ["probe", "train"]
    (tmp_path / "checkpoint.pt").write_bytes(b"")  # a run resuming from its checkpoint takes the head from there
    fit_classifier("finetune", "lbfgs", Probe(), Trainer(), "probe", True, tmp_path / "checkpoint.pt")
    assert calls == ["probe", "train", "train"]
    with pytest.raises(ValueError, match="mode 'finetune'"):
        fit_classifier("linear", "adamw", Probe(), Trainer(), head_init="probe")
    with pytest.raises(ValueError, match="head_init must be one of"):
        fit_classifier("finetune", "lbfgs", Probe(), Trainer(), head_init="lp")
