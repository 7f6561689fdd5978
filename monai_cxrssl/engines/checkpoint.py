"""Ignite handlers that save and resume training exactly, and export what downstream work loads.

:class:`TrainingCheckpoint` writes ``save_dir/checkpoint.pt`` every ``save_interval`` epochs and
at the end: the network's whole state (for SSL: backbone, heads, momentum encoders, queues,
centres), optimiser, scheduler, epoch and iteration, the fp16 loss scaler (the engine's
``grad_scaler``), the state of any other stateful handler (best score, early-stopping counter),
and what identifies the run (method, backbone spec) and its data and settings (the handler's
``metadata``, the training items, batch size and iterations per epoch: :meth:`TrainingCheckpoint.fingerprint`),
which are checked on resume before any training: resuming with another datalist or image size is an error
naming what differs. All files are written atomically, by rank 0 only in a multi-process run (every rank
resumes from them).

- :class:`SSLCheckpoint` also exports ``models/model.pt`` into ``ckpt_dir`` (the pretrained backbone's plain state dict: the
  weights of the bundle's ``inference.json`` ``network_def``, as the model zoo's tools load them) and
  ``models/backbone.pt`` (the same weights with the backbone's spec and provenance, which
  :func:`monai_cxrssl.checkpoints.load_pretrained_encoder` checks). The whole method (heads, momentum
  encoders, queues, teachers) is in ``checkpoint.pt``.
- :class:`ClassifierCheckpoint` leaves ``models/model.pt`` to the best-model handler.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ignite.engine import Engine, Events

import monai_cxrssl
from monai_cxrssl.distributed import is_main_process
from monai_cxrssl.checkpoints import BACKBONE_EXPORT, SSL_CHECKPOINT, atomic_save, check_backbone_spec, read_checkpoint
from monai_cxrssl.exceptions import CheckpointError
from monai_cxrssl.utils import as_bool, check_free_space, remove_stale_temporaries

__all__ = ["TrainingCheckpoint", "SSLCheckpoint", "ClassifierCheckpoint", "CLASSIFIER_CHECKPOINT", "tensorboard_writer"]

logger = logging.getLogger(__name__)

CLASSIFIER_CHECKPOINT = "monai_cxrssl/classifier-checkpoint"


def _resume_target(resume, checkpoint) -> Path | None:
    """The checkpoint a ``resume`` setting points to: a path, ``checkpoint`` when true, ``None`` when false."""
    if isinstance(resume, (str, os.PathLike)) and str(resume).strip().lower() not in (
            "true", "false", "1", "0", "yes", "no", ""):
        return Path(resume)
    return Path(checkpoint) if as_bool(resume, "resume") and checkpoint is not None else None


def tensorboard_writer(log_dir, resume=False, checkpoint=None, step="iteration"):
    """A TensorBoard ``SummaryWriter`` for a run that may resume from ``checkpoint``.

    A resumed run repeats the steps after its checkpoint that the interrupted run had already logged; the
    writer's ``purge_step`` (the checkpoint's iteration, or epoch, + 1) hides those stale events, so each step
    appears once. Pass it to MONAI's ``TensorBoardStatsHandler(summary_writer=...)``. TensorBoard purges every
    tag of a folder at that step: iteration-level and epoch-level (e.g. validation) events need folders of
    their own.

    Args:
        log_dir: the event folder.
        resume: the bundle's ``resume`` setting (``false``, ``true`` or a checkpoint path).
        checkpoint: the run's own checkpoint, used when ``resume`` is true.
        step: ``"iteration"`` or ``"epoch"``: what the handler's steps count.

    Returns:
        The writer; ``None`` on a process other than rank 0 under ``torchrun``. The bundles disable the
        TensorBoard handler there (``"_disabled_": "@not_main_process"``), but MONAI's config parser still
        evaluates a disabled component's arguments, and a writer made there would leave an empty event
        file per process.
    """
    from torch.utils.tensorboard import SummaryWriter

    if step not in ("iteration", "epoch"):
        raise ValueError(f"step must be 'iteration' or 'epoch', got {step!r}")
    if not is_main_process():
        return None
    target = _resume_target(resume, checkpoint)
    purge = None
    if target is not None and target.is_file():
        try:
            purge = int(read_checkpoint(target).get(step, 0)) + 1
        except CheckpointError:
            purge = None  # the resume itself reports the bad file, before any training
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge)


class TrainingCheckpoint:
    """Save and resume a training run.

    Args:
        save_dir: output folder.
        network: the trained module (its whole ``state_dict`` is saved).
        optimizer: its optimiser.
        lr_scheduler: the scheduler, if any.
        save_interval: save every this many epochs (and always at the end).
        resume: ``False`` to start fresh; ``True`` to resume from ``save_dir/checkpoint.pt`` (an error
            if it is missing); or a path to a checkpoint.
        metadata: extra JSON-able facts stored in every file (data source, settings...).
        extra_state: other objects with ``state_dict``/``load_state_dict`` to save and restore.
        ckpt_dir: where the exported models go (the bundle's ``ckpt_dir``; default ``save_dir/models``).
    """

    format = "monai_cxrssl/training-checkpoint"

    def __init__(self, save_dir, network, optimizer, lr_scheduler=None, save_interval: int = 1,
                 resume: bool | str = False, metadata: dict | None = None, extra_state: Mapping | None = None,
                 ckpt_dir=None):
        self.save_dir = Path(save_dir)
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else self.save_dir / "models"
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.save_interval = max(1, int(save_interval))
        self.resume = resume
        self.metadata = dict(metadata or {})
        self.extra_state = dict(extra_state or {})
        self._last_saved_iteration = -1

    @property
    def checkpoint_path(self) -> Path:
        return self.save_dir / "checkpoint.pt"

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.prepare)
        engine.add_event_handler(Events.STARTED, self.maybe_resume)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def estimated_bytes(self) -> int:
        """About how much disk one save takes: the checkpoint (network, optimiser state) and the exported models."""
        model = sum(t.numel() * t.element_size() for t in self.network.state_dict().values()
                    if isinstance(t, torch.Tensor))
        params = sum(p.numel() * p.element_size() for p in self.network.parameters() if p.requires_grad)
        optimiser = sum(t.numel() * t.element_size() for st in self.optimizer.state.values() for t in st.values()
                        if isinstance(t, torch.Tensor)) or 2 * params  # not stepped yet: Adam keeps two moments
        return int(1.1 * (2 * model + optimiser))

    def prepare(self, engine: Engine) -> None:
        """Before training: remove temporaries left by a killed write, and check there is room for a checkpoint."""
        if not is_main_process():
            return
        for folder in (self.save_dir, self.ckpt_dir):
            remove_stale_temporaries(folder)
        check_free_space(self.save_dir, self.estimated_bytes(), "this run's checkpoint and exported models")

    # ------------------------------------------------------------------- what subclasses define
    def identity(self) -> dict:
        """What must match between a checkpoint and the run resuming from it."""
        return {}

    def export(self, engine: Engine, common: dict) -> None:
        """Write further files after each save."""

    def fingerprint(self, engine: Engine) -> dict:
        """What a resumed run must share with the saved one besides :meth:`identity`: the ``metadata`` (data
        source, image size, seed...), the training items (count and a SHA-256 of their image paths), the batch size
        and the iterations per epoch (which also change with the number of processes)."""
        fp: dict = {"metadata": self.metadata}
        loader = getattr(engine, "data_loader", None)
        data = getattr(getattr(loader, "dataset", None), "data", None)
        if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
            fp["n_items"] = len(data)
            names = [d.get("image") if isinstance(d, Mapping) else None for d in data]
            if names and all(isinstance(n, (str, os.PathLike)) for n in names):  # image files (not in-memory arrays)
                fp["items_sha256"] = hashlib.sha256("\n".join(map(os.fspath, names)).encode()).hexdigest()
        if getattr(loader, "batch_size", None) is not None:
            fp["batch_size"] = int(loader.batch_size)
        try:
            fp["iterations_per_epoch"] = len(loader)
        except TypeError:
            pass
        return fp

    def _check_fingerprint(self, ckpt: dict, path: Path, engine: Engine) -> None:
        saved = ckpt.get("fingerprint")
        if saved is None:  # a checkpoint from before fingerprints: nothing to compare
            logger.warning("checkpoint '%s' records no data/settings fingerprint; resuming without checking them", path)
            return
        now = self.fingerprint(engine)
        diff = {}
        for key in sorted(set(saved.get("metadata", {})) | set(now.get("metadata", {}))):
            a, b = saved.get("metadata", {}).get(key), now.get("metadata", {}).get(key)
            if a != b:
                diff[key] = (a, b)
        for key in ("n_items", "items_sha256", "batch_size", "iterations_per_epoch"):
            if key in saved and key in now and saved[key] != now[key]:
                diff[key] = (saved[key], now[key])
        if diff:
            what = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in diff.items())
            hint = (" (the training images differ: another datalist, folder or skip_unreadable result)"
                    if "items_sha256" in diff or "n_items" in diff else "")
            raise CheckpointError(f"checkpoint '{path}' was made with other data or settings than this run, so it "
                                  f"cannot be resumed exactly: {what}{hint}; run with the checkpoint's settings, or "
                                  f"start afresh in another output_dir")

    # ------------------------------------------------------------------------------- saving
    def _common(self, engine: Engine) -> dict:
        return {
            **self.identity(),
            "epoch": engine.state.epoch,
            "iteration": engine.state.iteration,
            "monai_cxrssl_version": monai_cxrssl.__version__,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "metadata": self.metadata,
        }

    def save(self, engine: Engine) -> None:
        if engine.state.iteration == self._last_saved_iteration or not is_main_process():
            return  # in a multi-process run only rank 0 writes; every rank resumes
        common = self._common(engine)
        state = {
            "format": self.format,
            **common,
            "state_dict": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "extra_state": {k: v.state_dict() for k, v in self.extra_state.items()},
            "grad_scaler": scaler.state_dict() if (scaler := getattr(engine, "grad_scaler", None)) else None,
            "seed": getattr(engine, "seed", None),
            "torch_rng": torch.get_rng_state(),
            "fingerprint": self.fingerprint(engine),
        }
        atomic_save(state, self.checkpoint_path)
        self.export(engine, common)
        self._last_saved_iteration = engine.state.iteration
        logger.info(f"saved checkpoint at epoch {engine.state.epoch} (iteration {engine.state.iteration}) "
                    f"to {self.checkpoint_path}")

    # ----------------------------------------------------------------------------- resuming
    def _resume_path(self) -> Path | None:
        return _resume_target(self.resume, self.checkpoint_path)

    def maybe_resume(self, engine: Engine) -> None:
        path = self._resume_path()
        if path is None:
            return
        ckpt = read_checkpoint(path, self.format)
        for key, expected in self.identity().items():
            found = ckpt.get(key)
            if key == "backbone":
                check_backbone_spec(found or {}, expected, str(path))
            elif found != expected:
                raise CheckpointError(f"checkpoint '{path}' has {key} {found!r}; this run has {expected!r}")
        self._check_fingerprint(ckpt, path, engine)
        try:
            self.network.load_state_dict(ckpt["state_dict"], strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint '{path}' does not fit this network: {e}") from e
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as e:  # another number or size of parameter groups
            raise CheckpointError(f"checkpoint '{path}' has an optimiser state that does not fit this run's "
                                  f"optimiser (written by another version or optimiser settings?): {e}") from e
        if self.lr_scheduler is not None:
            if ckpt.get("lr_scheduler") is None:
                raise CheckpointError(f"checkpoint '{path}' has no scheduler state, but this run uses a scheduler")
            self.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        for k, obj in self.extra_state.items():
            if k not in ckpt.get("extra_state", {}):
                raise CheckpointError(f"checkpoint '{path}' has no '{k}' state")
            obj.load_state_dict(ckpt["extra_state"][k])
        scaler = getattr(engine, "grad_scaler", None)
        if scaler is not None and ckpt.get("grad_scaler"):
            scaler.load_state_dict(ckpt["grad_scaler"])
        if ckpt.get("torch_rng") is not None:
            torch.set_rng_state(ckpt["torch_rng"])
        if ckpt["epoch"] > engine.state.max_epochs:
            raise CheckpointError(f"checkpoint '{path}' is at epoch {ckpt['epoch']}, beyond max_epochs "
                                  f"{engine.state.max_epochs}")
        engine.state.epoch = ckpt["epoch"]
        engine.state.iteration = ckpt["iteration"]
        self._last_saved_iteration = ckpt["iteration"]
        logger.info(f"resumed from {path} at epoch {ckpt['epoch']} (iteration {ckpt['iteration']})")


class SSLCheckpoint(TrainingCheckpoint):
    """Training checkpoint of an SSL method, exporting its pretrained backbone.

    Args:
        method: the SSL method (saved whole: backbone, heads, momentum encoders, queues...).
        other arguments: see :class:`TrainingCheckpoint`.
    """

    format = SSL_CHECKPOINT

    def __init__(self, save_dir, method, optimizer, lr_scheduler=None, save_interval: int = 1,
                 resume: bool | str = False, metadata: dict | None = None, extra_state: Mapping | None = None,
                 ckpt_dir=None):
        super().__init__(save_dir, method, optimizer, lr_scheduler, save_interval, resume, metadata, extra_state,
                         ckpt_dir)

    def identity(self) -> dict:
        return {"method": self.network.name, "backbone": self.network.export_backbone().spec()}

    def _common(self, engine: Engine) -> dict:
        # where the exported backbone lives in the method's state dict (DINO: the teacher's)
        exported = self.network.export_backbone()
        prefix = next(name for name, module in self.network.named_modules() if module is exported)
        return {**super()._common(engine), "export_prefix": f"{prefix}." if prefix else "",
                # two-stage pretraining: what the backbone started from, and that file's own chain
                "initialisation": getattr(self.network, "init_report", None) or {"source": "random"}}

    def export(self, engine: Engine, common: dict) -> None:
        backbone = self.network.export_backbone()
        atomic_save(backbone.state_dict(), self.ckpt_dir / "model.pt")
        atomic_save({"format": BACKBONE_EXPORT, **common, "state_dict": backbone.state_dict()},
                    self.ckpt_dir / "backbone.pt")


class ClassifierCheckpoint(TrainingCheckpoint):
    """Training checkpoint of a :class:`~monai_cxrssl.networks.CXRClassifier` (mode, outputs and backbone checked)."""

    format = CLASSIFIER_CHECKPOINT

    def identity(self) -> dict:
        return {"mode": self.network.mode, "num_outputs": self.network.head[-1].out_features,
                "backbone": self.network.backbone.spec()}
