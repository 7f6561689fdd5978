"""MICLe's data: multi-instance batch sampler, pairs dataset, loader; the MICLe method and its resume."""

from collections import Counter

import numpy as np
import pytest
import torch

from monai.data import Dataset
from monai.utils import set_determinism

from monai_cxrssl.data import MultiInstanceBatchSampler, pair_views, MultiInstancePairs, group_ids
from monai_cxrssl.data import multi_instance_dataloader
from monai_cxrssl.exceptions import DatalistError


def _groups():
    # 10 patients: p0 has 6 images, p1-p3 have 3, the rest one each
    sizes = [6, 3, 3, 3, 1, 1, 1, 1, 1, 1]
    return [f"p{k}" for k, n in enumerate(sizes) for _ in range(n)]


def test_no_patient_twice_in_a_global_batch_and_partners_are_the_same_patient():
    groups = _groups()
    ranks = [MultiInstanceBatchSampler(groups, batch_size=2, seed=0, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(3)
    per_rank = [list(s) for s in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[0]) == len(groups) // 4
    anchors = Counter()
    for b0, b1 in zip(*per_rank):
        batch = b0 + b1  # the global batch: negatives are gathered across processes
        assert len(batch) == 4 and len({groups[i] for i, _ in batch}) == 4
        for i, j in batch:
            anchors[i] += 1
            assert groups[i] == groups[j]
            assert (i == j) == (groups.count(groups[i]) == 1)  # a different image whenever there is one
    assert sum(anchors.values()) == 4 * len(ranks[0]) and max(anchors.values()) <= 2


def test_order_depends_on_seed_and_epoch_only():
    groups = _groups()

    def batches(seed, epoch):
        s = MultiInstanceBatchSampler(groups, batch_size=4, seed=seed, rank=0, world_size=1)
        s.set_epoch(epoch)
        return list(s)

    assert batches(0, 1) == batches(0, 1)
    assert batches(0, 1) != batches(0, 2) and batches(0, 1) != batches(1, 1)


def test_partners_cover_the_other_images_of_a_patient():
    groups = ["a"] * 4 + [f"s{k}" for k in range(8)]
    seen = set()
    for epoch in range(30):
        s = MultiInstanceBatchSampler(groups, batch_size=4, seed=0, rank=0, world_size=1)
        s.set_epoch(epoch)
        seen |= {(i, j) for b in s for i, j in b if groups[i] == "a"}
    assert {(i, j) for i in range(4) for j in range(4) if i != j} <= seen


def test_up_front_errors():
    with pytest.raises(DatalistError, match="different patients"):
        MultiInstanceBatchSampler(["a"] * 10 + ["b"] * 10, batch_size=4, rank=0, world_size=1)
    with pytest.raises(DatalistError, match="fewer than one batch"):
        MultiInstanceBatchSampler(["a", "b"], batch_size=4, rank=0, world_size=1)
    with pytest.raises(DatalistError, match="patient_id"):
        group_ids([{"image": "x.png"}, {"image": "y.png"}])
    assert group_ids([{"image": "x", "patient_id": "p"}, {"image": "y"}])[1].startswith("__single")


def test_pairs_dataset_and_loader():
    items = [{"image": torch.full((1, 4, 4), float(i)), "patient_id": g} for i, g in enumerate(_groups())]
    ds = Dataset(items)
    pair = MultiInstancePairs(ds)[(0, 3)]
    assert float(pair["image"].max()) == 0 and float(pair["image_pair"].max()) == 3 and float(pair["multi_instance"]) == 1
    loader = multi_instance_dataloader(ds, batch_size=4, seed=0)
    batch = next(iter(loader))
    assert batch["image"].shape == batch["image_pair"].shape == (4, 1, 4, 4)
    groups = _groups()
    for a, b, m in zip(batch["image"][:, 0, 0, 0], batch["image_pair"][:, 0, 0, 0], batch["multi_instance"]):
        assert groups[int(a)] == groups[int(b)] and bool(m) == (int(a) != int(b))


def test_real_kermany_patients_make_multi_instance_pairs(kermany_dir):
    from monai_cxrssl.data import datalist_from_class_folders

    entries = datalist_from_class_folders(kermany_dir)["training"]
    groups = group_ids(entries)
    s = MultiInstanceBatchSampler(groups, batch_size=64, seed=0, rank=0, world_size=1)
    s.set_epoch(1)
    batches = list(s)
    share = np.mean([i != j for b in batches for i, j in b])
    assert 0.2 < share < 1.0 and abs(share - s.multi_instance_share) < 0.05
    assert all(len({groups[i] for i, _ in b}) == 64 for b in batches)


def _micle_run(out_dir, epochs, resume=False):
    from monai.handlers import LrScheduleHandler

    from monai_cxrssl.engines import SSLCheckpoint, SSLTrainer, warmup_cosine
    from monai_cxrssl.methods import MICLe
    from monai_cxrssl.networks import build_backbone

    set_determinism(seed=0)
    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.rand(1, 32, 32, generator=g), "patient_id": p} for p in _groups()]
    method = MICLe(build_backbone("resnet10", widen_factor=0.25), hidden_dim=32, out_dim=16, temperature=0.2)
    opt = torch.optim.AdamW(method.parameters(), lr=1e-3)
    loader = multi_instance_dataloader(Dataset(items), batch_size=4, seed=0)
    sched = warmup_cosine(opt, total_steps=3 * len(loader), warmup_steps=1)
    handlers = [LrScheduleHandler(sched, epoch_level=False, print_lr=False),
                SSLCheckpoint(out_dir, method, opt, sched, resume=resume)]
    trainer = SSLTrainer("cpu", epochs, loader, method, opt, pair_views(32), handlers=handlers,
                         batch_scalars=["multi_instance"], precision="auto")
    trainer.run()
    return trainer, method


def test_micle_trains_logs_the_multi_instance_share_and_resumes_exactly(tmp_path):
    straight, m1 = _micle_run(tmp_path / "a", 3)
    assert 0.0 <= float(straight.state.output["multi_instance"]) <= 1.0 
    assert [v.source for v in straight.views.views] == ["image", "image_pair"]  # the recipe, not the method
    _micle_run(tmp_path / "b", 1)
    _, m2 = _micle_run(tmp_path / "b", 3, resume=True)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k


def test_groups_come_from_the_cached_items_and_travel_with_the_batch(tmp_path):
    # an unreadable file is skipped: the groups, read from the cached items, stay aligned with the images
    from PIL import Image

    from monai.transforms import Compose, SelectItemsd

    from monai_cxrssl.data import CXRCacheDataset, LoadCXRd, item_groups

    entries = []
    for i, g in enumerate(_groups()):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((8, 8), 10 * i, dtype=np.uint8)).save(path)
        entries.append({"image": str(path), "patient_id": g, "label": 0})
    (tmp_path / "0.png").write_bytes(b"not a png")
    ds = CXRCacheDataset(entries, Compose([LoadCXRd("image"), SelectItemsd(["image", "patient_id"])]),
                         skip_unreadable=True)
    assert len(ds) == len(entries) - 1
    assert item_groups(ds) == _groups()[1:] and ds.item_values("label") == [None] * len(ds)
    loader = multi_instance_dataloader(ds, batch_size=4, seed=0)
    batch = next(iter(loader))
    assert list(batch) == ["image", "image_pair", "multi_instance", "patient_id"]
    for image, pid in zip(batch["image"], batch["patient_id"]):
        index = round(float(image.max()) * 255 / 10)  # the file's number, from its grey level
        assert pid == _groups()[index]
