"""Initial backbone weights: this project's checkpoints, or outside state dicts with key mapping.

:func:`init_backbone` is what every downstream bundle calls with a user-given path. It reports
exactly what was loaded, and refuses a file that would leave the backbone (partly) untrained:
a silent mismatch would make a "pretrained" run a random-initialisation run.

ViT checkpoints in the timm/DINO/DINOv2 layout (``cls_token``, ``pos_embed``, ``blocks.{i}...``)
are recognised and converted into the ViT backbones by :mod:`monai_cxrssl.networks.vit_import`
(channels summed, positional embeddings resampled, LayerScale folded); ResNets in the torchvision/timm
layout and DenseNet-121 in the torchvision/torchxrayvision layout by
:mod:`monai_cxrssl.networks.cnn_import` (channels summed, classification head ignored). Files may be
PyTorch files (read with ``weights_only``) or ``.safetensors``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
from torch import nn

from monai_cxrssl.checkpoints import (BACKBONE_EXPORT, SSL_CHECKPOINT, file_sha256, load_backbone_weights, read_checkpoint,
                                      strip_prefixes)
from monai_cxrssl.exceptions import CheckpointError
from monai_cxrssl.networks.cnn_import import cnn_state_dict, looks_like_cnn
from monai_cxrssl.networks.vit import ViTEncoder
from monai_cxrssl.networks.vit_import import (hf_dinov2_to_timm, looks_like_hf_dinov2, looks_like_timm_vit,
                                              timm_vit_state_dict)

__all__ = ["init_backbone", "map_state_dict"]

logger = logging.getLogger(__name__)

RANDOM = ("", "random", "none", "None", None)
#: prefixes stripped from outside state dicts (DDP, MoCo query encoders, wrappers)
STRIP_PREFIXES = ("module.", "encoder_q.", "backbone.", "encoder.", "model.", "student.", "teacher.")
#: keys under which outside files nest their state dict
NESTING_KEYS = ("state_dict", "model", "teacher", "student", "network")


def _unwrap(obj) -> Mapping[str, torch.Tensor]:
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for k in NESTING_KEYS:
            if k in obj:
                obj = obj[k]
                break
        else:
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state dict, found {type(obj).__name__}")
    return obj


def map_state_dict(state: Mapping[str, torch.Tensor], target_keys, key_map: Mapping[str, str] | None = None) -> dict:
    """Rename ``state``'s keys to match ``target_keys``.

    ``key_map`` (``{"old_prefix": "new_prefix"}``) is applied first; then common wrapper prefixes
    are stripped and the backbone's own prefix (``net.``) is tried; the variant matching the
    most target keys wins.
    """
    state = dict(state)
    if key_map:
        for old, new in key_map.items():
            state = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}
    target_keys = set(target_keys)

    candidates = [state, {strip_prefixes(k, STRIP_PREFIXES): v for k, v in state.items()}]
    candidates += [{"net." + k: v for k, v in c.items()} for c in list(candidates)]
    return max(candidates, key=lambda c: len(target_keys & set(c)))


def init_backbone(backbone: nn.Module, weights: str | os.PathLike | None = None,
                  key_map: Mapping[str, str] | None = None, strict: bool = True) -> dict:
    """Initialise ``backbone`` from ``weights`` and report what happened.

    Args:
        backbone: the network to initialise (a :class:`~monai_cxrssl.networks.Backbone`).
        weights: ``"random"``/empty (keep the random initialisation); a backbone export or training
            checkpoint of this project (its backbone spec must match); a ViT checkpoint in the
            timm/DINO/DINOv2 layout (for a ViT backbone; converted, see
            :mod:`~monai_cxrssl.networks.vit_import`); or any file holding a state dict (possibly
            nested under ``state_dict``/``model``/...), mapped with ``key_map`` and common prefixes.
        key_map: prefix renaming for outside state dicts, e.g. ``{"encoder.": ""}``.
        strict: an outside state dict with keys the backbone does not have (another architecture, or a head) is an
            error listing them, unless ``strict`` is false or a ``key_map`` is given; then they are ignored, logged.

    Returns:
        ``{"source": ..., "format": ..., "loaded": n, "unexpected": [...], ...}``.

    Raises:
        CheckpointError: missing or unreadable file, another backbone, missing weights or wrong shapes.
    """
    if weights in RANDOM:
        return {"source": "random"}
    from monai_cxrssl.utils import as_bool

    report = _init_backbone(backbone, str(weights), key_map, as_bool(strict, "init_strict"))
    report["sha256"] = file_sha256(report["source"])
    return report


def _init_backbone(backbone: nn.Module, path: str, key_map: Mapping[str, str] | None, strict: bool = True) -> dict:
    ckpt = read_safetensors(path) if path.lower().endswith(".safetensors") else read_checkpoint(path)
    fmt = ckpt.get("format") if isinstance(ckpt, Mapping) else None
    if fmt in (BACKBONE_EXPORT, SSL_CHECKPOINT):
        meta = load_backbone_weights(backbone, path)
        report = {"source": path, "format": fmt, "method": meta.get("method"), "epoch": meta.get("epoch"),
                  "loaded": len(backbone.state_dict()), "origin": meta.get("metadata", {}),
                  # where that file's own initial weights came from: the chain of stages (None: not recorded)
                  "initialisation": meta.get("initialisation")}
        logger.info("initialised backbone from %s (%s, epoch %s)", path, meta.get("method"), meta.get("epoch"))
        return report

    target = backbone.state_dict()
    try:
        raw = _unwrap(ckpt)
    except CheckpointError as e:
        raise CheckpointError(f"'{path}': {e}") from None
    if looks_like_hf_dinov2(raw):  # transformers' Dinov2 (DINOv2, RAD-DINO): renamed to the DINOv2 layout
        return _init_from_timm_vit(backbone, *hf_dinov2_to_timm(raw, path), path, layout="hf_dinov2")
    if looks_like_timm_vit(raw):
        return _init_from_timm_vit(backbone, raw, [], path)
    if kind := looks_like_cnn(raw):
        return _init_from_outside_cnn(backbone, raw, path, kind, strict)
    state = map_state_dict(raw, target.keys(), key_map)
    matched = [k for k in target if k in state]
    shape_errors = [f"{k}: file {tuple(state[k].shape)} vs backbone {tuple(target[k].shape)}"
                    for k in matched if tuple(state[k].shape) != tuple(target[k].shape)]
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = sorted(set(state) - set(target))
    if not matched:
        raise CheckpointError(
            f"'{path}' shares no weight name with the backbone {getattr(backbone, 'spec', lambda: {})()}; "
            f"file keys look like {list(state)[:5]}, backbone keys like {list(target)[:5]}; pass key_map")
    if shape_errors or missing:
        raise CheckpointError(
            f"'{path}' would leave the backbone partly untrained: {len(missing)} missing weight(s) "
            f"{missing[:5]}, {len(shape_errors)} shape mismatch(es) {shape_errors[:3]}")
    if unexpected and strict and not key_map:
        raise CheckpointError(
            f"'{path}' has {len(unexpected)} weight(s) the backbone {getattr(backbone, 'spec', lambda: {})()} does "
            f"not have, e.g. {unexpected[:5]} ({len(matched)} matched, 0 missing): it may be another architecture "
            f"(a deeper ResNet loads its first blocks into a shallower one) or hold a head; if that is intended, "
            f"pass init_strict false (e.g. --network_def#init_strict false) to ignore them, or a key_map")
    backbone.load_state_dict({k: state[k] for k in matched}, strict=False)
    if unexpected:
        logger.info("ignored %d key(s) of '%s' that the backbone does not have, e.g. %s", len(unexpected), path,
                    unexpected[:5])
    return {"source": path, "format": "state_dict", "loaded": len(matched), "unexpected": unexpected}


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file's tensors (a format that holds tensors only: nothing in it runs)."""
    try:
        from safetensors.torch import load_file
    except ImportError as e:  # an install_requires of this package: only a broken environment lacks it
        raise CheckpointError(f"'{path}' is a safetensors file and the safetensors package is not installed") from e
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        return load_file(path)
    except Exception as e:  # truncated or not a safetensors file
        raise CheckpointError(f"'{path}' cannot be read as safetensors ({type(e).__name__}: {e})") from e


