"""Pieces that turn MONAI's ``SupervisedTrainer``/``SupervisedEvaluator`` into the CXR classifier workflow.

The engines' ``prepare_batch`` is the package's one :class:`~monai_cxrssl.data.ViewBatch` (normalised images and
target vectors; augmented on the device when training end to end, with :func:`~monai_cxrssl.data.single_view`).

- :class:`BestModelHandler`: on the validator, keeps the best model by validation AUC (written
  atomically with a JSON of what it is), and stops early after ``patience`` epochs without gain;
- :class:`ModelSelection`: on the trainer, validates each epoch, or without validation data keeps
  the model of the last epoch;
- :func:`load_trained_classifier`: rebuilds a trained classifier from its output folder for
  evaluation, inference or export.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch

from ignite.engine import Engine, Events

from monai_cxrssl.checkpoints import BACKBONE_EXPORT, atomic_save, read_checkpoint
from monai_cxrssl.exceptions import CheckpointError, NonFiniteLossError
from monai_cxrssl.utils import atomic_write

__all__ = ["BestModelHandler", "ModelSelection", "NonFiniteLossCheck", "fit_classifier", "HEAD_INITS", "load_trained_classifier", "read_model_info", "trained_model_file", "export_torchscript", "MODEL_INFO"]

logger = logging.getLogger(__name__)

MODEL_INFO = "model_info.json"


class BestModelHandler:
    """Keep the best model by a validation metric; optionally stop early.

    Attach to the validator. After each validation it compares ``metric_name`` with the best so
    far; on improvement it writes ``save_dir/models/model.pt`` (the network's state dict) and
    ``save_dir/models/model_info.json`` (score, epoch, and ``info``: what the model is and how it
    was made), both atomically. With ``patience > 0`` the trainer stops after that many
    validations without improvement.

    Args:
        save_dir: output folder.
        network: the classifier.
        metric_name: key of the validator's metric (higher is better).
        patience: validations without improvement before stopping; 0 never stops.
        info: JSON-able description stored with the best model.
        trainer: the trainer to stop (or call :meth:`set_trainer`).
        ckpt_dir: where the model files go (the bundle's ``ckpt_dir``; default ``save_dir/models``).
    """

    def __init__(self, save_dir, network, metric_name: str = "val_auc", patience: int = 0, info: dict | None = None,
                 trainer: Engine | None = None, ckpt_dir=None):
        self.save_dir = Path(save_dir)
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else self.save_dir / "models"
        self.network = network
        self.metric_name = metric_name
        self.patience = int(patience)
        self.info = dict(info or {})
        self.trainer = trainer
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_rounds = 0

    def set_trainer(self, trainer: Engine) -> None:
        self.trainer = trainer

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, evaluator: Engine) -> None:
        score = float(evaluator.state.metrics[self.metric_name])
        epoch = self.trainer.state.epoch if self.trainer is not None else None
        if not math.isnan(score) and (self.best is None or score > self.best):
            self.best, self.best_epoch, self.bad_rounds = score, epoch, 0
            path = self.save({"best_metric": {self.metric_name: score}, "best_epoch": epoch,
                              "selection": f"best validation {self.metric_name}"})
            logger.info("new best %s %.4f at epoch %s: saved %s", self.metric_name, score, epoch, path)
            return
        self.bad_rounds += 1
        if math.isnan(score):
            logger.warning("%s is undefined at epoch %s (a validation output has one class only)", self.metric_name, epoch)
        if self.patience and self.bad_rounds >= self.patience and self.trainer is not None:
            logger.info("early stopping: no %s gain for %d validation(s); best %.4f at epoch %s", self.metric_name,
                        self.bad_rounds, self.best if self.best is not None else float("nan"), self.best_epoch)
            self.trainer.terminate()

    def save(self, selection: dict) -> Path:
        """Write the network's state dict and ``info`` + ``selection`` (how this model was chosen), atomically.

        A fine-tuned classifier's backbone is also written as a backbone export (``models/backbone.pt``,
        method ``supervised``, with the data and labels it was trained on and its own initialisation):
        supervised pretraining on a labelled source, which any bundle's ``init_weights`` and the
        label-efficiency study's ``--init`` take like an SSL backbone."""
        models = self.ckpt_dir
        atomic_save(self.network.state_dict(), models / "model.pt")
        if getattr(self.network, "mode", None) == "finetune":
            atomic_save(self.backbone_export(selection), models / "backbone.pt")
        with atomic_write(models / MODEL_INFO, "w", encoding="utf-8") as f:
            json.dump({**self.info, **selection}, f, indent=1, default=str)
        return models / "model.pt"

    def backbone_export(self, selection: dict) -> dict:
        """The fine-tuned backbone as a :data:`~monai_cxrssl.checkpoints.BACKBONE_EXPORT` dictionary (plain types)."""
        import monai_cxrssl

        backbone = self.network.backbone
        keep = ("task", "classes", "num_outputs", "image_size", "label_fraction", "seed", "data_source", "n_labels",
                "n_patients")
        metadata = {k: self.info[k] for k in keep if k in self.info}
        metadata["datalist"] = self.info.get("data_source")  # the data the stage trained on, for the init chain
        metadata.update({k: v for k, v in selection.items() if k in ("best_metric", "selection")})
        return {"format": BACKBONE_EXPORT, "method": "supervised", "epoch": selection.get("best_epoch"),
                "backbone": backbone.spec(), "monai_cxrssl_version": monai_cxrssl.__version__,
                "metadata": json.loads(json.dumps(metadata, default=str)),
                "initialisation": getattr(self.network, "init_report", None),
                "state_dict": backbone.state_dict()}

    def save_last(self, trainer: Engine) -> None:
        """Keep the model of the last epoch (training without validation)."""
        path = self.save({"best_metric": None, "best_epoch": trainer.state.epoch,
                          "selection": "last epoch (no validation)"})
        logger.info("no validation: saved the model of the last epoch (%d) to %s", trainer.state.epoch, path)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_rounds": self.bad_rounds}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_rounds = state["best"], state["best_epoch"], int(state["bad_rounds"])


class NonFiniteLossCheck:
    """Stop training at the first non-finite loss with :class:`~monai_cxrssl.exceptions.NonFiniteLossError`.

    Attach to a MONAI ``SupervisedTrainer`` (its output holds ``loss_key``). Without it a NaN would surface only
    at validation, after an epoch of NaN weights (an AUC of 0.5 or 0 kept as "best"). The SSL trainer checks its
    loss itself.
    """

    def __init__(self, loss_key: str = "loss"):
        self.loss_key = loss_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        loss = out.get(self.loss_key) if isinstance(out, dict) else out
        if loss is None:
            return
        loss = torch.as_tensor(loss).detach()
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"classifier loss is {loss.float().mean().item()} at epoch {engine.state.epoch}, iteration "
                f"{engine.state.iteration}; try a lower learning_rate, precision fp32, or check the input images "
                f"and labels")


