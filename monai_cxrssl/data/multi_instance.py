"""Multi-instance pairs for MICLe (Azizi et al. 2021): two different images of one patient.

MICLe's positive pair is two different radiographs of the same patient (or study), each
augmented; a patient with a single image contributes two augmentations of that image, as in
SimCLR. Two parts build such batches from any cached dataset whose datalist entries carry a
group key (``patient_id`` by default: Kermany file names, the NIH ``labels.csv``, DICOM headers):

- :class:`MultiInstanceBatchSampler` yields batches of ``(anchor, partner)`` index pairs. No two
  anchors of one batch share a patient (they would be each other's negatives while being the
  same person), across all processes of a multi-process run, since the contrastive loss
  gathers negatives from every process. The order depends only on ``(seed, epoch)``.
- :class:`MultiInstancePairs` turns a pair of indices into ``{"image", "image_pair",
  "multi_instance", "patient_id"}``; ``multi_instance`` is 1 for a true two-image pair, and the trainer logs
  its batch mean (the share of true multi-instance pairs); the anchor's group (patient) travels with the batch.

The groups are read from the dataset's own items (the pretraining bundles' preprocessing keeps the group key,
``keep_keys``), so they stay aligned with the images whatever the dataset dropped (unreadable files).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from monai_cxrssl.distributed import get_rank, get_world_size
from monai_cxrssl.exceptions import DatalistError

__all__ = ["group_ids", "item_groups", "MultiInstanceBatchSampler", "MultiInstancePairs", "multi_instance_dataloader"]

logger = logging.getLogger(__name__)


def group_ids(entries: Sequence[dict], group_key: str = "patient_id") -> list[str]:
    """The group (patient) of each datalist entry.

    Entries with an empty group are their own group (logged); a key missing from every entry is
    an error, since MICLe would silently degrade to SimCLR.

    Raises:
        DatalistError: no entry has ``group_key``.
    """
    if not entries:
        raise DatalistError("the training datalist is empty")
    if not any(e.get(group_key) not in (None, "") for e in entries):
        raise DatalistError(f"no datalist entry has a '{group_key}' value (first entry: {dict(entries[0])}); MICLe "
                            f"pairs images of one patient: add '{group_key}' to the entries or set group_key")
    out, missing = [], 0
    for i, e in enumerate(entries):
        g = e.get(group_key)
        if g in (None, ""):
            missing += 1
            g = f"__single_{i}"
        out.append(str(g))
    if missing:
        logger.warning("%d of %d entries have no '%s': each is its own group (two views of one image)", missing,
                       len(entries), group_key)
    return out


def item_groups(dataset, group_key: str = "patient_id") -> list[str]:
    """The group of each item of ``dataset`` (see :func:`group_ids`), read from the items themselves: a
    :class:`~monai_cxrssl.data.CXRCacheDataset`'s cached items (:meth:`~monai_cxrssl.data.CXRCacheDataset.item_values`,
    no copy), else ``dataset[i]``."""
    if hasattr(dataset, "item_values"):
        values = dataset.item_values(group_key)
    else:
        values = [dataset[i].get(group_key) for i in range(len(dataset))]
    return group_ids([{group_key: v} for v in values], group_key)


class MultiInstanceBatchSampler:
    """Batches of ``(anchor, partner)`` index pairs with at most one anchor per group per global batch.

    Each epoch visits every image once as an anchor (up to the last incomplete global batch),
    in an order drawn from ``(seed, epoch)``. Anchors are packed greedily into global batches of
    ``batch_size * world_size`` with distinct groups; an anchor whose group is already in the
    batch waits for the next one. When the remaining anchors cannot fill a batch with distinct
    groups, it is completed with other images of groups not yet in it, so that every epoch has
    the same number of batches. The partner is another image of the anchor's group, drawn
    uniformly, or the anchor itself for a single-image group. Each process takes its slice.

    Args:
        groups: the group of each dataset index (see :func:`group_ids`).
        batch_size: anchors per process and batch.
        seed: seed of the order and the partners.
        rank, world_size: this process and their number (default: from ``torch.distributed``).
    """

    def __init__(self, groups: Sequence[str], batch_size: int, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None):
        self.groups = list(groups)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = get_rank() if rank is None else int(rank)
        self.world_size = get_world_size() if world_size is None else int(world_size)
        self.epoch = 0
        global_batch = self.batch_size * self.world_size
        n_groups = len(set(self.groups))
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(self.groups) < global_batch:
            raise DatalistError(f"the training dataset has {len(self.groups)} images, fewer than one batch "
                                f"({self.batch_size} x {self.world_size} process(es)); lower batch_size")
        if n_groups < global_batch:
            raise DatalistError(f"a batch of {global_batch} images needs as many different patients; the dataset "
                                f"has {n_groups}: lower batch_size")
        self._members: dict[str, list[int]] = {}
        for i, g in enumerate(self.groups):
            self._members.setdefault(g, []).append(i)
        self.multi_instance_share = float(np.mean([len(self._members[g]) > 1 for g in self.groups]))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.groups) // (self.batch_size * self.world_size)

    def global_batches(self) -> list[list[tuple[int, int]]]:
        """Every process's batches of this epoch, as global batches of ``(anchor, partner)``."""
        rng = np.random.RandomState(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        size = self.batch_size * self.world_size
        pending = [int(i) for i in rng.permutation(len(self.groups))]
        batches = []
        for _ in range(len(self)):
            batch, seen, rest = [], set(), []
            for pos, i in enumerate(pending):
                if len(batch) == size:
                    rest.extend(pending[pos:])
                    break
                if self.groups[i] in seen:
                    rest.append(i)
                else:
                    batch.append(i)
                    seen.add(self.groups[i])
            pending = rest
            while len(batch) < size:  # too few distinct groups left: complete with already seen images
                i = int(rng.randint(len(self.groups)))
                if self.groups[i] not in seen:
                    batch.append(i)
                    seen.add(self.groups[i])
            batches.append([(i, self._partner(i, rng)) for i in batch])
        return batches

    def _partner(self, i: int, rng: np.random.RandomState) -> int:
        members = self._members[self.groups[i]]
        if len(members) == 1:
            return i
        j = members[int(rng.randint(len(members) - 1))]
        return j if j != i else members[-1]

    def __iter__(self):
        for batch in self.global_batches():
            yield batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]


