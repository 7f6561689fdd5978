"""The SSL trainer: a MONAI ``Trainer`` whose iteration is views -> method -> loss -> step.

The iteration, readable in one sitting:

1. take the batch of preprocessed radiographs ``(B, 1, H, W)`` to the device;
2. make ``method.num_views`` augmented views of it, batched on the device, with random
   parameters drawn from a state seeded by ``(seed, rank, iteration)``: a run resumed from a
   checkpoint sees exactly the views the uninterrupted run would have seen;
3. ``method(views)`` returns the loss (and other scalars to log), under autocast when a
   reduced precision is chosen (the fast path: see :mod:`monai_cxrssl.engines.precision`);
4. a non-finite loss stops training with :class:`~monai_cxrssl.exceptions.NonFiniteLossError`;
5. backward, optimiser step, then ``method.after_step`` (momentum encoders, schedules).

Everything else (learning-rate schedule, logging, TensorBoard, checkpoints, progress) is an
Ignite handler attached by the bundle config.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.optim import Optimizer

from monai.engines import Trainer

from monai_cxrssl.data.views import CXRViewAugment
from monai_cxrssl.distributed import get_rank
from monai_cxrssl.engines.precision import autocast, grad_scaler, resolve_precision, to_channels_last
from monai_cxrssl.exceptions import NonFiniteLossError
from monai_cxrssl.methods.base import SSLMethod
from monai_cxrssl.utils import as_bool

__all__ = ["SSLTrainer", "scalar_outputs"]


def scalar_outputs(output: dict) -> dict[str, float]:
    """The trainer's iteration output as plain floats (for StatsHandler / TensorBoardStatsHandler)."""
    return {k: float(v) for k, v in output.items()}


class SSLTrainer(Trainer):
    """Self-supervised trainer on MONAI's engine.

    Args:
        device: training device.
        max_epochs: number of epochs.
        train_data_loader: yields dictionaries with ``image_key`` -> ``(B, 1, H, W)`` in [0, 1].
        method: the SSL method (holds the backbone and all trained state).
        optimizer: optimiser over ``method``'s parameters.
        views: the view augmentation, applied to the batch on ``device``.
        image_key: key of the image in each batch.
        seed: seed of the view randomness.
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"auto"`` (see :func:`resolve_precision`).
        channels_last: convolution-friendly memory layout for the network and the views.
        compile: run the method through ``torch.compile`` (its state stays in ``method``). Off by
            default: on the 2-core AVX2 CPU of ``benchmarks/`` it made a ResNet-18 step slower.
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
        views: CXRViewAugment,
        image_key: str = "image",
        seed: int = 0,
        precision: str = "fp32",
        channels_last: bool = False,
        epoch_length: int | None = None,
        handlers: Sequence | None = None,
        non_blocking: bool = False,
        compile: bool = False,
    ):
        device = torch.device(device)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            handlers=handlers,
            decollate=False,
        )
        self.method = method.to(device)
        self.optimizer = optimizer
        self.views = views
        self.image_key = image_key
        self.seed = int(seed)
        self.precision = resolve_precision(precision, device)
        self.channels_last = as_bool(channels_last, "channels_last")
        if self.channels_last:
            to_channels_last(self.method)
        #: fp16 loss scaler (None otherwise); saved and restored by the checkpoint handlers
        self.grad_scaler = grad_scaler(self.precision, device)
        self.compile = as_bool(compile, "compile")
        self._forward = torch.compile(self.method) if self.compile else self.method

    def _view_rng(self, iteration: int) -> tuple[np.random.RandomState, torch.Generator]:
        s = np.random.SeedSequence([self.seed, get_rank(), iteration]).generate_state(2)
        gen = torch.Generator(device=self.state.device).manual_seed(int(s[1]))
        return np.random.RandomState(int(s[0])), gen

    def _iteration(self, engine: SSLTrainer, batchdata: dict) -> dict[str, torch.Tensor]:
        if self.image_key not in batchdata:
            raise KeyError(f"batch has no '{self.image_key}' key; keys are {sorted(batchdata)}")
        x = torch.as_tensor(batchdata[self.image_key]).to(engine.state.device, non_blocking=engine.non_blocking)
        if x.ndim != 4:
            raise ValueError(f"expected a batch (B, C, H, W) under '{self.image_key}', got {tuple(x.shape)}")
        rng, gen = self._view_rng(engine.state.iteration)
        views = [self.views(x, rng, gen) for _ in range(self.method.num_views)]
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]

        self.method.train()
        with autocast(self.precision, engine.state.device):
            out = self._forward(views)
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
            self.optimizer.step()
        else:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        self.method.after_step(engine.state.iteration, engine.state.max_epochs * engine.state.epoch_length)

        result = {k: v.detach().float() for k, v in out.items()}
        result["lr"] = torch.tensor(self.optimizer.param_groups[0]["lr"])
        return result
