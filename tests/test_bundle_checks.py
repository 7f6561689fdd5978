"""Command-line checks of bundle runs: unknown settings and '#' in values are refused before anything runs, and
the project's own error is the last thing a failed run prints; the progress bar shows any engine's loss."""

import json

import pytest
import torch
from runner import run_bundle

from monai.bundle import ConfigParser

from monai_cxrssl.bundle_checks import check_overrides, root_error
from monai_cxrssl.engines import scalar_outputs
from monai_cxrssl.exceptions import CXRReadError, OverrideError
from monai_cxrssl.paths import REPO_ROOT

SIMCLR = "bundles/simclr_cxr/configs/train.json"
CLASSIFIER = "bundles/cxr_classifier/configs/train.json"


def _config(path):
    return ConfigParser.load_config_files(str(REPO_ROOT / path))


@pytest.mark.parametrize("override, nearest", [
    ("init_weight", "init_weights"), ("epoch", "epochs"), ("datalst", "datalist"),
    ("train#dataloader#batchsize", None),  # a new argument of a component that takes **kwargs: allowed
    ("train#preprocessing#transforms#0#keyz", None),
])
def test_unknown_settings_are_refused_with_the_nearest_one(override, nearest):
    config = _config(CLASSIFIER if override == "init_weight" else SIMCLR)
    if override == "train#dataloader#batchsize":
        check_overrides(config, {override: 4})
        return
    with pytest.raises(OverrideError, match=f"unknown setting '--{override}'") as e:
        check_overrides(config, {override: 1})
    if nearest:
        assert f"did you mean '--{nearest}'?" in str(e.value)
    else:  # nothing close: the bundle's settings are listed
        assert "its settings are:" in str(e.value) and "epochs" in str(e.value)


def test_known_settings_component_arguments_and_references_pass():
    config = _config("bundles/dino_cxr/configs/train.json")
    check_overrides(config, {"epochs": 1, "network_def#backbone#depth": 2, "train::dataloader::batch_size": 4,
                             "train#preprocessing#transforms#0#keys": "image", "_meta_#version": "x",
                             "output_dir": "$@bundle_root + '/o'", "datalist": "@dataset_dir"})


def test_a_hash_in_a_value_is_refused_rather_than_rewritten():
    with pytest.raises(OverrideError, match=r"rewrites '#'.*'o::ut'"):
        check_overrides(_config(SIMCLR), {"output_dir": "o#ut"})
    with pytest.raises(OverrideError, match="rewrites"):
        check_overrides(_config("bundles/cxr_classifier/configs/evaluate_shift.json"),
                        {"label_map": {"a": "c", "d": "e#f"}})


def test_root_error_finds_the_project_error_behind_monai_wrapping():
    try:
        try:
            raise CXRReadError("/x.png", "truncated")
        except CXRReadError as inner:
            raise RuntimeError("Failed to instantiate component 'monai_cxrssl.data.CXRCacheDataset'") from inner
    except RuntimeError as outer:
        assert isinstance(root_error(outer), CXRReadError)
    assert root_error(RuntimeError("not ours")) is None


def test_scalar_outputs_of_any_engine():
    ssl = {"loss": torch.tensor(2.5), "lr": torch.tensor(1e-3)}
    assert scalar_outputs(ssl) == {"loss": 2.5, "lr": pytest.approx(1e-3)}
    supervised = {"image": torch.zeros(4, 1, 8, 8), "label": torch.zeros(4, 1), "pred": torch.zeros(4, 1),
                  "loss": torch.tensor(0.7)}
    assert scalar_outputs(supervised) == {"loss": pytest.approx(0.7)}  # decollate=False
    assert scalar_outputs([{"pred": torch.zeros(1), "loss": 0.5}, {"loss": 0.5}]) == {"pred": 0.0, "loss": 0.5}
    assert scalar_outputs(torch.tensor(1.5)) == {"loss": 1.5}


# ------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
@pytest.mark.parametrize("args, last", [
    (["--init_weight", "x.pt"], "did you mean '--init_weights'?"),
    (["--epoch", "1"], "did you mean '--epochs'?"),
    (["--datalst", "f.json"], "did you mean '--datalist'?"),
])
def test_a_misspelt_override_fails_before_training(tmp_path, args, last):
    proc = run_bundle(CLASSIFIER, tmp_path / "out", "--image_size", "32", *args, check=False, threads=1)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("OverrideError: unknown setting") and lines[-1].endswith(last), lines[-3:]
    assert "Engine run" not in proc.stdout + proc.stderr and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_hash_in_a_command_line_path_is_refused(tmp_path):
    proc = run_bundle(SIMCLR, tmp_path / "o#ut", check=False, threads=1)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("OverrideError: '--output_dir ")
    assert not list(tmp_path.iterdir())  # neither 'o#ut' nor 'o::ut'


@pytest.mark.slow
def test_the_project_error_is_the_last_thing_a_failed_run_prints(tmp_path):
    bad = tmp_path / "truncated.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"training": [{"image": str(bad)}]}))
    proc = run_bundle(SIMCLR, tmp_path / "out", "--datalist", dl, "--image_size", "32", check=False, threads=1)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert "Failed to instantiate component" in proc.stderr  # MONAI's wrapping is still shown above ...
    assert lines[-1].startswith(f"CXRReadError: cannot read radiograph '{bad}'"), lines[-3:]  # ... ours is last
