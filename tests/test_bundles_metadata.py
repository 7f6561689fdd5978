"""Every bundle follows the MONAI bundle layout and its metadata verifies offline."""

import json
import re
import shutil

import pytest

from monai.bundle import ConfigParser, verify_metadata

import monai_cxrssl
from monai_cxrssl.paths import REPO_ROOT, RUN_OUTPUTS

BUNDLES = sorted(p for p in (REPO_ROOT / "bundles").iterdir() if (p / "configs").is_dir())
SCHEMA = REPO_ROOT / "bundles" / "metadata_schema.json"


def test_there_are_bundles():
    assert any(b.name == "simclr_cxr" for b in BUNDLES)


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_layout_and_metadata(bundle):
    for f in ("LICENSE", "configs/metadata.json", "configs/logging.conf", "configs/train.json", "docs/README.md"):
        assert (bundle / f).is_file(), f"{bundle.name} lacks {f}"
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(SCHEMA))
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    # the zoo's concrete input format, and measured figures that the results page named in the description holds
    shape = meta["network_data_format"]["inputs"]["image"]["spatial_shape"]
    assert all(isinstance(s, int) for s in shape) and len(shape) == 2, shape
    assert meta["eval_metrics"], f"{bundle.name}: eval_metrics is empty"
    assert meta["required_packages_version"]["monai_cxrssl"] == monai_cxrssl.__version__  # the wheel setup.cfg builds
    page = re.search(r"docs/results/[\w.]+\.md", meta["description"])
    assert page, f"{bundle.name}: the description names no results page for eval_metrics"
    text = (REPO_ROOT / page.group(0)).read_text()
    for key, value in meta["eval_metrics"].items():
        assert 0 < value <= 1 and f"{value:.3f}" in text, (bundle.name, key, value, page.group(0))


def test_schema_rejects_incomplete_metadata(tmp_path):
    meta = json.loads((REPO_ROOT / "bundles" / "simclr_cxr" / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]["inputs"]["image"]["num_channels"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="num_channels"):
        verify_metadata(meta_file=str(bad), filepath=str(SCHEMA))


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_config_wires_package_objects(bundle):
    # configs only wire: every _target_ is a MONAI/torch name or lives in monai_cxrssl
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    targets = []

    def walk(x):
        if isinstance(x, dict):
            if "_target_" in x:
                targets.append(x["_target_"])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(parser.config)
    assert targets
    for t in targets:
        assert t.startswith(("monai_cxrssl.", "torch.")) or "." not in t, t
    for key in ("dataset_dir", "datalist", "epochs", "batch_size", "image_size", "device", "output_dir"):
        assert key in parser.config, f"{bundle.name}: the documented override '{key}' is not a config key"


SSL_BUNDLES = [b for b in BUNDLES if b.name != "cxr_classifier"]


@pytest.mark.parametrize("bundle", SSL_BUNDLES, ids=lambda p: p.name)
def test_pretraining_bundle_inference_passes_monai_checks(bundle, tmp_path):
    """MONAI's own tools accept each pretraining bundle's inference.json: ``verify_net_in_out`` on its
    ``network_def`` (the encoder, with the metadata's input and output formats), the infer workflow's
    properties and ``ckpt_export`` (TorchScript), with a generated export of the default backbone."""
    import torch
    from monai.bundle import ConfigWorkflow, verify_net_in_out

    from monai_cxrssl.checkpoints import BACKBONE_EXPORT, atomic_save
    from monai_cxrssl.networks import build_backbone

    configs = bundle / "configs"
    verify_net_in_out(net_id="network_def", meta_file=str(configs / "metadata.json"),
                      config_file=str(configs / "inference.json"), device="cpu")
    name = json.loads((configs / "inference.json").read_text())["backbone"]
    assert name == json.loads((configs / "train.json").read_text())["backbone"], "inference builds the trained backbone"
    backbone = build_backbone(name)
    meta = json.loads((configs / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == backbone.out_dim
    export = tmp_path / "backbone.pt"
    atomic_save({"format": BACKBONE_EXPORT, "backbone": backbone.spec(), "metadata": {"image_size": 32},
                 "state_dict": backbone.state_dict()}, export)
    wf = ConfigWorkflow(config_file=str(configs / "inference.json"), meta_file=str(configs / "metadata.json"),
                        workflow_type="infer", checkpoint=str(export), output_dir=str(tmp_path))
    wf.initialize()
    assert wf.check_properties() == []
    assert isinstance(wf.network_def, torch.nn.Module)
    # TorchScript: MONAI's ckpt_export scripts network_def with the export's weights; same outputs as eager, at
    # an input size other than the ViT's img_size
    from monai.bundle import ckpt_export

    ts_path = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts_path), ckpt_file=str(export), meta_file=str(configs / "metadata.json"),
                config_file=str(configs / "inference.json"), key_in_ckpt="state_dict")
    x = torch.rand(2, 1, 48, 80)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(ts_path))(x), backbone.eval()(x), atol=1e-5)


