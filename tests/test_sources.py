"""Where the data come from (data/sources.py): the choice of source and the up-front checks."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from monai.transforms import Compose

from monai_cxrssl.data import LoadCXRd, ResizeCXRd, training_items
from monai_cxrssl.exceptions import DatalistError


def _png(path, value=128, size=(40, 30)):
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint8)).save(path)
    return str(path)


def _preprocess(size=16):
    return Compose([LoadCXRd(keys="image"), ResizeCXRd(keys="image", size=size)])


def test_datalist_takes_precedence_and_only_its_training_list_is_used(tmp_path):
    train = [{"image": _png(tmp_path / f"t{i}.png")} for i in range(3)]
    test = [{"image": _png(tmp_path / "x.png")}]
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"training": train, "test": test}))
    items = training_items(dataset_dir=tmp_path / "ignored", datalist=dl)
    assert [i["image"] for i in items] == [t["image"] for t in train]
    with pytest.raises(DatalistError, match="validation"):
        training_items(datalist=dl, split="validation")


def test_demo_data_when_no_source_is_given(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        items = training_items(demo_dir=tmp_path / "demo")
    assert len(items) > 0 and all(str(tmp_path / "demo") in i["image"] for i in items)
    assert "SYNTHETIC" in caplog.text
    with pytest.raises(DatalistError, match="no data given"):
        training_items()


def test_missing_file_is_reported_before_anything_is_decoded(tmp_path):
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"training": [{"image": _png(tmp_path / "ok.png")}, {"image": str(tmp_path / "gone.png")}]}))
    with pytest.raises(DatalistError, match="gone.png"):
        training_items(datalist=dl)
