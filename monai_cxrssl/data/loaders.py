"""The pretraining DataLoader: shuffled by ``(seed, epoch)`` alone, sharded across processes."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from monai_cxrssl.distributed import get_rank, get_world_size
from monai_cxrssl.exceptions import DatalistError

__all__ = ["ssl_dataloader"]


def ssl_dataloader(dataset, batch_size: int, seed: int = 0, num_workers: int = 0, drop_last: bool = True,
                   **kwargs) -> DataLoader:
    """Shuffling DataLoader whose order depends only on ``(seed, epoch)``, and sharded across processes.

    It uses a ``DistributedSampler`` in every case (one replica in a single process); MONAI's
    engines call its ``set_epoch`` at each epoch, so a resumed run reproduces the order.
    """
    if len(dataset) == 0:
        raise DatalistError("the training dataset is empty")
    world = get_world_size()
    if len(dataset) < batch_size * world and drop_last:
        raise DatalistError(f"the training dataset has {len(dataset)} images, fewer than one batch "
                            f"({batch_size} x {world} process(es)); lower batch_size")
    sampler = DistributedSampler(dataset, num_replicas=world, rank=get_rank(), shuffle=True, seed=seed,
                                 drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, pin_memory=torch.cuda.is_available(),
                      persistent_workers=num_workers > 0, **kwargs)