class ModelSelection:
    """Which model a classifier run keeps: attach to the trainer.

    With validation data it validates every ``interval`` epochs (MONAI's ``ValidationHandler``; the
    validator carries a :class:`BestModelHandler`, which keeps the best model and stops early).
    Without (``val_fraction=0``: no label is spent on model selection) the schedule is fixed and
    the model of the last epoch is kept (:meth:`BestModelHandler.save_last`); ``patience`` is then unused.

    Args:
        validator: the validation evaluator.
        best: the :class:`BestModelHandler` attached to it.
        validate: whether there are validation data (``bool(data.val_items)``).
        interval: epochs between validations.
    """

    def __init__(self, validator: Engine, best: BestModelHandler, validate: bool = True, interval: int = 1):
        self.validator, self.best = validator, best
        self.validate, self.interval = bool(validate), int(interval)

    def attach(self, engine: Engine) -> None:
        if self.validate:
            from monai.handlers import ValidationHandler

            ValidationHandler(self.interval, self.validator, epoch_level=True).attach(engine)
            return
        if self.best.patience:
            logger.warning("patience=%d is unused: there is no validation set (val_fraction=0)", self.best.patience)
        engine.add_event_handler(Events.COMPLETED, self.best.save_last)


LINEAR_SOLVERS = ("lbfgs", "adamw")


HEAD_INITS = ("random", "probe")


