"""Tests of the SYNTHETIC chest-radiograph phantoms and the demo data set (no real data needed)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_cxrssl.data.phantoms import (
    DATALIST_NAME,
    PHANTOM_VERSION,
    _derived_seed,
    demo_datalist_path,
    make_phantom,
    write_demo_dataset,
)
from monai_cxrssl.exceptions import DatalistError

SEEDS = range(12)
SPLITS = ("training", "validation", "test")


# ------------------------------------------------------------------------------- make_phantom


def test_same_seed_identical_different_seed_differs():
    a = make_phantom(128, seed=7)
    assert np.array_equal(a, make_phantom(128, seed=7))
    assert np.array_equal(make_phantom(128, seed=7, opacity=True), make_phantom(128, seed=7, opacity=True))
    b = make_phantom(128, seed=8)
    assert not np.array_equal(a, b)
    assert np.abs(a - b).mean() > 0.01  # not just different noise


def test_different_seeds_give_different_anatomy():
    _, m1 = make_phantom(128, seed=1, return_masks=True)
    _, m2 = make_phantom(128, seed=2, return_masks=True)
    assert not np.array_equal(m1["lungs"], m2["lungs"])
    assert not np.array_equal(m1["heart"], m2["heart"])


def test_acquisition_seed_keeps_anatomy_changes_image():
    a, ma = make_phantom(128, seed=3, acquisition_seed=1, return_masks=True)
    b, mb = make_phantom(128, seed=3, acquisition_seed=2, return_masks=True)
    assert not np.array_equal(a, b)
    # same anatomy, only slightly repositioned: the lung masks overlap strongly
    inter = (ma["lungs"] & mb["lungs"]).sum()
    union = (ma["lungs"] | mb["lungs"]).sum()
    assert inter / union > 0.75
    assert np.array_equal(make_phantom(128, seed=3), make_phantom(128, seed=3, acquisition_seed=3))


@pytest.mark.parametrize("size", [32, 100, 256])
def test_range_dtype_shape(size):
    for opacity in (False, True):
        img = make_phantom(size, seed=size, opacity=opacity)
        assert img.dtype == np.float32
        assert img.shape == (size, size)
        assert np.isfinite(img).all()
        assert img.min() >= 0.0 and img.max() <= 1.0
        assert img.max() - img.min() > 0.4  # real contrast, not a flat image


def test_masks_shapes_and_keys():
    img, masks = make_phantom(96, seed=0, return_masks=True)
    expected = {
        "body", "lungs", "lung_image_left", "lung_image_right", "heart", "mediastinum",
        "spine", "ribs", "clavicles", "soft_tissue", "opacity",
    }
    assert set(masks) == expected
    for name, m in masks.items():
        assert m.dtype == bool and m.shape == img.shape, name
    assert not masks["opacity"].any()
    assert masks["lungs"].any() and masks["heart"].any() and masks["soft_tissue"].any()
    assert not (masks["lungs"] & masks["heart"]).any()
    assert np.array_equal(masks["lungs"], masks["lung_image_left"] | masks["lung_image_right"])


@pytest.mark.parametrize("seed", SEEDS)
def test_anatomy_lungs_dark_mediastinum_and_soft_tissue_bright(seed):
    img, m = make_phantom(128, seed=seed, return_masks=True)
    air = img[~m["body"]].mean()
    lungs = img[m["lungs"]].mean()
    assert air < lungs  # air outside the body is the darkest
    assert lungs + 0.1 < img[m["mediastinum"]].mean()
    assert lungs + 0.1 < img[m["soft_tissue"]].mean()
    assert img[m["clavicles"]].mean() > img[m["soft_tissue"]].mean()  # bone brighter than soft tissue


@pytest.mark.parametrize("seed", SEEDS)
def test_heart_on_image_right_and_lower(seed):
    size = 128
    img, m = make_phantom(size, seed=seed, return_masks=True)
    rows, cols = np.nonzero(m["heart"])
    assert cols.mean() > size / 2, "the heart shadow must lie mostly on the image's right (PA view)"
    assert rows.mean() > size / 2
    # the image-right lung is the smaller one (the heart takes room from it)
    assert m["lung_image_right"].sum() < m["lung_image_left"].sum()
    # plain geometric check, independent of the masks: the lower band of the image's right
    # (heart shadow) is brighter than the same band on the image's left (lung)
    band = slice(int(0.55 * size), int(0.70 * size))
    right = img[band, int(0.55 * size) : int(0.65 * size)].mean()
    left = img[band, int(0.25 * size) : int(0.35 * size)].mean()
    assert right > left + 0.1


@pytest.mark.parametrize("seed", SEEDS)
def test_opacity_brightens_lungs_only_inside(seed):
    plain, m0 = make_phantom(128, seed=seed, return_masks=True)
    opaque, m1 = make_phantom(128, seed=seed, opacity=True, return_masks=True)
    lungs = m0["lungs"]
    assert np.array_equal(lungs, m1["lungs"])  # same anatomy
    opa = m1["opacity"]
    assert opa.any() and not m0["opacity"].any()
    assert opa[~lungs].sum() <= 0.05 * opa.sum()  # patches sit inside the lung fields
    assert opaque[lungs].mean() > plain[lungs].mean() + 0.005
    assert opaque[opa].mean() > plain[opa].mean() + 0.05
    # far from the patches nothing changes beyond noise scaling
    far = m1["body"] & ~lungs
    assert np.abs(opaque[far] - plain[far]).mean() < 0.01


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        make_phantom(16)
    with pytest.raises(ValueError, match="seed"):
        make_phantom(64, seed=-1)
    with pytest.raises(ValueError, match="seed"):
        make_phantom(64, seed=1.5)
    with pytest.raises(ValueError, match="acquisition_seed"):
        make_phantom(64, acquisition_seed=-3)


def test_make_phantom_256_is_fast():
    make_phantom(256, seed=0)  # warm-up
    best = float("inf")
    for i in range(5):
        t0 = time.perf_counter()
        make_phantom(256, seed=i, opacity=True)
        best = min(best, time.perf_counter() - t0)
    assert best < 0.05, f"make_phantom(256) took {best * 1e3:.1f} ms"


# ------------------------------------------------------------------------- write_demo_dataset


def _image_mtimes(out_dir):
    return {p.name: p.stat().st_mtime_ns for p in (out_dir / "images").glob("*.png")}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    data = write_demo_dataset(out, n_train=20, n_val=8, n_test=8, size=64, seed=3)
    return out, data


def test_demo_files_exist_and_are_16bit(demo):
    out, data = demo
    assert demo_datalist_path(out) == out / DATALIST_NAME
    assert json.loads((out / DATALIST_NAME).read_text()) == data
    for split in SPLITS:
        for item in data[split]:
            assert not item["image"].startswith("/")  # relative to the datalist folder
            path = out / item["image"]
            assert path.is_file()
            with Image.open(path) as im:
                assert im.format == "PNG" and im.mode == "I;16" and im.size == (64, 64)
                arr = np.asarray(im)
            assert arr.dtype == np.uint16 and arr.max() > 20000
    assert len(list((out / "images").glob("*.png"))) == 36
    assert not list(out.rglob("*.tmp"))


def test_demo_splits_labels_and_patients(demo):
    _, data = demo
    assert [len(data[s]) for s in SPLITS] == [20, 8, 8]
    patients = {}
    for split in SPLITS:
        labels = [item["label"] for item in data[split]]
        assert set(labels) == {0, 1}, split
        assert abs(sum(labels) - len(labels) / 2) <= 1  # about half with opacity
        for item in data[split]:
            assert set(item) == {"image", "label", "patient_id"}
            assert item["image"] == f"images/{item['image'].split('/')[-1]}"
            assert item["image"].split("/")[-1].startswith(item["patient_id"] + "-i")
            patients.setdefault(item["patient_id"], set()).add(split)
    assert all(len(s) == 1 for s in patients.values()), "a patient appears in two splits"
    per_patient = {}
    for split in SPLITS:
        for item in data[split]:
            per_patient[item["patient_id"]] = per_patient.get(item["patient_id"], 0) + 1
    assert max(per_patient.values()) > 1  # some patients have several images
    assert max(per_patient.values()) <= 3


def test_demo_says_synthetic(demo):
    out, data = demo
    assert data["synthetic"] is True
    assert "SYNTHETIC" in data["description"] and "NOT real" in data["description"]
    assert data["task"] == "binary" and data["classes"] == ["normal", "opacity"]
    gen = data["generator"]
    assert gen["version"] == PHANTOM_VERSION
    assert (gen["n_train"], gen["n_val"], gen["n_test"], gen["size"], gen["seed"]) == (20, 8, 8, 64, 3)
    readme = (out / "README.txt").read_text()
    assert "SYNTHETIC" in readme and "NOT REAL RADIOGRAPHS" in readme and "evaluation" in readme


def test_demo_labels_match_pixels(demo):
    """Each PNG is the documented phantom: patient anatomy seed, per-image acquisition seed, opacity = label."""
    out, data = demo
    seed = data["generator"]["seed"]
    by_patient = {}
    for split in SPLITS:
        for item in data[split]:
            by_patient.setdefault(item["patient_id"], []).append(item)
    assert any(len({i["label"] for i in items}) == 2 for items in by_patient.values())
    for pid, items in list(by_patient.items())[:6]:
        patient = int(pid.removeprefix("demo-p"))
        for k, item in enumerate(items):
            assert item["image"].endswith(f"-i{k}.png")
            img, masks = make_phantom(
                64,
                seed=_derived_seed(seed, patient),
                acquisition_seed=_derived_seed(seed, patient, k + 1),
                opacity=bool(item["label"]),
                return_masks=True,
            )
            with Image.open(out / item["image"]) as im:
                stored = np.asarray(im).astype(np.float32) / 65535.0
            assert np.abs(stored - img).max() <= 1.0 / 65535.0
            assert masks["opacity"].any() == bool(item["label"])


def test_demo_loads_with_monai(demo):
    from monai.data import load_decathlon_datalist

    out, _ = demo
    for split in SPLITS:
        items = load_decathlon_datalist(out / DATALIST_NAME, is_segmentation=False, data_list_key=split)
        assert items and all(Path(i["image"]).is_file() and Path(i["image"]).is_absolute() for i in items)


def test_demo_is_deterministic(tmp_path, demo, monkeypatch):
    out, data = demo
    monkeypatch.setenv("CXRSSL_CACHE_DIR", str(tmp_path / "empty_cache"))  # generated again, not copied
    again = write_demo_dataset(tmp_path, n_train=20, n_val=8, n_test=8, size=64, seed=3)
    assert again == data
    for item in data["training"][:5]:
        assert (out / item["image"]).read_bytes() == (tmp_path / item["image"]).read_bytes()


def test_demo_reused_then_regenerated(tmp_path, caplog):
    kwargs = dict(n_train=6, n_val=4, n_test=4, size=48, seed=1)
    with caplog.at_level(logging.WARNING, logger="monai_cxrssl.data.phantoms"):
        first = write_demo_dataset(tmp_path, **kwargs)
    assert any("SYNTHETIC" in r.getMessage() and "wrote" in r.getMessage() for r in caplog.records)
    mtimes = _image_mtimes(tmp_path)
    datalist_mtime = (tmp_path / DATALIST_NAME).stat().st_mtime_ns
    time.sleep(0.02)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_cxrssl.data.phantoms"):
        second = write_demo_dataset(tmp_path, **kwargs)
    assert second == first
    assert _image_mtimes(tmp_path) == mtimes
    assert (tmp_path / DATALIST_NAME).stat().st_mtime_ns == datalist_mtime
    assert any("SYNTHETIC" in r.getMessage() and "reusing" in r.getMessage() for r in caplog.records)

    # different parameters: regenerated, stale images removed
    third = write_demo_dataset(tmp_path, **{**kwargs, "n_train": 4, "size": 40})
    assert third["generator"]["n_train"] == 4 and len(third["training"]) == 4
    names = {p.name for p in (tmp_path / "images").glob("*.png")}
    assert names == {i["image"].split("/")[-1] for s in SPLITS for i in third[s]}
    with Image.open(tmp_path / third["training"][0]["image"]) as im:
        assert im.size == (40, 40)

    # a missing image forces regeneration too
    missing = tmp_path / third["test"][0]["image"]
    missing.unlink()
    fourth = write_demo_dataset(tmp_path, **{**kwargs, "n_train": 4, "size": 40})
    assert fourth == third and missing.is_file()



def test_demo_cache_copies_what_generation_writes_and_regenerates_a_tampered_entry(tmp_path, monkeypatch, caplog):
    from monai_cxrssl.data.phantoms import demo_cache_dir

    kwargs = dict(n_train=6, n_val=2, n_test=2, size=48, seed=5)
    monkeypatch.setenv("CXRSSL_CACHE_DIR", str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="monai_cxrssl.data.phantoms"):
        first = write_demo_dataset(tmp_path / "a", **kwargs)  # generated, then kept in the cache
        assert "copied from the cache" not in caplog.text
        second = write_demo_dataset(tmp_path / "b", **kwargs)
        assert "copied from the cache" in caplog.text and "SYNTHETIC" in caplog.text
    assert second == first
    names = sorted(p.name for p in (tmp_path / "a" / "images").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b" / "images").iterdir())
    for n in names:
        assert (tmp_path / "a" / "images" / n).read_bytes() == (tmp_path / "b" / "images" / n).read_bytes()
    # a damaged cache entry is noticed (SHA-256 manifest) and the set generated afresh, identical
    (entry,) = [d for d in demo_cache_dir().iterdir() if not d.name.startswith(".")]
    (entry / "images" / names[0]).write_bytes(b"not a png")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_cxrssl.data.phantoms"):
        third = write_demo_dataset(tmp_path / "c", **kwargs)
    assert third == first and "copied from the cache" not in caplog.text
    assert (tmp_path / "c" / "images" / names[0]).read_bytes() == (tmp_path / "a" / "images" / names[0]).read_bytes()
    # a cache that cannot be written changes nothing
    (tmp_path / "not_a_dir").write_text("")
    monkeypatch.setenv("CXRSSL_CACHE_DIR", str(tmp_path / "not_a_dir"))
    assert write_demo_dataset(tmp_path / "d", **kwargs) == first


@pytest.mark.parametrize("content", ["{not json", json.dumps({"training": [{"image": "x.png", "label": 0}]})])
def test_demo_never_overwrites_a_foreign_datalist(tmp_path, content):
    (tmp_path / DATALIST_NAME).write_text(content)
    with pytest.raises(DatalistError, match="refusing to overwrite"):
        write_demo_dataset(tmp_path, n_train=2, n_val=0, n_test=0, size=32)
    assert (tmp_path / DATALIST_NAME).read_text() == content
    assert not (tmp_path / "images").exists()


def test_demo_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_train"):
        write_demo_dataset(tmp_path, n_train=0)
    with pytest.raises(ValueError, match="n_val"):
        write_demo_dataset(tmp_path, n_val=-1)
    assert not (tmp_path / DATALIST_NAME).exists()
    data = write_demo_dataset(tmp_path, n_train=2, n_val=0, n_test=0, size=32)  # empty splits are allowed
    assert data["validation"] == data["test"] == [] and sorted(i["label"] for i in data["training"]) == [0, 1]


def test_montage_for_review(tmp_path):
    """Saves /tmp/phantoms.png (4 phantoms, the last two with opacity) for a human to look at."""
    imgs = [make_phantom(256, seed=s, opacity=s >= 2) for s in range(4)]
    montage = (np.concatenate(imgs, axis=1) * 255).round().astype(np.uint8)
    try:
        Image.fromarray(montage).save("/tmp/phantoms.png")
    except OSError:  # read-only /tmp: keep a copy in tmp_path instead
        Image.fromarray(montage).save(tmp_path / "phantoms.png")
    assert montage.shape == (256, 1024)
