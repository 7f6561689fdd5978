"""The SSL trainer: a MONAI ``Trainer`` whose iteration is views -> method -> loss -> step.

The iteration, readable in one sitting:

1. the run's :class:`~monai_cxrssl.data.ViewBatch` (MONAI's ``prepare_batch``) makes the method's views of the
   batch: the named recipe (:func:`~monai_cxrssl.data.two_views`, :func:`~monai_cxrssl.data.multi_crop`,
   :func:`~monai_cxrssl.data.pair_views`) says which batch key each view comes from and how it is augmented;
   batched on the device, normalised once, with random parameters drawn from ``(seed, rank, iteration)``: a run
   resumed from a checkpoint sees exactly the views the uninterrupted run would have seen;
3. ``method(views)`` returns the loss (and other scalars to log), under autocast when a
   reduced precision is chosen (the fast path: see :mod:`monai_cxrssl.engines.precision`);
4. a non-finite loss stops training with :class:`~monai_cxrssl.exceptions.NonFiniteLossError`;
5. backward, optimiser step, then ``method.after_step`` (momentum encoders).

It fires MONAI's iteration events as ``SupervisedTrainer`` does (``IterationEvents.FORWARD_COMPLETED`` and
``LOSS_COMPLETED`` once the method returned its loss, ``BACKWARD_COMPLETED`` between backward and the optimiser
step, ``MODEL_COMPLETED`` after the momentum update), with ``engine.state.output`` holding the method's outputs:
gradient clipping and DINO's last-layer freeze are handlers on ``BACKWARD_COMPLETED``
(:mod:`monai_cxrssl.engines.gradients`).

Before step 3 the method gets the iteration's scheduled values (EMA momentum, DINO's teacher temperature) from
the run's one schedule, :class:`~monai_cxrssl.engines.RunSchedule`, which is also the learning-rate scheduler the
bundle's ``LrScheduleHandler`` steps; a method computes no schedule itself.

In a multi-process run (``distributed=True`` under ``torchrun``) the method is wrapped in
``DistributedDataParallel``; the losses gather what they need across processes themselves.

Everything else (stepping the schedule, logging, TensorBoard, checkpoints, progress) is an
Ignite handler attached by the bundle config.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from ignite.engine import Events
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer

from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer, SimpleInferer

from monai_cxrssl.data.view_batch import View, ViewBatch
from monai_cxrssl.data.views import CXRViewAugment
from monai_cxrssl.distributed import Heartbeat, describe_silent_ranks, is_distributed
from monai_cxrssl.engines.precision import (autocast, check_bf16_training, grad_scaler, resolve_compile,
                                            resolve_precision, to_channels_last)
from monai_cxrssl.engines.schedules import RunSchedule, ScheduleTable
from monai_cxrssl.exceptions import NonFiniteLossError, SilentRankError
from monai_cxrssl.methods.base import SSLMethod
from monai_cxrssl.utils import as_bool

__all__ = ["SSLTrainer"]

logger = logging.getLogger(__name__)


class SSLTrainer(Trainer):
    """Self-supervised trainer on MONAI's engine.

    Args:
        device: training device.
        max_epochs: number of epochs.
        train_data_loader: yields dictionaries of ``(B, 1, H, W)`` images in [0, 1] under the keys the views read.
        method: the SSL method (holds the backbone and all trained state).
        optimizer: optimiser over ``method``'s parameters.
        views: how the batch becomes ``method.num_views`` views: a :class:`~monai_cxrssl.data.ViewBatch` (the
            bundles' ``train#prepare_batch``, made from a named recipe), or a recipe (a list of
            :class:`~monai_cxrssl.data.View`), or one :class:`~monai_cxrssl.data.CXRViewAugment` for every view of
            ``image_key``, or a list of them (one per view), which are made into a ``ViewBatch`` with ``seed``.
        image_key: key of the image in each batch (for views given as augmentations).
        seed: seed of the view randomness (for views that are not a ``ViewBatch`` already, which has its own).
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"auto"`` (see :func:`resolve_precision`).
        channels_last: convolution-friendly memory layout for the network and the views.
        compile: run the method through ``torch.compile`` (its state stays in ``method``): true for
            PyTorch's default backend (inductor), or a backend's name (e.g. ``"aot_eager"``; see
            :func:`resolve_compile`). Off by default: on the 2-core AVX2 CPU of ``benchmarks/`` it made a
            ResNet-18 step slower.
        distributed: wrap the method in ``DistributedDataParallel`` when a process group with
            more than one process is initialised (``torchrun``); ignored otherwise.
        batch_scalars: batch keys whose mean is logged with the loss (e.g. MICLe's share of
            true multi-instance pairs).
        inferer: how the method is called on the list of views, ``inferer(views, method)`` (a MONAI
            :class:`~monai.inferers.Inferer`; default :class:`~monai.inferers.SimpleInferer`, i.e.
            ``method(views)``). Called inside the trainer's autocast; it returns the method's output
            dictionary (``loss`` and scalars). The bundles name it ``train#inferer``, MONAI's id.
        schedule: the run's :class:`~monai_cxrssl.engines.RunSchedule` built with ``method=method`` (the bundles'
            ``train#lr_scheduler``): this iteration's values of the method's :meth:`schedules` come from it, and
            it must cover the run's iterations. Without one, the method's schedules are precomputed here alone.
        epoch_length: iterations per epoch (default: the loader's length).
        handlers: Ignite handlers (each with ``attach(engine)``).
        non_blocking: non-blocking host-to-device copies.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader,
        method: SSLMethod,
        optimizer: Optimizer,
        views: ViewBatch | Sequence[View | CXRViewAugment] | CXRViewAugment,
        image_key: str = "image",
        seed: int = 0,
        precision: str = "fp32",
        channels_last: bool = False,
        epoch_length: int | None = None,
        handlers: Sequence | None = None,
        non_blocking: bool = False,
        compile: bool | str = False,
        distributed: bool = False,
        batch_scalars: Sequence[str] = (),
        inferer: Inferer | None = None,
        schedule: RunSchedule | None = None,
    ):
        device = torch.device(device)
        if not isinstance(views, ViewBatch):
            if isinstance(views, CXRViewAugment):
                views = [views] * method.num_views
            views = ViewBatch(list(views), seed=seed, image_key=image_key, target_key=None)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=views,
            handlers=handlers,
            decollate=False,
        )
        self.method = method.to(device)
        self.optimizer = optimizer
        #: the run's views (MONAI's ``prepare_batch``), drawn for each iteration the step hands it
        self.views: ViewBatch = views
        if len(views.views) != method.num_views:
            raise ValueError(f"method '{method.name}' takes {method.num_views} views; the view recipe makes "
                             f"{len(views.views)}")
        self.batch_scalars = list(batch_scalars)
        self.inferer = SimpleInferer() if inferer is None else inferer
        self.seed = views.seed
        # auto's bf16 is not kept for views that meet this CPU's bf16 convolution defect (see precision.py)
        self.precision = check_bf16_training(resolve_precision(precision, device), precision, self.method.backbone,
                                             views.out_sizes, device, f"'{method.name}' training")
        self.channels_last = as_bool(channels_last, "channels_last")
        logger.info("'%s' trains in %s%s%s on %s", method.name, self.precision,
                    f" (precision {precision})" if precision != self.precision else "",
                    ", channels_last" if self.channels_last else "", device)
        if self.channels_last:
            to_channels_last(self.method)
        #: fp16 loss scaler (None otherwise); saved and restored by the checkpoint handlers
        self.grad_scaler = grad_scaler(self.precision, device)
        #: the torch.compile backend, None when eager
        self.compile = resolve_compile(compile)
        self.distributed = as_bool(distributed, "distributed") and is_distributed()
        forward = self.method
        if self.distributed:
            ids = [device.index if device.index is not None else torch.cuda.current_device()] \
                if device.type == "cuda" else None
            forward = DistributedDataParallel(self.method, device_ids=ids)
        self._forward = torch.compile(forward, backend=self.compile) if self.compile else forward
        if self.distributed:  # a silent process is named when a step times out waiting for it
            self.heartbeat = Heartbeat()
            self.add_event_handler(Events.STARTED, lambda _: self.heartbeat.start())
            for event in (Events.COMPLETED, Events.TERMINATE):  # (an exception ends the process, and it)
                self.add_event_handler(event, lambda *_: self.heartbeat.stop())
        if schedule is not None and not isinstance(schedule, RunSchedule):
            raise TypeError(f"schedule must be a monai_cxrssl.engines.RunSchedule, got {type(schedule).__name__}")
        if schedule is not None and set(schedule.method_quantities) != set(method.schedules()):
            raise ValueError(f"the run schedule holds the quantities {sorted(schedule.method_quantities)}, method "
                             f"'{method.name}' schedules {sorted(method.schedules())}: build it with "
                             f"method=<this method>")
        #: the run's schedule; without one, a table of the method's schedules made when the run starts
        self.schedule: RunSchedule | ScheduleTable | None = schedule
        self._own_schedule = schedule is None
        self.add_event_handler(Events.STARTED, self._check_schedule)
        # batch samplers with an epoch (MICLe's) get it like MONAI gives DistributedSampler theirs
        batch_sampler = getattr(train_data_loader, "batch_sampler", None)
        if hasattr(batch_sampler, "set_epoch"):
            self.add_event_handler(Events.EPOCH_STARTED, lambda e: batch_sampler.set_epoch(e.state.epoch))

    def _check_schedule(self, engine: SSLTrainer) -> None:
        total = engine.state.max_epochs * engine.state.epoch_length
        if self._own_schedule:
            self.schedule = ScheduleTable(total, self.method.schedules())
        elif self.schedule.total_steps != total:
            raise ValueError(f"the run schedule covers {self.schedule.total_steps} iterations, the trainer runs "
                             f"{total} ({engine.state.max_epochs} epochs of {engine.state.epoch_length}): build the "
                             f"schedule with total_steps = epochs x iterations per epoch")

    def _iteration(self, engine: SSLTrainer, batchdata: dict) -> dict[str, torch.Tensor]:
        try:
            return self._step(engine, batchdata)
        except RuntimeError as e:  # a collective that gave up: name the processes that stopped answering
            silent = self.distributed and describe_silent_ranks(
                f"epoch {engine.state.epoch}, iteration {engine.state.iteration}")
            if not silent:
                raise
            raise SilentRankError(silent) from e

    def _step(self, engine: SSLTrainer, batchdata: dict) -> dict[str, torch.Tensor]:
        views = self.views.make_views(batchdata, engine.state.device, self.non_blocking, engine.state.iteration)
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]

        self.method.before_step(engine.state.iteration, self.schedule.at(engine.state.iteration))
        self.method.train()
        with autocast(self.precision, engine.state.device):
            out = self.inferer(views, self._forward)
        if not isinstance(out, dict) or "loss" not in out:
            raise TypeError(f"method '{self.method.name}' through {type(self.inferer).__name__} returned "
                            f"{type(out).__name__}, not a dictionary with a 'loss'")
        engine.state.output = out
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss = out["loss"].float()
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss.item()} at epoch {engine.state.epoch}, iteration {engine.state.iteration} "
                f"(method '{self.method.name}', precision {self.precision}); try a lower learning rate, "
                f"precision='fp32', or check the input images"
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is None:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            self.optimizer.step()
        else:
            self.grad_scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)  # (gradients still scaled: see gradients.py)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        self.method.after_step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)

        result = {k: v.detach().float() for k, v in out.items()}
        for k in self.batch_scalars:
            result[k] = torch.as_tensor(batchdata[k]).float().mean()
        result["lr"] = torch.tensor(self.optimizer.param_groups[0]["lr"])
        return result
