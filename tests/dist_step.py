"""One training step of each SSL method on a fixed global batch: run under ``torchrun`` by the
``two_process_steps`` fixture (``conftest.py``), and in the test's own process for the comparison.

Every process builds the same method (same seed), takes its slice of the same global batch of
views, and takes one optimiser step through ``DistributedDataParallel`` when there are several
processes. Rank 0 writes the global loss (mean over processes), the parameters after the step
and, for MoCo, the queue; for DINO the student, the teacher after its EMA update and the loss's
centre. One process with batch 2B and two processes with batch B must agree. Normalisation layers
without batch statistics (instance norm, no BatchNorm in the heads; LayerNorm in DINO's tiny ViT)
make the two runs comparable.

    torchrun --standalone --nproc_per_node 2 tests/dist_step.py simclr,micle,moco,dino 8 OUT_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from monai_cxrssl import distributed as D
from monai_cxrssl.data.views import CXRViewAugment
from monai_cxrssl.networks import build_backbone

METHODS = ("simclr", "micle", "moco", "dino")


def _no_batchnorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            _no_batchnorm(child)


def build(method: str, key_splits: int):
    from monai_cxrssl import methods

    torch.manual_seed(0)
    if method == "dino":
        backbone = build_backbone("vit", embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32)
        return methods.DINO(backbone, n_local_crops=2, out_dim=16, hidden_dim=32, bottleneck_dim=8)
    backbone = build_backbone("resnet10", widen_factor=0.25, norm=("instance", {"affine": True}))
    if method == "moco":
        m = methods.MoCo(backbone, hidden_dim=32, out_dim=16, queue_size=24, temperature=0.2, key_splits=key_splits)
    else:
        m = getattr(methods, {"simclr": "SimCLR", "micle": "MICLe"}[method])(backbone, hidden_dim=32, out_dim=16,
                                                                              temperature=0.2)
    _no_batchnorm(m)
    return m


def _views(method: str, global_batch: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if method == "dino":  # 2 global + 2 local views
        return [torch.randn(global_batch, 1, 32, 32, generator=g) for _ in range(2)] + \
            [torch.randn(global_batch, 1, 16, 16, generator=g) for _ in range(2)]
    x = torch.rand(global_batch, 1, 40, 40, generator=g)
    aug = CXRViewAugment(out_size=32)
    return [aug(x, np.random.RandomState(s), torch.Generator().manual_seed(s)) for s in (2, 3)]


def run_step(method: str, global_batch: int, key_splits: int = 1) -> dict:
    """One step of ``method`` on this process's slice of the global batch (the whole of it without a group)."""
    rank, world = D.get_rank(), D.get_world_size()
    m = build(method, key_splits)
    local = global_batch // world
    views = [v[rank * local:(rank + 1) * local] for v in _views(method, global_batch)]

    forward = nn.parallel.DistributedDataParallel(m) if D.is_distributed() else m
    opt = torch.optim.SGD(m.param_groups(0.0) if method == "dino" else m.parameters(), lr=0.5)
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
    state = {"loss": total.item()}
    if method == "dino":
        state.update(center=m.criterion.center.detach().clone(),
                     student=torch.cat([p.detach().flatten() for p in [*m.backbone.parameters(), *m.head.parameters()]]),
                     teacher=torch.cat([p.detach().flatten() for p in [*m.teacher_backbone.parameters(),
                                                                       *m.teacher_head.parameters()]]))
    else:
        state["params"] = torch.cat([p.detach().flatten() for p in m.parameters() if p.requires_grad])
    if hasattr(m, "queue"):
        state["queue"] = m.queue.detach().clone()
        state["queue_ptr"] = int(m.queue_ptr)
    return state


def main(methods: list[str], global_batch: int, out_dir: str) -> None:
    D.init_process_group()
    for method in methods:
        state = run_step(method, global_batch)
        if D.get_rank() == 0:
            torch.save(state, Path(out_dir) / f"{method}.pt")
    D.destroy_process_group()
    # Leave without running destructors, before main's locals (the DDP reducer, the last reference to the Gloo
    # group) are freed: a Gloo destructor run with the GIL held can wait forever for a worker thread that needs
    # the GIL to free a finished all-reduce (seen under heavy load with torch 2.13).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3])
