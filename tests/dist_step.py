"""One training step of an SSL method on a fixed global batch, run under ``torchrun`` by test_distributed.py.

Every process builds the same method (same seed), takes its slice of the same global batch of
views, and takes one optimiser step through ``DistributedDataParallel`` when there are several
processes. Rank 0 writes the global loss (mean over processes), the parameters after the step
and, for MoCo, the queue. Run with 1 process and batch 2B, then with 2 processes and batch B:
the results must agree. Normalisation layers without batch statistics (instance norm, no
BatchNorm in the heads) make the two runs comparable.
"""

import os
import sys

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from monai_cxrssl import distributed as D
from monai_cxrssl.data.views import CXRViewAugment
from monai_cxrssl.networks import build_backbone


def _no_batchnorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            _no_batchnorm(child)


def build(method: str, key_splits: int):
    from monai_cxrssl import methods

    torch.manual_seed(0)
    backbone = build_backbone("resnet10", widen_factor=0.25, norm=("instance", {"affine": True}))
    if method == "moco":
        m = methods.MoCo(backbone, hidden_dim=32, out_dim=16, queue_size=24, temperature=0.2, key_splits=key_splits)
    else:
        m = getattr(methods, {"simclr": "SimCLR", "micle": "MICLe"}[method])(backbone, hidden_dim=32, out_dim=16,
                                                                              temperature=0.2)
    _no_batchnorm(m)
    return m


def main(method: str, global_batch: int, out_path: str, key_splits: int) -> None:
    D.init_process_group()
    rank, world = D.get_rank(), D.get_world_size()
    m = build(method, key_splits)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(global_batch, 1, 40, 40, generator=g)
    aug = CXRViewAugment(out_size=32)
    views = [aug(x, np.random.RandomState(s), torch.Generator().manual_seed(s)) for s in (2, 3)]
    local = global_batch // world
    views = [v[rank * local:(rank + 1) * local] for v in views]

    forward = nn.parallel.DistributedDataParallel(m) if D.is_distributed() else m
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    m.before_step(1, 10)
    loss = forward(views)["loss"]
    opt.zero_grad()
    loss.backward()
    opt.step()
    m.after_step(1, 10)
    total = loss.detach().clone()
    if D.is_distributed():
        dist.all_reduce(total)
        total /= world
    if rank == 0:
        state = {"loss": total.item(),
                 "params": torch.cat([p.detach().flatten() for p in m.parameters() if p.requires_grad])}
        if hasattr(m, "queue"):
            state["queue"] = m.queue.detach().clone()
            state["queue_ptr"] = int(m.queue_ptr)
        torch.save(state, out_path)
    D.destroy_process_group()
    # Leave without running destructors, before main's locals (the DDP reducer, the last reference to the Gloo
    # group) are freed: a Gloo destructor run with the GIL held can wait forever for a worker thread that needs
    # the GIL to free a finished all-reduce (seen under heavy load with torch 2.13).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 1)
