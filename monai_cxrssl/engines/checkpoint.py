"""Ignite handler saving and resuming SSL training, and exporting the pretrained backbone.

Files under ``save_dir``:

- ``checkpoint.pt``: the whole training state (method incl. queues/teachers, optimiser,
  scheduler, epoch, iteration, seed), for exact resumption;
- ``models/model.pt``: the method's ``state_dict`` (MONAI bundle convention for ``network_def``);
- ``models/backbone.pt``: the pretrained backbone and its spec, for downstream bundles.

All are written atomically. Saving happens every ``save_interval`` epochs and at the end.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from ignite.engine import Engine, Events

import monai_cxrssl
from monai_cxrssl.checkpoints import (
    BACKBONE_EXPORT,
    SSL_CHECKPOINT,
    atomic_save,
    check_backbone_spec,
    read_checkpoint,
)
from monai_cxrssl.exceptions import CheckpointError
from monai_cxrssl.utils import as_bool

__all__ = ["SSLCheckpoint"]

logger = logging.getLogger(__name__)


class SSLCheckpoint:
    """Save, export and resume.

    Args:
        save_dir: output folder.
        method: the SSL method being trained.
        optimizer: its optimiser.
        lr_scheduler: the (iteration-level) scheduler, if any.
        save_interval: save every this many epochs (and always at the end).
        resume: ``False`` to start fresh; ``True`` to resume from ``save_dir/checkpoint.pt``
            (an error if it is missing); or a path to a checkpoint.
        metadata: extra JSON-able facts stored in every file (data source, config...).
    """

    def __init__(self, save_dir, method, optimizer, lr_scheduler=None, save_interval: int = 1,
                 resume: bool | str = False, metadata: dict | None = None):
        self.save_dir = Path(save_dir)
        self.method = method
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.save_interval = max(1, int(save_interval))
        self.resume = resume
        self.metadata = dict(metadata or {})
        self._last_saved_iteration = -1

    @property
    def checkpoint_path(self) -> Path:
        return self.save_dir / "checkpoint.pt"

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.maybe_resume)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    # ------------------------------------------------------------------------------- saving
    def _common(self, engine: Engine) -> dict:
        return {
            "method": self.method.name,
            "backbone": self.method.export_backbone().spec(),
            "epoch": engine.state.epoch,
            "iteration": engine.state.iteration,
            "monai_cxrssl_version": monai_cxrssl.__version__,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "metadata": self.metadata,
        }

    def save(self, engine: Engine) -> None:
        if engine.state.iteration == self._last_saved_iteration:
            return
        common = self._common(engine)
        state = {
            "format": SSL_CHECKPOINT,
            **common,
            "state_dict": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "seed": getattr(engine, "seed", None),
            "torch_rng": torch.get_rng_state(),
        }
        atomic_save(state, self.checkpoint_path)
        atomic_save(self.method.state_dict(), self.save_dir / "models" / "model.pt")
        backbone = self.method.export_backbone()
        atomic_save({"format": BACKBONE_EXPORT, **common, "state_dict": backbone.state_dict()},
                    self.save_dir / "models" / "backbone.pt")
        self._last_saved_iteration = engine.state.iteration
        logger.info(f"saved checkpoint at epoch {engine.state.epoch} (iteration {engine.state.iteration}) "
                    f"to {self.checkpoint_path}")

    # ----------------------------------------------------------------------------- resuming
    def maybe_resume(self, engine: Engine) -> None:
        resume = self.resume
        if isinstance(resume, (str, os.PathLike)) and str(resume).strip().lower() not in ("true", "false", "1", "0", "yes", "no", ""):
            path = Path(resume)  # a checkpoint path
        elif as_bool(resume, "resume"):
            path = self.checkpoint_path
        else:
            return
        ckpt = read_checkpoint(path, SSL_CHECKPOINT)
        if ckpt.get("method") != self.method.name:
            raise CheckpointError(f"checkpoint '{path}' was written by method {ckpt.get('method')!r}; "
                                  f"this run trains {self.method.name!r}")
        check_backbone_spec(ckpt.get("backbone", {}), self.method.export_backbone().spec(), str(path))
        try:
            self.method.load_state_dict(ckpt["state_dict"], strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint '{path}' does not fit this method: {e}") from e
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.lr_scheduler is not None:
            if ckpt.get("lr_scheduler") is None:
                raise CheckpointError(f"checkpoint '{path}' has no scheduler state, but this run uses a scheduler")
            self.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        if ckpt.get("torch_rng") is not None:
            torch.set_rng_state(ckpt["torch_rng"])
        if ckpt["epoch"] > engine.state.max_epochs:
            raise CheckpointError(f"checkpoint '{path}' is at epoch {ckpt['epoch']}, beyond max_epochs "
                                  f"{engine.state.max_epochs}")
        engine.state.epoch = ckpt["epoch"]
        engine.state.iteration = ckpt["iteration"]
        self._last_saved_iteration = ckpt["iteration"]
        logger.info(f"resumed from {path} at epoch {ckpt['epoch']} (iteration {ckpt['iteration']})")