def fit_classifier(mode: str, linear_solver: str, probe, trainer: Engine, head_init: str = "random",
                   resume=False, checkpoint=None):
    """Train the classifier: a linear probe by ``linear_solver`` ``lbfgs`` (:class:`LogisticProbe`: logistic
    regression to convergence, C by cross-validation), else the trainer (``adamw``: the head, or the whole
    network when fine-tuning, by gradient steps for ``epochs``).

    ``head_init`` (fine-tuning): ``random`` (the head starts at its random initialisation), or ``probe``
    (LP-FT: the head first fitted by the logistic probe on the frozen features of the training entries, see
    :meth:`LogisticProbe.init_head`). A run that resumes from its checkpoint (``resume``, ``checkpoint``: the
    bundle's settings) takes its head from there instead."""
    from monai_cxrssl.engines.checkpoint import _resume_target

    if linear_solver not in LINEAR_SOLVERS:
        raise ValueError(f"linear_solver must be one of {LINEAR_SOLVERS}, got {linear_solver!r}")
    if head_init not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {HEAD_INITS}, got {head_init!r}")
    if mode == "linear" and linear_solver == "lbfgs":
        logger.info("linear probe by L-BFGS logistic regression: epochs, learning_rate, patience and the "
                    "augmentation settings are unused (linear_solver 'adamw' uses them)")
        return probe.run()
    if head_init == "probe":
        if mode != "finetune":
            raise ValueError("head_init 'probe' initialises the head of a fine-tuning run (mode 'finetune'); "
                             f"mode is {mode!r}")
        target = _resume_target(resume, checkpoint)
        if target is not None and target.is_file():
            logger.info("head_init 'probe': resuming from %s, which holds the head", target)
        else:
            probe.init_head()
    return trainer.run()


def _models_dir(model_dir: str | os.PathLike) -> Path:
    return Path(model_dir) / "models" if (Path(model_dir) / "models").is_dir() else Path(model_dir)


def trained_model_file(model_dir: str | os.PathLike) -> str:
    """The weights of the classifier trained in ``model_dir`` (``models/model.pt``; a plain state dict, as MONAI's
    ``CheckpointLoader`` reads it in the inference config)."""
    return str(_models_dir(model_dir) / "model.pt")


def read_model_info(model_dir: str | os.PathLike) -> dict:
    """A trained classifier's ``models/model_info.json`` (task, classes, outputs, backbone, preprocessing...), in
    ``model_dir`` (a training run's output folder, or its ``models/`` folder)."""
    info_path = _models_dir(model_dir) / MODEL_INFO
    if not info_path.is_file():
        raise CheckpointError(f"'{info_path}' does not exist: expected the output folder of a classifier training run")
    try:
        return json.loads(info_path.read_text())
    except ValueError as e:
        raise CheckpointError(f"'{info_path}' is not valid JSON ({e})") from None


def load_trained_classifier(model_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild the classifier saved by :class:`BestModelHandler` in ``model_dir`` (its ``models/`` folder).

    Returns:
        the network in eval mode on ``device``, with its ``info`` dict (task, classes, image size...) as ``.info``.
    """
    from monai_cxrssl.networks import classifier_from_info

    models = _models_dir(model_dir)
    info = read_model_info(model_dir)
    net = classifier_from_info(info)
    state = read_checkpoint(models / "model.pt")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"'{models / 'model.pt'}' does not fit the classifier described in "
                              f"{models / MODEL_INFO}: {e}") from e
    net.info = info
    return net.to(device).eval()


def export_torchscript(model_dir: str | os.PathLike, filepath: str | os.PathLike | None = None,
                       atol: float = 1e-5) -> Path:
    """Export the trained classifier in ``model_dir`` to TorchScript and check it against the eager model.

    The model is traced in eval mode on radiograph-sized input and saved with MONAI's
    ``save_net_with_metadata`` (``model_info.json`` stored as its metadata). Before saving, the
    traced and eager models must agree within ``atol`` on random input at two batch sizes.

    Returns:
        the written file (default ``model_dir/models/model.ts``).
    """
    from monai.data import save_net_with_metadata

    net = load_trained_classifier(model_dir, "cpu")
    size = int(net.info["image_size"])
    g = torch.Generator().manual_seed(0)
    example = torch.randn(2, 1, size, size, generator=g)
    with torch.no_grad():
        traced = torch.jit.trace(net, example, check_trace=False)
        for n in (1, 3):
            x = torch.randn(n, 1, size, size, generator=g)
            diff = (traced(x) - net(x)).abs().max().item()
            if diff > atol:
                raise RuntimeError(f"TorchScript output differs from the eager model by {diff:.3g} (> {atol})")
    models = Path(model_dir) / "models" if (Path(model_dir) / "models").is_dir() else Path(model_dir)
    path = Path(filepath) if filepath else models / "model.ts"
    with atomic_write(path) as f:
        save_net_with_metadata(traced, f, meta_values=net.info)
    logger.info("exported TorchScript classifier to %s (max |traced - eager| <= %g)", path, atol)
    return path
