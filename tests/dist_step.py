"""One training step of each SSL method on a fixed global batch: run under ``torchrun`` by the
``two_process_steps`` fixture (``conftest.py``), and in the test's own process for the comparison.

Every process builds the same method (same seed), takes its slice of the same global batch of
views, and takes one optimiser step through ``DistributedDataParallel`` when there are several
processes. Rank 0 writes the global loss (mean over processes), the trained parameters after the
step, the momentum copies after their EMA update (key encoder, teacher, target) and every buffer
(MoCo's queue, DINO's centre). One process with batch 2B and two processes with batch B must agree.
Normalisation layers without batch statistics (instance norm, BatchNorm removed from the heads;
LayerNorm in the tiny ViT) make the two runs comparable.

A method is named as ``monai_cxrssl.methods.available()`` names it, on a small instance-norm ResNet-10, or
as ``NAME:vit`` on a tiny ViT (for the methods whose bundle trains a ViT by default)::

    torchrun --standalone --nproc_per_node 2 tests/dist_step.py simclr,moco,dino,dino:vit 8 OUT_DIR
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
from small_methods import step_values
from small_methods import small


def _no_batchnorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            _no_batchnorm(child)


def build(spec: str, key_splits: int):
    name, _, arch = spec.partition(":")
    torch.manual_seed(0)
    if arch == "vit":
        backbone = build_backbone("vit", embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32)
    else:
        backbone = build_backbone("resnet10", widen_factor=0.25, norm=("instance", {"affine": True}))
    m = small(name, backbone, key_splits=key_splits)
    _no_batchnorm(m)
    return m


def _views(m, global_batch: int) -> list[torch.Tensor]:
    """Two views at 32 px, any further ones (DINO's local crops) at 16 px."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(global_batch, 1, 40, 40, generator=g)
    sizes = [32, 32] + [16] * (m.num_views - 2)
    return [CXRViewAugment(out_size=size)(x, np.random.RandomState(s), torch.Generator().manual_seed(s))
            for s, size in enumerate(sizes, start=2)]


def run_step(spec: str, global_batch: int, key_splits: int = 1) -> dict:
    """One step of method ``spec`` on this process's slice of the global batch (the whole of it without a group)."""
    rank, world = D.get_rank(), D.get_world_size()
    m = build(spec, key_splits)
    local = global_batch // world
    views = [v[rank * local:(rank + 1) * local] for v in _views(m, global_batch)]

    forward = nn.parallel.DistributedDataParallel(m) if D.is_distributed() else m
    opt = torch.optim.SGD(m.param_groups(0.0), lr=0.5)
    m.before_step(1, step_values(m, 1, 10))
    loss = forward(views)["loss"]
    opt.zero_grad()
    loss.backward()
    opt.step()
    m.after_step()
    total = loss.detach().clone()
    if D.is_distributed():
        dist.all_reduce(total)
        total /= world
    targets = [p.detach().flatten() for _, target in m.momentum_pairs for p in target.parameters()]
    return {"loss": total.item(),
            "params": torch.cat([p.detach().flatten() for p in m.parameters() if p.requires_grad]),
            "targets": torch.cat(targets) if targets else torch.zeros(0),
            "buffers": {name: b.detach().clone() for name, b in m.named_buffers()}}


def main(specs: list[str], global_batch: int, out_dir: str) -> None:
    D.init_process_group()
    for spec in specs:
        state = run_step(spec, global_batch)
        if D.get_rank() == 0:
            torch.save(state, Path(out_dir) / f"{spec.replace(':', '_')}.pt")
    D.destroy_process_group()
    # Leave without running destructors, before main's locals (the DDP reducer, the last reference to the Gloo
    # group) are freed: a Gloo destructor run with the GIL held can wait forever for a worker thread that needs
    # the GIL to free a finished all-reduce (seen under heavy load with torch 2.13).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3])
