"""Decoded, preprocessed radiographs kept once (data/cache.py): unreadable files, the disk cache, real DICOMs."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from monai.transforms import Compose

from monai_cxrssl.data import CXRCacheDataset, LoadCXRd, ResizeCXRd, datalist_from_dicom_folder
from monai_cxrssl.exceptions import CXRReadError, DatalistError


def _png(path, value=128, size=(40, 30)):
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint8)).save(path)
    return str(path)


def _preprocess(size=16):
    return Compose([LoadCXRd(keys="image"), ResizeCXRd(keys="image", size=size)])


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


def test_real_dicom_folder_to_cached_tensors(dicom_dir):
    dl = datalist_from_dicom_folder(dicom_dir)
    ds = CXRCacheDataset(dl["training"], _preprocess(64), num_workers=1)
    assert len(ds) == 3
    for i in range(3):
        x = ds[i]["image"]
        assert x.shape == (1, 64, 64) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.std()) > 0.05


def test_cache_gives_the_same_tensors_as_decoding_afresh(tmp_path, dicom_dir, kermany_dir):
    # real radiographs: DICOM (JPEG / JPEG 2000, MONOCHROME1 and 2) and Kermany JPEGs
    jpegs = sorted((kermany_dir / "test").rglob("*.jpeg"))[:4]
    items = datalist_from_dicom_folder(dicom_dir)["training"] + [{"image": str(p)} for p in jpegs]
    fresh = [_preprocess(64)(dict(e))["image"] for e in items]
    memory = CXRCacheDataset(items, _preprocess(64), num_workers=2)
    disk1 = CXRCacheDataset(items, _preprocess(64), cache_dir=tmp_path / "cache", num_workers=2)
    disk2 = CXRCacheDataset(items, _preprocess(64), cache_dir=tmp_path / "cache", num_workers=2)
    assert disk1.disk_hits == 0 and disk2.disk_hits == len(items)  # the second run decodes nothing
    for i, expected in enumerate(fresh):
        for ds in (memory, disk1, disk2):
            assert torch.equal(torch.as_tensor(ds[i]["image"]), torch.as_tensor(expected)), (i, items[i]["image"])


def test_disk_cache_is_keyed_by_settings_and_file_and_survives_a_corrupt_entry(tmp_path, caplog):
    items = [{"image": _png(tmp_path / f"im{i}.png", value=40 * i)} for i in range(3)]
    cache = tmp_path / "cache"
    CXRCacheDataset(items, _preprocess(16), cache_dir=cache, num_workers=1)
    assert len(list(cache.glob("*.pt"))) == 3
    # another image size is other settings: decoded afresh, not read from the 16 px files
    ds32 = CXRCacheDataset(items, _preprocess(32), cache_dir=cache, num_workers=1)
    assert ds32.disk_hits == 0 and ds32[0]["image"].shape == (1, 32, 32)
    # a changed image file is decoded afresh
    _png(tmp_path / "im1.png", value=200, size=(41, 30))
    ds = CXRCacheDataset(items, _preprocess(16), cache_dir=cache, num_workers=1)
    assert ds.disk_hits == 2 and round(float(ds[1]["image"].max()) * 255) == 200
    # a truncated cache file is decoded again and replaced, with a warning
    victim = ds._disk_path(items[0])
    victim.write_bytes(victim.read_bytes()[:20])
    with caplog.at_level(logging.WARNING):
        ds = CXRCacheDataset(items, _preprocess(16), cache_dir=cache, num_workers=1)
    assert "unreadable" in caplog.text and ds.disk_hits == len(items) - 1
    assert CXRCacheDataset(items, _preprocess(16), cache_dir=cache, num_workers=1).disk_hits == len(items)


def test_disk_cache_holds_metatensors_safely_and_refuses_a_planted_pickle(tmp_path, caplog):
    from monai.data import MetaTensor

    from monai_cxrssl.data.cache import from_cache_record, to_cache_record

    # a MetaTensor (array, metadata, NumPy values, an enum) survives the safe format
    mt = MetaTensor(torch.arange(6.0).reshape(1, 2, 3), meta={"filename_or_obj": "a.png", "spacing": np.array([0.5, 0.5]),
                                                              "n": np.int64(3)})
    item = {"image": mt, "target": np.float32(1.0), "patient_id": "p1"}
    back = from_cache_record(torch.load(_saved(tmp_path / "r.pt", to_cache_record(item)), weights_only=True))
    assert isinstance(back["image"], MetaTensor) and torch.equal(back["image"].as_tensor(), mt.as_tensor())
    assert back["image"].meta["filename_or_obj"] == "a.png" and back["image"].meta["n"] == 3
    assert np.array_equal(back["image"].meta["spacing"], [0.5, 0.5]) and back["target"] == 1.0
    with pytest.raises(TypeError, match=r"item\.bad is a object"):
        to_cache_record({"bad": object()})

    # a cache file replaced by a pickle that would run code is not run: the image is decoded again
    items = [{"image": _png(tmp_path / f"im{i}.png", value=40 * i)} for i in range(2)]
    cache = tmp_path / "cache"
    ds = CXRCacheDataset(items, _preprocess(16), cache_dir=cache, num_workers=1)
    marker = tmp_path / "pwned"
    torch.save({"x": _Exploit(str(marker))}, ds._disk_path(items[0]))
    with caplog.at_level(logging.WARNING):
        ds = CXRCacheDataset(items, _preprocess(16), cache_dir=cache, num_workers=1)
    assert not marker.exists() and "unreadable" in caplog.text and ds.disk_hits == 1
    assert round(float(ds[1]["image"].max()) * 255) == 40


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (self.path, "w"))


def _saved(path, obj):
    torch.save(obj, path)
    return path
