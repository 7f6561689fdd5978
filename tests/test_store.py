"""The persistent image store (data/store.py): the same images as the in-memory cache within its quantisation, a
killed build that resumes, changed files and settings rebuilt, unreadable files named or counted, and the
pretraining bundles training from it through their image_store.json overlay, two ranks reading disjoint shards."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai.transforms import Compose, SelectItemsd
from store_build import entries, preprocessing

from monai_cxrssl.data import (CXRCacheDataset, CXRImageStore, CXRStoreDataset, LoadCXRd, ResizeCXRd, build_store,
                               datalist_from_dicom_folder, item_groups)
from monai_cxrssl.exceptions import CXRReadError, DatalistError

HERE = Path(__file__).parent


def _pngs(folder: Path, n: int, size: int = 24, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / f"p{i // 2:04d}_{i:04d}.png")
    return folder


def _status(store: Path) -> np.ndarray:
    return np.fromfile(store / "status.bin", dtype=np.uint8)


@pytest.mark.parametrize("dtype, step", [("uint8", 1 / 255), ("uint16", 1 / 65535)])
def test_store_gives_the_cached_images_within_its_quantisation(tmp_path, dicom_dir, kermany_dir, dtype, step):
    # real radiographs: DICOM (JPEG, JPEG 2000, MONOCHROME1 and 2, 8-15 bit) and Kermany JPEGs
    jpegs = sorted((kermany_dir / "test").rglob("*.jpeg"))[:4]
    items = datalist_from_dicom_folder(dicom_dir)["training"] + [{"image": str(p), "patient_id": p.stem} for p in jpegs]
    transform = Compose([LoadCXRd(keys="image"), ResizeCXRd(keys="image", size=64),
                         SelectItemsd(keys=["image", "patient_id"], allow_missing_keys=True)])
    cached = CXRCacheDataset(items, transform, num_workers=1)
    stored = CXRStoreDataset(items, transform, tmp_path / "store", dtype=dtype, num_workers=2, progress=False)
    assert len(stored) == len(items) and stored.store.shape == (1, 64, 64)
    for i in range(len(items)):
        a, b = torch.as_tensor(cached[i]["image"]).float(), stored[i]["image"]
        assert b.dtype == torch.float32 and b.shape == a.shape
        assert float((a - b).abs().max()) <= step / 2 + 1e-6, items[i]["image"]
        assert stored[i].get("patient_id") == cached[i].get("patient_id")
    record = np.dtype(dtype).itemsize * 64 * 64
    assert (tmp_path / "store" / "images.bin").stat().st_size == record * len(items)
    assert item_groups(stored) == [e.get("patient_id") or f"__single_{i}" for i, e in enumerate(items)]


def test_a_killed_build_resumes_with_the_images_it_had_not_written(tmp_path, caplog):
    images = _pngs(tmp_path / "images", 320)
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, str(HERE / "store_build.py"), str(images), str(store), "0.02"],
                            cwd=HERE, env={**os.environ, "PYTHONPATH": str(HERE)})
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (store / "status.bin").is_file() and 64 <= int((_status(store) == 1).sum()) < 320:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # as kill -9 would
    proc.wait()
    written = int((_status(store) == 1).sum())
    assert 64 <= written < 320, f"the build was not caught half-way ({written} of 320 written)"

    with caplog.at_level(logging.INFO, logger="monai_cxrssl.data.store"):
        build_store(entries(images), preprocessing(), store, num_workers=2, progress=False)
    assert f"{written} of 320 image(s) already there, {320 - written} to decode" in caplog.text
    resumed = CXRImageStore(store)
    fresh = CXRImageStore(build_store(entries(images), preprocessing(), tmp_path / "fresh", num_workers=0,
                                      progress=False))
    assert len(resumed) == len(fresh) == 320
    assert all(np.array_equal(resumed.read(i), fresh.read(i)) for i in range(320))


def test_a_changed_image_is_decoded_again_and_other_settings_rebuild(tmp_path, caplog):
    images = _pngs(tmp_path / "images", 8)
    store = tmp_path / "store"
    build_store(entries(images), preprocessing(), store, num_workers=0, progress=False)
    before = CXRImageStore(store).read(3).copy()
    unchanged = _mtimes(store)
    with caplog.at_level(logging.INFO, logger="monai_cxrssl.data.store"):
        build_store(entries(images), preprocessing(), store, num_workers=0, progress=False)
    assert "is up to date (8 images)" in caplog.text and _mtimes(store) == unchanged  # checked, not written
    caplog.clear()
    changed = sorted(images.glob("*.png"))[3]
    Image.fromarray(np.full((24, 24), 200, dtype=np.uint8)).save(changed)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))  # a different modification time for certain
    with caplog.at_level(logging.INFO, logger="monai_cxrssl.data.store"):
        build_store(entries(images), preprocessing(), store, num_workers=0, progress=False)
    assert "1 source file(s) changed" in caplog.text and "7 of 8 image(s) already there, 1 to decode" in caplog.text
    after = CXRImageStore(store).read(3)
    assert not np.array_equal(before, after) and int(after.min()) == int(after.max()) == 200

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="monai_cxrssl.data.store"):
        build_store(entries(images), preprocessing(size=20), store, num_workers=0, progress=False)
    assert "built with other transform: rebuilding it" in caplog.text and CXRImageStore(store).shape == (1, 20, 20)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="monai_cxrssl.data.store"):
        build_store(entries(images)[:6], preprocessing(size=20), store, num_workers=0, progress=False)
    assert "rebuilding it" in caplog.text and len(CXRImageStore(store)) == 6


def test_unreadable_images_are_named_or_counted_and_bad_input_refused(tmp_path, caplog):
    images = _pngs(tmp_path / "images", 6)
    bad = sorted(images.glob("*.png"))[2]
    bad.write_bytes(b"not a png")
    with pytest.raises(CXRReadError, match=bad.name):
        build_store(entries(images), preprocessing(), tmp_path / "strict", num_workers=0, progress=False)
    with caplog.at_level(logging.WARNING, logger="monai_cxrssl.data.store"):
        ds = CXRStoreDataset(entries(images), preprocessing(), tmp_path / "lenient", skip_unreadable=True,
                             num_workers=2, progress=False)
    assert len(ds) == 5 and "skipped 1 unreadable image(s) of 6" in caplog.text and bad.name in caplog.text
    assert str(bad) not in [e["image"] for e in ds.data]
    assert item_groups(ds) == [e["patient_id"] for e in entries(images) if e["image"] != str(bad)]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_cxrssl.data.store"):  # the next build remembers it
        CXRStoreDataset(entries(images), preprocessing(), tmp_path / "lenient", skip_unreadable=True, progress=False)
    assert "found by an earlier build" in caplog.text

    with pytest.raises(DatalistError, match="empty"):
        build_store([], preprocessing(), tmp_path / "empty")
    with pytest.raises(ValueError, match="dtype"):
        build_store(entries(images), preprocessing(), tmp_path / "x", dtype="float16")
    with pytest.raises(DatalistError, match="not an image store"):
        CXRImageStore(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    store = build_store(entries(images)[3:], preprocessing(), tmp_path / "half", num_workers=0, progress=False)
    status = _status(store)
    status[0] = 0
    status.tofile(store / "status.bin")
    with pytest.raises(DatalistError, match="incomplete"):
        CXRImageStore(store)


def test_dataloader_workers_read_the_store_through_their_own_file(tmp_path):
    images = _pngs(tmp_path / "images", 16)
    ds = CXRStoreDataset(entries(images), preprocessing(), tmp_path / "store", num_workers=0, progress=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    batches = list(loader)
    assert torch.equal(torch.cat([b["image"] for b in batches]), torch.stack([ds[i]["image"] for i in range(16)]))
    assert [p for b in batches for p in b["patient_id"]] == [e["patient_id"] for e in entries(images)]


@pytest.mark.slow
def test_micle_trains_from_the_store_with_its_patients(tmp_path):
    # (README's "Large datasets" commands build a store and train SimCLR from it in test_docs.py; this is MICLe's
    # overlay, which must keep the patient ids the sampler pairs images by)
    from runner import run_bundle

    from monai_cxrssl.checkpoints import read_checkpoint
    from monai_cxrssl.paths import REPO_ROOT

    configs = REPO_ROOT / "bundles" / "micle_cxr" / "configs"
    out = tmp_path / "run"
    proc = run_bundle(f"['{configs / 'train.json'}','{configs / 'image_store.json'}']", out, "--epochs", "1",
                      "--image_size", "32", "--batch_size", "8", "--backbone", "resnet10", "--progress", "false",
                      "--cache_workers", "2", "--store_dir", tmp_path / "store")
    meta = json.loads((tmp_path / "store" / "store.json").read_text())
    assert meta["shape"] == [1, 32, 32] and meta["keep_keys"] == ["patient_id"] and meta["dtype"] == "uint8"
    assert "of images have another image of their patient" in proc.stdout + proc.stderr
    assert read_checkpoint(out / "checkpoint.pt")["epoch"] == 1


def test_two_ranks_read_disjoint_shards_that_cover_the_store(tmp_path):
    from torch.utils.data import DistributedSampler

    images = _pngs(tmp_path / "images", 24)
    ds = CXRStoreDataset(entries(images), preprocessing(), tmp_path / "store", num_workers=0, progress=False)
    shards, indices = [], []
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(3)
        indices.append(list(sampler))
        loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler)
        shards.append([p for b in loader for p in b["patient_id"]])
    assert set(indices[0]).isdisjoint(indices[1]) and sorted(indices[0] + indices[1]) == list(range(24))
    # what each rank read is its shard's images: together every image once
    assert shards == [[ds.store.items[i]["patient_id"] for i in shard] for shard in indices]
    assert sorted(shards[0] + shards[1]) == sorted(e["patient_id"] for e in entries(images))


def _mtimes(store: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in sorted(store.iterdir())}


@pytest.mark.slow
def test_each_node_checks_the_store_it_sees_on_shared_storage_or_builds_its_own(tmp_path):
    """2 nodes over loopback (torchrun's c10d rendezvous): with one store on shared storage, nobody writes to an
    up-to-date store; with a folder per node (node-local disks), each node's first process builds its copy."""
    from runner import torchrun_nodes

    images = _pngs(tmp_path / "images", 12)
    shared = build_store(entries(images), preprocessing(), tmp_path / "shared", num_workers=0, progress=False)
    before = _mtimes(shared)
    torchrun_nodes(2, 1, HERE / "store_nodes.py", images, tmp_path / "read", cwd=HERE, timeout=300,
                   node_env=[{"NODE_STORE_DIRS": f"{shared}:{tmp_path / f'node{n}'}", "PYTHONPATH": str(HERE)}
                             for n in (0, 1)])
    digests = set()
    for case, dirs in (("0", [shared, shared]), ("1", [tmp_path / "node0", tmp_path / "node1"])):
        ranks = [json.loads((tmp_path / "read" / case / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert {r["store_dir"] for r in ranks} == {str(d) for d in dirs}  # each node read its own folder
        assert [r["n"] for r in ranks] == [12, 12]
        digests |= {r["digest"] for r in ranks}
    assert len(digests) == 1  # the same images, whichever store a process read
    assert _mtimes(shared) == before  # checked by both nodes, written by neither
