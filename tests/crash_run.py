"""A tiny MoCo pretraining run that can kill itself with SIGKILL at a chosen moment, for test_crash_safety.py.

    python tests/crash_run.py OUT EPOCHS RESUME [KILL]

KILL: ``iteration:N`` (SIGKILL after iteration N) or ``write:N`` (SIGKILL in the middle of the N-th
checkpoint write, after part of the temporary file is on disk). fp32 on the CPU, one thread: a resumed
run must end with exactly the weights, queue and optimiser state of an uninterrupted one.
"""

import os
import signal
import sys

import torch

from ignite.engine import Events
from monai.data import Dataset
from monai.handlers import LrScheduleHandler
from monai.utils import set_determinism

import monai_cxrssl.utils as utils
from monai_cxrssl.data.loaders import ssl_dataloader
from monai_cxrssl.data.views import CXRViewAugment
from monai_cxrssl.engines import SSLCheckpoint, SSLTrainer, warmup_cosine
from monai_cxrssl.methods import MoCo
from monai_cxrssl.networks import build_backbone


def main(out: str, epochs: int, resume: bool, kill: str | None) -> None:
    torch.set_num_threads(1)
    set_determinism(seed=0)
    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.rand(1, 32, 32, generator=g)} for _ in range(12)]
    method = MoCo(build_backbone("resnet10", widen_factor=0.25), hidden_dim=32, out_dim=16, queue_size=16)
    opt = torch.optim.AdamW(method.param_groups(1e-5), lr=1e-3)  # as the bundles build it
    loader = ssl_dataloader(Dataset(items), batch_size=4, seed=0)
    sched = warmup_cosine(opt, total_steps=epochs * len(loader), warmup_steps=1)
    handlers = [LrScheduleHandler(sched, epoch_level=False, print_lr=False),
                SSLCheckpoint(out, method, opt, sched, resume=resume, metadata={"image_size": 32})]
    trainer = SSLTrainer("cpu", epochs, loader, method, opt, CXRViewAugment(out_size=32), seed=0, precision="fp32",
                         handlers=handlers)
    what, _, n = (kill or "").partition(":")
    if what == "iteration":
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=int(n)), lambda e: os.kill(os.getpid(), signal.SIGKILL))
    elif what == "write":
        real_fsync, count = os.fsync, [0]

        def dying_fsync(fd):  # the temporary file is written (not yet renamed): die here
            count[0] += 1
            if count[0] == int(n):
                os.kill(os.getpid(), signal.SIGKILL)
            real_fsync(fd)

        utils.os.fsync = dying_fsync
    trainer.run()
    torch.save({"state": method.state_dict(), "optimizer": opt.state_dict()}, os.path.join(out, "final.pt"))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "true", sys.argv[4] if len(sys.argv) > 4 else None)
