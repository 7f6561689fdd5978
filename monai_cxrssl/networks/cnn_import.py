"""Outside CNN weights into the one-channel CNN backbones: torchvision/timm ResNets, torchvision/torchxrayvision
DenseNet-121.

The checkpoints radiology researchers already have: ImageNet-supervised ResNets (torchvision's
``resnet18-*.pth``, timm's ``resnet50.a1_in1k``: the ImageNet-supervised arm of the DINOv2 study) and
DenseNet-121 (torchvision's ImageNet one, torchxrayvision's chest X-ray ones). MONAI's ResNet and DenseNet
are the same networks under nearly the same names, so a file loads exactly, with these conversions, each
reported:

- the first convolution's weights are **summed over the file's 3 input channels** (a grey image then gives
  exactly what the original gives for that image repeated on R, G and B); a one-channel file
  (torchxrayvision) loads as it is;
- the classification head (``fc.*``, ``classifier.*``; torchxrayvision's ``op_threshs``) is ignored;
- ResNet shortcut convolutions get a zero bias: MONAI's have one, torchvision's and timm's do not (exact);
- DenseNet layers' ``norm1``/``conv1``/``norm2``/``conv2`` sit under ``layers.`` in MONAI.

Input normalisation stays this project's ``(x - 0.5) / 0.25`` (ImageNet's is per channel, about
``(x - 0.45) / 0.23``; torchxrayvision scales to [-1024, 1024]): fine-tuning absorbs the difference.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from monai_cxrssl.checkpoints import strip_prefixes
from monai_cxrssl.exceptions import CheckpointError

__all__ = ["looks_like_cnn", "cnn_state_dict"]

#: wrapper prefixes of outside files (DDP, timm/torchxrayvision wrappers, our Backbone)
PREFIXES = ("module.", "model.", "backbone.", "encoder.", "net.", "_orig_mod.")
#: classification heads of the known layouts
HEADS = ("fc.", "classifier.", "op_threshs", "head.")
_DENSE_LAYER = re.compile(r"^(features\.denseblock\d+\.denselayer\d+\.)(norm1|conv1|norm2|conv2)\.(.+)$")
_SHORTCUT_BIAS = re.compile(r"^layer\d+\.\d+\.downsample\.0\.bias$")


def _strip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if isinstance(key, str) and isinstance(value, torch.Tensor):
            out[strip_prefixes(key, PREFIXES)] = value
    return out


def _kind(keys) -> str | None:
    keys = set(keys)
    if {"conv1.weight", "bn1.weight"} <= keys and any(k.startswith("layer1.0.") for k in keys):
        return "resnet"
    if {"features.conv0.weight", "features.norm0.weight"} <= keys:
        return "densenet"
    return None


def looks_like_cnn(state: Mapping) -> str | None:
    """``"resnet"`` or ``"densenet"`` when ``state`` is a state dict (wrapper prefixes allowed) in the
    torchvision/timm/torchxrayvision layout of that family, else ``None``.

    MONAI's own layout (shortcut convolutions with a bias, DenseNet layers under ``layers.``) is not this
    importer's: such files load by name, as any state dict (:func:`~monai_cxrssl.networks.init_backbone`).
    """
    if not isinstance(state, Mapping):
        return None
    s = _strip(state)
    kind = _kind(s)
    if kind == "resnet" and any(_SHORTCUT_BIAS.match(k) for k in s):
        return None
    if kind == "densenet" and not any(_DENSE_LAYER.match(k) for k in s):
        return None
    return kind


def cnn_state_dict(state: Mapping[str, torch.Tensor], net: nn.Module, strict: bool = True,
                   source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], list[str]]:
    """Convert an outside ResNet/DenseNet state dict for ``net`` (the MONAI network of a backbone).

    Args:
        state: the file's state dict (wrapper prefixes allowed).
        net: MONAI ``ResNet`` or this project's DenseNet-121 features (``Backbone.net``).
        strict: weights ``net`` does not have (other than the classification head) are an error; ``False``
            ignores them, with a note (e.g. the first blocks of a deeper ResNet).
        source: the file's name, for messages.

    Returns:
        ``(state dict with every key of net, notes)``.

    Raises:
        CheckpointError: another family, missing weights or shapes that differ (a ResNet-50 file for a
            ResNet-18 backbone), naming them.
    """
    s = _strip(state)
    kind = _kind(s)
    target = net.state_dict()
    want = _kind(target)
    if kind is None or want is None or kind != want:
        raise CheckpointError(f"'{source}' holds a {kind or 'network of unknown layout'}, but this backbone is a "
                              f"{want or type(net).__name__}")
    notes: list[str] = []
    heads = sorted(k for k in s if k.startswith(HEADS))
    if heads:
        notes.append(f"ignored the classification head ({', '.join(heads[:4])}{', ...' if len(heads) > 4 else ''})")
        s = {k: v for k, v in s.items() if k not in heads}
    if kind == "densenet":
        s = {(_DENSE_LAYER.sub(r"\1layers.\2.\3", k)): v for k, v in s.items()}
    first = "conv1.weight" if kind == "resnet" else "features.conv0.weight"
    w, t = s[first], target[first]
    if w.ndim == 4 and t.ndim == 4 and w.shape[1] != t.shape[1]:
        if t.shape[1] != 1:
            raise CheckpointError(f"'{source}': the first convolution has {w.shape[1]} input channels, the backbone "
                                  f"{t.shape[1]}; only folding into one channel is supported")
        s[first] = w.sum(dim=1, keepdim=True)
        notes.append(f"summed the first convolution's weights over the file's {w.shape[1]} input channels (a grey "
                     f"image gives the original's output for that image repeated on each channel)")
    if kind == "resnet":
        zero = [k for k in target if _SHORTCUT_BIAS.match(k) and k not in s]
        for k in zero:
            s[k] = torch.zeros_like(target[k])
        if zero:
            notes.append(f"set the {len(zero)} shortcut convolution bias(es) MONAI's ResNet has to zero (exact)")
    missing = [k for k in target if k not in s and not k.endswith("num_batches_tracked")]
    shapes = [f"{k}: file {tuple(s[k].shape)} vs backbone {tuple(target[k].shape)}"
              for k in target if k in s and s[k].shape != target[k].shape]
    unexpected = sorted(set(s) - set(target))
    if missing or shapes:
        raise CheckpointError(
            f"'{source}' ({kind} layout) does not fit the backbone: {len(missing)} missing weight(s) {missing[:4]}, "
            f"{len(shapes)} shape mismatch(es) {shapes[:3]}: is it another depth (e.g. a ResNet-50 file for "
            f"resnet18)? build the matching backbone")
    if unexpected:
        if strict:
            raise CheckpointError(
                f"'{source}' ({kind} layout) has {len(unexpected)} weight(s) the backbone does not have, e.g. "
                f"{unexpected[:4]}: a deeper network? build the matching backbone, or pass init_strict false to "
                f"load only the shared blocks")
        notes.append(f"ignored {len(unexpected)} weight(s) the backbone does not have (init_strict false), e.g. "
                     f"{unexpected[:3]}")
    out = {k: s[k] for k in target if k in s}
    for k in target:  # BatchNorm step counters, absent from some files
        out.setdefault(k, target[k])
    return out, notes