class MultiInstancePairs(Dataset):
    """A dataset indexed by ``(anchor, partner)``: both images, whether they differ, and the anchor's group.

    Args:
        dataset: yields dictionaries with ``image_key`` (e.g. a :class:`CXRCacheDataset`).
        image_key, pair_key: keys of the anchor's and the partner's images in the output.
        groups: the group of each item (default: :func:`item_groups` of ``dataset``), written under ``group_key``.
        group_key: the items' group key (``patient_id``).
    """

    def __init__(self, dataset, image_key: str = "image", pair_key: str = "image_pair",
                 groups: Sequence[str] | None = None, group_key: str = "patient_id"):
        self.dataset = dataset
        self.image_key, self.pair_key, self.group_key = image_key, pair_key, group_key
        self.groups = list(groups) if groups is not None else item_groups(dataset, group_key)
        if len(self.groups) != len(dataset):
            raise ValueError(f"{len(self.groups)} groups for {len(dataset)} items")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index) -> dict:
        i, j = index
        return {self.image_key: self.dataset[i][self.image_key], self.pair_key: self.dataset[j][self.image_key],
                "multi_instance": torch.tensor(float(i != j)), self.group_key: self.groups[i]}


def multi_instance_dataloader(dataset, batch_size: int, seed: int = 0, group_key: str = "patient_id",
                              num_workers: int = 0, image_key: str = "image") -> DataLoader:
    """The MICLe training loader over a dataset whose items carry ``group_key`` (:func:`item_groups`).

    Batches hold ``image``, its partner ``image_pair``, ``multi_instance`` and the anchors' ``group_key``. The trainer
    sets the sampler's epoch at each epoch.
    """
    groups = item_groups(dataset, group_key)
    sampler = MultiInstanceBatchSampler(groups, batch_size, seed=seed)
    sizes = Counter(Counter(groups).values())
    logger.info("MICLe: %d images of %d patients (%s); %.1f%% of images have another image of their patient",
                len(groups), len(set(groups)), ", ".join(f"{n} with {k} image(s)" for k, n in sorted(sizes.items())[:4]),
                100 * sampler.multi_instance_share)
    return DataLoader(MultiInstancePairs(dataset, image_key=image_key, groups=groups, group_key=group_key),
                      batch_sampler=sampler,
                      num_workers=num_workers, pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0)