def test_pretraining_bundles_share_one_inference_wiring():
    """The pretraining bundles' inference.json are one wiring (each bundle folder stays self-contained for
    the model zoo): they differ only in ``bundle_root`` and the default ``backbone``, so that a change to one
    that is not made to all fails here."""
    def wiring(bundle):
        config = json.loads((bundle / "configs" / "inference.json").read_text())
        assert config.pop("bundle_root") == f"$monai_cxrssl.paths.bundle_root('{bundle.name}')"
        config.pop("backbone")
        return config

    first, *others = SSL_BUNDLES
    for other in others:
        assert wiring(other) == wiring(first), f"{other.name}/configs/inference.json differs from {first.name}'s"


def test_classifier_inference_passes_monai_checks(tmp_path):
    """The classifier's inference.json: ``network_def`` is the network its training run describes
    (``models/model_info.json``), loaded by MONAI's ``CheckpointLoader`` from ``models/model.pt``;
    ``verify_net_in_out``, the infer workflow's properties and ``ckpt_export`` (outputs equal to eager)."""
    import torch
    from monai.bundle import ConfigWorkflow, ckpt_export, verify_net_in_out

    from monai_cxrssl.checkpoints import atomic_save
    from monai_cxrssl.networks import classifier_from_info

    configs = REPO_ROOT / "bundles" / "cxr_classifier" / "configs"
    info = {"task": "binary", "classes": ["normal", "opacity"], "num_outputs": 1, "mode": "finetune",
            "backbone": {"name": "resnet10", "in_channels": 1}, "image_size": 32, "resize_mode": "pad", "apply_voi": True}
    torch.manual_seed(0)
    net = classifier_from_info(info).eval()
    (tmp_path / "models").mkdir()
    atomic_save(net.state_dict(), tmp_path / "models" / "model.pt")
    (tmp_path / "models" / "model_info.json").write_text(json.dumps(info))
    common = dict(meta_file=str(configs / "metadata.json"), config_file=str(configs / "inference.json"))
    verify_net_in_out(net_id="network_def", device="cpu", model_dir=str(tmp_path), **common)
    wf = ConfigWorkflow(workflow_type="infer", output_dir=str(tmp_path), **common)
    wf.initialize()
    assert wf.check_properties() == []
    assert isinstance(wf.network_def, torch.nn.Module) and wf.network_def.head[-1].out_features == 1
    ts_path = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts_path), ckpt_file=str(tmp_path / "models" / "model.pt"), **common,
                output_dir=str(tmp_path))
    x = torch.rand(2, 1, 40, 56)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(ts_path))(x), net(x), atol=1e-5)


