"""A short SSL run that can be interrupted and resumed, and the check that a resumed run ended where an
uninterrupted one did: what the methods' exact-resume tests share."""

from __future__ import annotations

import torch
from ignite.engine import Events
from monai.data import Dataset
from monai.handlers import LrScheduleHandler
from monai.utils import set_determinism

from monai_cxrssl.data.loaders import ssl_dataloader
from monai_cxrssl.engines import SSLCheckpoint, SSLTrainer, warmup_cosine


def random_images(n: int, size: int = 32) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(1, size, size, generator=g)} for _ in range(n)]


def run_small(make_method, out_dir, views, *, images: int = 12, epochs: int = 3, batch_size: int = 4,
              weight_decay: float = 1e-5, resume: bool = False, stop_after_epoch: int | None = None,
              precision: str = "auto"):
    """``epochs`` of ``images / batch_size`` iterations of the method ``make_method()`` builds (after
    ``set_determinism(0)``), with the bundles' schedule and checkpoint handlers; ``stop_after_epoch`` interrupts
    the run there, as a crash would (its schedules still planned over ``epochs``). Returns (trainer, method)."""
    set_determinism(seed=0)
    method = make_method()
    opt = torch.optim.AdamW(method.param_groups(weight_decay), lr=1e-3)
    loader = ssl_dataloader(Dataset(random_images(images)), batch_size=batch_size, seed=0)
    sched = warmup_cosine(opt, total_steps=epochs * len(loader), warmup_steps=1, method=method)  # the run's schedule
    handlers = [LrScheduleHandler(sched, epoch_level=False, print_lr=False),
                SSLCheckpoint(out_dir, method, opt, sched, resume=resume)]
    trainer = SSLTrainer("cpu", epochs, loader, method, opt, views, seed=0, precision=precision, handlers=handlers,
                         schedule=sched)
    if stop_after_epoch is not None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after_epoch), lambda e: e.terminate())
    trainer.run()
    return trainer, method


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module, atol: float = 1e-6) -> None:
    """Every tensor of the two modules' state dicts (weights, targets, teachers, queues, centres) agrees."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=atol), k
