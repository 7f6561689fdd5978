"""Every bundle follows the MONAI bundle layout and its metadata verifies offline."""

import json

import pytest

from monai.bundle import ConfigParser, verify_metadata

from monai_cxrssl.paths import REPO_ROOT

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