def test_pretraining_configs_are_generated_from_the_shared_wiring():
    """Each pretraining bundle's train.json, multi_gpu_train.json and inference.json are bundles/_shared_ssl/
    merged with its configs/method.json (``python -m monai_cxrssl.bundle_sync``): a hand edit of a generated
    file, or a shared change not regenerated, fails here; method.json holds a network_def and no bundle_root."""
    from monai_cxrssl import bundle_sync

    assert [b.name for b in bundle_sync.pretraining_bundles()] == [b.name for b in SSL_BUNDLES]
    assert bundle_sync.sync(check=True) == [], "run: python -m monai_cxrssl.bundle_sync"
    for bundle in SSL_BUNDLES:
        method = json.loads((bundle / "configs" / "method.json").read_text())
        assert "network_def" in method and "bundle_root" not in method, bundle.name
        train = json.loads((bundle / "configs" / "train.json").read_text())
        assert train["bundle_root"] == f"$monai_cxrssl.paths.bundle_root('{bundle.name}')"
        assert train["network_def"] == method["network_def"]


def test_a_drifted_copy_is_found_and_rewritten(tmp_path):
    import shutil

    from monai_cxrssl import bundle_sync

    bundles = tmp_path / "bundles"
    shutil.copytree(REPO_ROOT / "bundles", bundles, ignore=shutil.ignore_patterns(*RUN_OUTPUTS))
    train = bundles / "moco_cxr" / "configs" / "train.json"
    train.write_text(train.read_text().replace('"batch_size": 32', '"batch_size": 64'))
    (bundles / "_shared_ssl" / "multi_gpu_train.json").write_text('{"dist_timeout_s": 60}\n')
    stale = bundle_sync.sync(check=True, bundles_dir=bundles, shared_dir=bundles / "_shared_ssl")
    assert train in stale and all(bundles / f"{b.name}/configs/multi_gpu_train.json" in stale for b in SSL_BUNDLES)
    bundle_sync.sync(bundles_dir=bundles, shared_dir=bundles / "_shared_ssl")
    assert bundle_sync.sync(check=True, bundles_dir=bundles, shared_dir=bundles / "_shared_ssl") == []
    assert '"batch_size": 32' in train.read_text()


def test_classifier_train_workflow_properties(tmp_path):
    """MONAI's train-workflow properties of the classifier (``train#inferer``, ``validate#inferer``,
    ``validate#key_metric``, ...): ``check_properties()`` finds nothing missing, and the engines use those ids."""
    from monai.bundle import ConfigWorkflow

    configs = REPO_ROOT / "bundles" / "cxr_classifier" / "configs"
    wf = ConfigWorkflow(config_file=str(configs / "train.json"), meta_file=str(configs / "metadata.json"),
                        workflow_type="train", output_dir=str(tmp_path), progress=False)
    wf.initialize()
    assert wf.check_properties() == []
    config = json.loads((configs / "train.json").read_text())
    assert config["train"]["trainer"]["inferer"] == "@train#inferer"
    assert config["validate"]["evaluator"]["inferer"] == "@validate#inferer"
    assert config["validate"]["evaluator"]["key_val_metric"] == "@validate#key_metric"


@pytest.mark.parametrize("overlay", ["train.json", "multi_gpu_train.json", "image_store.json"])
@pytest.mark.parametrize("bundle", SSL_BUNDLES, ids=lambda p: p.name)
def test_pretraining_train_workflow_properties(bundle, overlay, tmp_path):
    """Each pretraining bundle's train workflow, alone, with its torchrun overlay and with its image-store overlay,
    has every property MONAI's
    train workflow expects (``train#inferer``, ``train#handlers``, ...), and the trainer uses ``train#inferer``;
    the rank-0-only handlers are disabled, not sliced, on other ranks."""
    from monai.bundle import ConfigWorkflow

    configs = bundle / "configs"
    files = [str(configs / "train.json")] + ([str(configs / overlay)] if overlay != "train.json" else [])
    wf = ConfigWorkflow(config_file=files, meta_file=str(configs / "metadata.json"), workflow_type="train",
                        output_dir=str(tmp_path), progress=False)
    wf.initialize()
    assert wf.check_properties() == []
    config = json.loads((configs / "train.json").read_text())
    assert config["train"]["trainer"]["inferer"] == "@train#inferer"
    disabled = [h["_target_"] for h in config["train"]["handlers"] if h.get("_disabled_") == "@not_main_process"]
    assert disabled == ["StatsHandler", "TensorBoardStatsHandler", "monai_cxrssl.engines.ProgressHandler"]


