"""The pretraining loader (data/loaders.py)."""

import torch

from monai_cxrssl.data import ssl_dataloader


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
