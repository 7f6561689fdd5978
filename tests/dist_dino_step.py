"""One DINO training step on a fixed global batch, run under ``torchrun`` by test_dino.py (and in-process).

Every process builds the same DINO (tiny ViT: LayerNorm only, so that the batch split does not
change the maths), takes its slice of the same global batch of 2 global + 2 local views, and takes
one SGD step through ``DistributedDataParallel``. With 2 processes of batch B the loss (averaged
over processes), the student after the step, the teacher after the EMA update and the loss's
centre (all-reduced across processes) must equal one process with batch 2B.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from monai_cxrssl import distributed as D
from monai_cxrssl.methods import DINO
from monai_cxrssl.networks import build_backbone


def run_step(global_batch: int) -> dict:
    rank, world = D.get_rank(), D.get_world_size()
    torch.manual_seed(0)
    backbone = build_backbone("vit", embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32)
    method = DINO(backbone, n_local_crops=2, out_dim=16, hidden_dim=32, bottleneck_dim=8)
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(global_batch, 1, 32, 32, generator=g) for _ in range(2)] + \
        [torch.randn(global_batch, 1, 16, 16, generator=g) for _ in range(2)]
    local = global_batch // world
    views = [v[rank * local:(rank + 1) * local] for v in views]

    forward = nn.parallel.DistributedDataParallel(method) if D.is_distributed() else method
    opt = torch.optim.SGD(method.param_groups(0.0), lr=0.5)
    method.before_step(1, 10)
    loss = forward(views)["loss"]
    opt.zero_grad()
    loss.backward()
    opt.step()
    method.after_step(1, 10)
    total = loss.detach().clone()
    if D.is_distributed():
        dist.all_reduce(total)
        total /= world
    return {"loss": total.item(), "center": method.criterion.center.detach().clone(),
            "student": torch.cat([p.detach().flatten() for p in [*method.backbone.parameters(),
                                                                   *method.head.parameters()]]),
            "teacher": torch.cat([p.detach().flatten() for p in [*method.teacher_backbone.parameters(),
                                                                   *method.teacher_head.parameters()]])}


def main(global_batch: int, out_path: str) -> None:
    D.init_process_group()
    result = run_step(global_batch)
    if D.get_rank() == 0:
        torch.save(result, out_path)
    D.destroy_process_group()
    # Leave without running destructors, before main's locals (the DDP reducer, the last reference to the Gloo
    # group) are freed: a Gloo destructor run with the GIL held can wait forever for a worker thread that needs
    # the GIL to free a finished all-reduce (seen under heavy load with torch 2.13).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
