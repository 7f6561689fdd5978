"""From a data source to cached, preprocessed training data: choice of source, up-front checks, skipping."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from monai.transforms import Compose

from monai_cxrssl.data import (
    CXRCacheDataset,
    LoadCXRd,
    ResizeCXRd,
    datalist_from_dicom_folder,
    ssl_dataloader,
    training_items,
)
from monai_cxrssl.exceptions import CXRReadError, DatalistError


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


def test_unreadable_image_fails_at_construction_naming_it(tmp_path):
    bad = tmp_path / "truncated.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI")  # a DICOM preamble cut short
    items = [{"image": _png(tmp_path / f"ok{i}.png")} for i in range(4)] + [{"image": str(bad)}]
    with pytest.raises(CXRReadError, match="truncated.dcm"):
        CXRCacheDataset(items, _preprocess(), num_workers=1)


def test_skip_unreadable_drops_with_a_logged_count(tmp_path, caplog):
    bad = tmp_path / "garbage.png"
    bad.write_bytes(b"this is not an image")
    items = [{"image": _png(tmp_path / f"ok{i}.png", value=10 * i)} for i in range(4)] + [{"image": str(bad)}]
    with caplog.at_level(logging.WARNING):
        ds = CXRCacheDataset(items, _preprocess(), skip_unreadable="true", num_workers=1)
    assert len(ds) == 4 and "skipped 1 unreadable image(s) of 5" in caplog.text and "garbage.png" in caplog.text
    assert all(ds[i]["image"].shape == (1, 16, 16) for i in range(4))
    # the remaining entries still pair with their own images
    assert [round(float(ds[i]["image"].max()) * 255) for i in range(4)] == [0, 10, 20, 30]
    with pytest.raises(DatalistError, match="none of the 1 images"):
        CXRCacheDataset([{"image": str(bad)}], _preprocess(), skip_unreadable=True)


def test_loader_order_depends_on_seed_and_epoch_only(tmp_path):
    items = [{"image": torch.full((1, 4, 4), float(i))} for i in range(16)]
    from monai.data import Dataset

    def order(seed, epoch):
        loader = ssl_dataloader(Dataset(items), batch_size=4, seed=seed)
        loader.sampler.set_epoch(epoch)
        return [int(b["image"][j, 0, 0, 0]) for b in loader for j in range(4)]

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2) and order(0, 1) != order(1, 1)
    assert sorted(order(0, 1)) == list(range(16))


def test_real_dicom_folder_to_cached_tensors(dicom_dir):
    dl = datalist_from_dicom_folder(dicom_dir)
    ds = CXRCacheDataset(dl["training"], _preprocess(64), num_workers=1)
    assert len(ds) == 3
    for i in range(3):
        x = ds[i]["image"]
        assert x.shape == (1, 64, 64) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.std()) > 0.05
