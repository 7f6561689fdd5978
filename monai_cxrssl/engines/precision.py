"""The fast path's numerics: reduced precision where the hardware has it, channels_last, fp16 scaling.

- :func:`resolve_precision` turns ``"auto"`` into what the device does fast: bf16 on CPUs with
  AMX/AVX512-BF16 and on CUDA devices that support it, fp16 on older CUDA devices, fp32 elsewhere
  (on a CPU without native bf16, bf16 convolutions take a slow reference path: measured about 14x
  slower than fp32 on an AVX2 machine, see ``benchmarks/``).
- :func:`autocast` is the matching autocast context; losses and softmax statistics are computed
  in float32 by the losses themselves.
- :func:`grad_scaler` gives the loss scaler fp16 needs (``None`` otherwise).
- :class:`FastInferer` is a MONAI ``Inferer`` that runs any network (classifier training,
  validation, evaluation, inference) under that precision and memory format, returning float32.
- :func:`check_bf16_training`: bf16 training is refused (explicit ``bf16``) or not chosen (``auto``)
  for a network whose views reach a convolution this CPU's bf16 kernels get wrong.

A known CPU defect (measured with the PyTorch 2.13 CPU wheel on an Intel Xeon with AMX/AVX512-BF16 and
on an AMD EPYC with AVX512-BF16): the bf16 weight gradient of a strided, padded convolution on a feature
map one pixel wide holds uninitialised memory in the taps that only see padding (they must be 0): random
values, now and then NaN, and different from run to run. A ResNet meets it on views of 16 px or less (layer4's first
convolution then sees a 1 x 1 map): DINO's ResNet tests at 32 px with 16 px local crops hit a NaN loss
in most runs. :func:`cpu_bf16_conv_defect` tests the kernel itself (so a fixed PyTorch is used as
such); :func:`bf16_unsafe_convs` finds the convolutions a network would run on such a map.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import weakref
from collections.abc import Iterable

import torch
from torch import nn

from monai.inferers import Inferer

from monai_cxrssl.utils import as_bool

__all__ = ["cpu_supports_bf16", "resolve_precision", "resolve_compile", "autocast", "grad_scaler", "to_channels_last",
           "FastInferer", "cpu_bf16_conv_defect", "bf16_unsafe_convs", "check_bf16_training"]

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AMX-BF16 or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """Turn ``"auto"`` into ``"bf16"``, ``"fp16"`` or ``"fp32"`` for ``device``; validate the others.

    ``auto``: bf16 on CUDA devices that support it (else fp16), bf16 on CPUs with AMX/AVX512-BF16,
    fp32 elsewhere.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}; got {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision 'fp16' is for CUDA devices; on a CPU use 'bf16' (or 'auto')")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_supports_bf16() else "fp32"
    return "fp32"


@functools.lru_cache(maxsize=1)
def cpu_bf16_conv_defect(trials: int = 10) -> bool:
    """True when this CPU's bf16 convolution gets the weight gradient of a strided convolution on a
    one-pixel-wide map wrong (see the module docstring): a 3 x 3, stride-2, padding-1 convolution of a
    1 x 1 input, whose gradient must be zero outside the centre tap. The garbage is uninitialised
    memory (now and then zero), hence several trials; and which shapes show it differs between CPUs
    (an Intel Xeon with AMX: 8 channels, contiguous; an AMD EPYC with AVX512-BF16: not there, but with 32
    channels or channels_last), hence both layouts and two widths. Cached for the process."""
    for channels in (8, 32):
        for memory_format in (torch.contiguous_format, torch.channels_last):
            x = torch.ones(4, channels, 1, 1, dtype=torch.bfloat16).to(memory_format=memory_format)
            for _ in range(trials):
                w = torch.zeros(channels, channels, 3, 3, requires_grad=True)
                with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
                    out = torch.nn.functional.conv2d(x, w, stride=2, padding=1)
                out.backward(torch.ones_like(out))
                g = w.grad.clone()
                g[:, :, 1, 1] = 0
                if not torch.isfinite(g).all() or bool((g != 0).any()):
                    return True
    return False


def bf16_unsafe_convs(network: nn.Module, sizes: Iterable[int | tuple[int, int]],
                      in_channels: int | None = None) -> list[str]:
    """The convolutions of ``network`` that would run strided and padded on a map one pixel wide or
    high, for square views of each of ``sizes`` (or ``(h, w)`` pairs): ``["layer (h x w input, from
    s-px views)", ...]``, empty when there are none.

    One forward pass per size on a zero image of batch 1, in eval mode and without gradients (the
    network's state, batch-norm statistics included, is left as it was).
    """
    convs = [(n, m) for n, m in network.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return []
    in_channels = in_channels or convs[0][1].in_channels
    param = next(network.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    found: list[str] = []
    current: list = [None]

    def hook(name):
        def record(mod: nn.Conv2d, inputs, _out):
            h, w = inputs[0].shape[-2:]
            k, stride, pad = mod.kernel_size, mod.stride, mod.padding
            padded = isinstance(pad, str) or any(p > 0 for p in pad)
            if min(h, w) == 1 and max(stride) > 1 and max(k) > 1 and padded:
                found.append(f"{name} ({h} x {w} input, from {current[0]}-px views)")
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in convs]
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            for size in sorted(set(sizes), key=str):
                hw = (size, size) if isinstance(size, int) else tuple(size)
                current[0] = hw[0] if hw[0] == hw[1] else f"{hw[0]} x {hw[1]}"
                network(torch.zeros(1, in_channels, *hw, device=device))
    finally:
        for h in handles:
            h.remove()
        network.train(was_training)
    return found


def check_bf16_training(precision: str, requested: str, network: nn.Module, sizes: Iterable,
                        device: torch.device | str, what: str = "training") -> str:
    """The precision to train ``network`` with on views of ``sizes``: ``precision`` (already resolved
    from ``requested``), or ``"fp32"`` with a warning when ``auto`` chose bf16 on a CPU whose bf16
    kernels get this network's gradients wrong (:func:`cpu_bf16_conv_defect`,
    :func:`bf16_unsafe_convs`); an explicit ``bf16`` there is a ``ValueError`` naming the layers."""
    if precision != "bf16" or torch.device(device).type != "cpu" or not cpu_bf16_conv_defect():
        return precision
    unsafe = bf16_unsafe_convs(network, sizes)
    if not unsafe:
        return precision
    shown = "; ".join(unsafe[:3]) + (f"; and {len(unsafe) - 3} more" if len(unsafe) > 3 else "")
    why = (f"this CPU's bf16 convolution computes wrong (uninitialised, at times NaN) weight gradients for a "
           f"strided convolution on a one-pixel-wide map, and {what} would run {len(unsafe)} of them: {shown}")
    if requested == "bf16":
        raise ValueError(f"precision 'bf16': {why}. Use larger views (or image_size), or precision 'auto' or "
                         f"'fp32'")
    logger.warning("precision auto: fp32, not bf16: %s. Larger views would allow bf16.", why)
    return "fp32"


def resolve_compile(compile: bool | str) -> str | None:
    """The ``torch.compile`` backend a ``compile`` setting asks for: ``None`` (eager) for false,
    ``"inductor"`` (PyTorch's default) for true, else the backend named (``"aot_eager"``, ``"cudagraphs"``,
    ...; one of ``torch._dynamo.list_backends()``), checked here so that a misspelt one fails before training.
    """
    try:
        return "inductor" if as_bool(compile, "compile") else None
    except ValueError:
        pass
    import torch._dynamo

    known = sorted(set(torch._dynamo.list_backends(exclude_tags=())) | {"inductor"})
    if isinstance(compile, str) and compile.strip() in known:
        return compile.strip()
    raise ValueError(f"compile must be true, false or a torch.compile backend ({', '.join(known)}); got {compile!r}")


def autocast(precision: str, device: torch.device | str):
    """The autocast context for a resolved precision (a null context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device | str) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 training (its small exponent range underflows gradients); ``None`` otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def to_channels_last(module: nn.Module) -> nn.Module:
    """Convert ``module``'s 4-D parameters and buffers to channels_last in place (optimiser references stay valid)."""
    return module.to(memory_format=torch.channels_last)


class FastInferer(Inferer):
    """Run a network under the fast path: reduced precision by :func:`resolve_precision`, channels_last.

    The network is converted to channels_last on its first call (in place: an optimiser built on
    its parameters keeps working); 4-D inputs are made channels_last; floating outputs come back
    as float32, so losses and metrics see full precision. Inputs that are not images (e.g. cached
    feature vectors of a linear probe) pass through unchanged in layout.

    Args:
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA).
        channels_last: use the channels_last memory format for 4-D inputs and the network.
    """

    def __init__(self, precision: str = "auto", channels_last: bool = True):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}; got {precision!r}")
        self.precision = precision
        self.channels_last = as_bool(channels_last, "channels_last")
        self._converted: weakref.WeakSet = weakref.WeakSet()
        self._checked: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # network -> {(h, w): precision}

    def resolved(self, device: torch.device | str) -> str:
        """The precision used on ``device``."""
        return resolve_precision(self.precision, device)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        image_input = inputs.ndim == 4
        if self.channels_last and image_input:
            if isinstance(network, nn.Module) and network not in self._converted:
                to_channels_last(network)
                self._converted.add(network)
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        precision = self.resolved(inputs.device)
        if precision == "bf16" and image_input and torch.is_grad_enabled() and isinstance(network, nn.Module):
            # training: bf16 only where this CPU's kernels get the gradients right (see check_bf16_training)
            hw = tuple(inputs.shape[-2:])
            decided = self._checked.setdefault(network, {})
            if hw not in decided:
                decided[hw] = check_bf16_training(precision, self.precision, network, [hw], inputs.device,
                                                  "training the classifier")
            precision = decided[hw]
        with autocast(precision, inputs.device):
            out = network(inputs, *args, **kwargs)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            return out.float()
        return out