#: the bundles run from inside their folder here: the classifier, and DINO for the pretraining bundles (a ViT, the
#: TorchScript path the zoo's checks take). SimCLR's is ``tests/test_bundle_simclr.py``'s; MoCo, MICLe and BYOL
#: share SimCLR's wiring (generated from ``bundles/_shared_ssl``, checked by ``bundle_sync --check``), differing in
#: their method modules only. SimCLR and DINO also run from a copy of ``bundles/`` outside the checkout, with the
#: installed wheel, in ``tests/test_wheel.py``.
FROM_INSIDE = ["dino_cxr", "cxr_classifier"]


@pytest.mark.slow
@pytest.mark.parametrize("bundle", [REPO_ROOT / "bundles" / name for name in FROM_INSIDE], ids=lambda p: p.name)
def test_every_config_runs_from_inside_the_bundle_folder(bundle, tmp_path):
    """As the model zoo holds a bundle: from inside a copy of its folder, with the default output_dir, training
    writes ``models/model.pt`` (the zoo's ``ckpt_dir``); published with ``large_files.yml`` and downloaded again by
    MONAI, the bundle's other configs read it from there."""
    import runner

    folder = tmp_path / bundle.name
    shutil.copytree(bundle, folder, ignore=shutil.ignore_patterns(*RUN_OUTPUTS))
    # small backbones; DINO keeps a ViT (its default kind: the TorchScript path the zoo's checks take)
    backbone = ["--backbone", "vit_tiny" if bundle.name == "dino_cxr" else "resnet10"]
    small = ["--image_size", "32", "--batch_size", "8", "--progress", "false", "--cache_workers", "1", *backbone]
    # DINO: a small head and local crops smaller than the 32-pixel global ones (its defaults are 96-pixel crops)
    dino = ["--local_size", "16", "--local_crops", "2", "--out_dim", "1024", "--hidden_dim", "256",
            "--bottleneck_dim", "64"] if bundle.name == "dino_cxr" else []
    runner.run_python("-m", "monai.bundle", "run", "--config_file", "configs/train.json", "--epochs", "1", *small,
                      *dino, cwd=folder)
    assert (folder / "models" / "model.pt").is_file() and (folder / "checkpoint.pt").is_file()
    # published as the zoo holds it: models/ uploaded (here to a local folder), large_files.yml written, and the
    # weights gone from the bundle until MONAI's download_large_files fetches and checks them for the configs below
    host = tmp_path / "host"
    shutil.copytree(folder / "models", host)
    runner.run_python("-m", "monai_cxrssl", "large-files", ".", "--url-prefix", host.as_uri(), cwd=folder)
    shutil.rmtree(folder / "models")
    runner.run_python("-m", "monai.bundle", "download_large_files", "--bundle_path", ".", cwd=folder)
    if bundle.name == "cxr_classifier":
        runner.run_python("-m", "monai.bundle", "run", "--config_file", "['configs/train.json','configs/evaluate.json']",
                          *small, "--n_resamples", "20", cwd=folder)
        assert (folder / "eval" / "metrics.json").is_file()
        runner.run_python("-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--batch_size", "8",
                          cwd=folder)
        assert (folder / "inference" / "predictions.csv").is_file()
    else:
        runner.run_python("-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--batch_size", "8",
                          *backbone, cwd=folder)
        assert (folder / "embeddings" / "embeddings.npy").is_file()
    assert not (folder / "outputs").exists() and not (folder / "bundles").exists()
