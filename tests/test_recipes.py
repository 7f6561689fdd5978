"""Each SSL bundle ships a small-data recipe: an overlay of train.json that only changes its settings."""

import json

import pytest

from monai.bundle import ConfigParser

from monai_cxrssl.data import local_crop_size
from monai_cxrssl.methods.moco import queue_size_for
from monai_cxrssl.paths import REPO_ROOT

SSL_BUNDLES = sorted(p.parent.parent for p in (REPO_ROOT / "bundles").glob("*_cxr/configs/train.json"))


@pytest.mark.parametrize("bundle", SSL_BUNDLES, ids=lambda p: p.name)
def test_small_data_recipe_only_sets_existing_settings(bundle):
    recipe = bundle / "configs" / "recipes" / "small_data.json"
    assert recipe.is_file(), f"{bundle.name} has no small-data recipe"
    settings = json.loads(recipe.read_text())
    train = json.loads((bundle / "configs" / "train.json").read_text())
    assert settings
    for key, value in settings.items():
        # a typo would add a key nothing reads, and the recipe would silently not apply
        assert key in train, f"{recipe.name} of {bundle.name} sets '{key}', which train.json does not have"
        assert not isinstance(value, (dict, list)) or key.endswith("scale"), f"{key}: a recipe sets values, not wiring"
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "train.json"), str(recipe)])
    for key, value in settings.items():
        assert parser.config[key] == value  # layered last, the recipe wins
    doc = (bundle / "docs" / "README.md").read_text()
    assert "configs/recipes/small_data.json" in doc, f"{bundle.name}'s docs do not show its recipe"


def test_moco_queue_is_a_share_of_the_dataset_in_whole_batches():
    assert queue_size_for(5216, 128) == 1280  # a quarter of Kermany's training set, 10 batches
    assert queue_size_for(5216, 128) % 128 == 0
    assert queue_size_for(100, 8) == 256  # the minimum
    assert queue_size_for(10_000_000, 256) == 65536  # the maximum
    assert queue_size_for(100, 512) == 512  # never less than one batch
    assert queue_size_for(40_000, 64, fraction=0.1) == 3968
    with pytest.raises(ValueError, match="n_images"):
        queue_size_for(0, 8)
    with pytest.raises(ValueError, match="fraction"):
        queue_size_for(100, 8, fraction=0)


def test_dino_local_crops_keep_the_papers_ratio():
    assert local_crop_size(224) == 96  # the paper's 2 x 224 + local 96
    assert [local_crop_size(s) for s in (64, 128)] == [32, 48]
    assert local_crop_size(16) == 16  # at least one multiple
    with pytest.raises(ValueError, match="image_size"):
        local_crop_size(0)