def _init_from_outside_cnn(backbone: nn.Module, state: Mapping[str, torch.Tensor], path: str, kind: str,
                           strict: bool) -> dict:
    """Load a torchvision/timm ResNet or torchvision/torchxrayvision DenseNet-121 state dict; log and report."""
    net = getattr(backbone, "net", backbone)
    spec = getattr(backbone, "spec", lambda: {"name": type(backbone).__name__})()
    try:
        converted, notes = cnn_state_dict(state, net, strict=strict, source=path)
    except CheckpointError as e:
        raise CheckpointError(f"{e} (this run builds {spec})") from None
    net.load_state_dict(converted, strict=True)
    logger.info("initialised the %s backbone from '%s' (%s layout, %d tensors)", spec.get("name"), path,
                "torchvision/timm ResNet" if kind == "resnet" else "torchvision/torchxrayvision DenseNet", len(converted))
    for note in notes:
        logger.info("  %s", note)
    return {"source": path, "format": f"torchvision_{kind}", "loaded": len(converted), "notes": notes}


def _init_from_timm_vit(backbone: nn.Module, state: Mapping[str, torch.Tensor], notes: list[str], path: str,
                        layout: str = "timm_vit") -> dict:
    """Load a timm/DINO/DINOv2 ViT state dict (``notes``: what was done to it already, e.g. renamed from
    the Hugging Face layout) into a ViT backbone; log and report what was converted."""
    what = "Hugging Face Dinov2" if layout == "hf_dinov2" else "timm/DINOv2"
    vit = getattr(backbone, "net", backbone)
    if not isinstance(vit, ViTEncoder):
        spec = getattr(backbone, "spec", lambda: {"name": type(backbone).__name__})()
        raise CheckpointError(f"'{path}' holds a ViT in the {what} layout; it can only initialise a ViT backbone "
                              f"(vit_tiny, vit_small, vit_base, vit), but this run builds {spec}")
    converted, more = timm_vit_state_dict(state, vit, source=path)
    notes = [*notes, *more]
    vit.load_state_dict(converted, strict=True)
    logger.info("initialised the ViT backbone from '%s' (%s layout, %d tensors)", path, what, len(converted))
    for note in notes:
        logger.info("  %s", note)
    return {"source": path, "format": layout, "loaded": len(converted), "notes": notes}
