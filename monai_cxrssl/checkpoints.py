"""Checkpoint files: written atomically, checked when read.

Two kinds, both plain ``torch.save`` dictionaries with a ``format`` tag:

- training checkpoints (``"monai_cxrssl/ssl-checkpoint"``): everything needed to resume a
  run exactly: the method's whole state (backbone, heads, momentum encoders, queues,
  centres), optimiser, scheduler, epoch and iteration, seed;
- backbone exports (``"monai_cxrssl/backbone"``): the backbone's weights and its spec
  (name and arguments), what downstream bundles load.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from monai_cxrssl.exceptions import CheckpointError
from monai_cxrssl.utils import atomic_write, check_free_space

__all__ = ["SSL_CHECKPOINT", "BACKBONE_EXPORT", "atomic_save", "read_checkpoint", "load_backbone_weights",
           "load_pretrained_encoder", "strip_prefixes", "file_sha256", "initialisation_chain"]

SSL_CHECKPOINT = "monai_cxrssl/ssl-checkpoint"
BACKBONE_EXPORT = "monai_cxrssl/backbone"


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically (see :func:`monai_cxrssl.utils.atomic_write`).

    The file is serialised in memory first, so that a disk without room for it is an ``OSError`` naming the file,
    its size and the free space before anything is written (the previous file, if any, stays intact).
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getbuffer()
    check_free_space(Path(path).parent, data.nbytes, f"'{Path(path).name}'")
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def read_checkpoint(path: str | os.PathLike, expected_format: str | None = None) -> dict:
    """Load a checkpoint dictionary on the CPU, with a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:  # tensors and plain types only: a file someone hands in must not run code when it is read
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"checkpoint '{path}' cannot be read safely: it is corrupt, or it holds objects other "
                              "than tensors and plain Python types, which are refused because unpickling them can "
                              "run arbitrary code; if you trust the file, re-save its state dict with plain types"
                              ) from None
    except Exception as e:  # truncated or not a torch file
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({type(e).__name__}: {e})") from e
    if expected_format is not None:
        found = ckpt.get("format") if isinstance(ckpt, dict) else None
        if found != expected_format:
            raise CheckpointError(f"checkpoint '{path}' has format {found!r}; expected {expected_format!r}")
    return ckpt


def check_backbone_spec(found: dict, expected: dict, source: str) -> None:
    """Raise :class:`CheckpointError` if a checkpoint's backbone differs from the one being built."""
    if found != expected:
        diff = {k: (found.get(k), expected.get(k)) for k in sorted(set(found) | set(expected))
                if found.get(k) != expected.get(k)}
        raise CheckpointError(
            f"checkpoint '{source}' holds backbone {found}, but this run builds {expected} "
            f"(differences as (checkpoint, run): {diff})"
        )


def load_backbone_weights(backbone: torch.nn.Module, path: str | os.PathLike) -> dict:
    """Load a backbone export (or the backbone part of a training checkpoint) into ``backbone``.

    The backbone spec (name and arguments) must match and every weight must load.

    Returns:
        the checkpoint dictionary (for its metadata).
    """
    ckpt = read_checkpoint(path)
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt == BACKBONE_EXPORT:
        state = ckpt["state_dict"]
    elif fmt == SSL_CHECKPOINT:
        prefix = ckpt.get("export_prefix", "backbone.")  # the exported network (DINO: the teacher's backbone)
        state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    else:
        raise CheckpointError(f"checkpoint '{path}' has format {fmt!r}; expected {BACKBONE_EXPORT!r} "
                              f"or {SSL_CHECKPOINT!r}")
    if hasattr(backbone, "spec"):
        check_backbone_spec(ckpt.get("backbone", {}), backbone.spec(), str(path))
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint '{path}' does not fit the backbone: {e}") from e
    return ckpt


#: preprocessing a pretraining run used, for exports that do not record it (the pretraining bundles' defaults)
PREPROCESSING_DEFAULTS = {"resize_mode": "pad", "apply_voi": True}


def load_pretrained_encoder(backbone: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """``backbone`` with the weights of a pretraining run's export, in eval mode, for embedding images.

    The export's backbone spec must match ``backbone`` (a clear :class:`CheckpointError` names both when it
    does not: e.g. a ResNet-50 config given a ResNet-18 export). ``backbone.info`` is set to what the
    pretraining run recorded: ``method``, ``epoch``, ``backbone`` (spec), ``image_size``, ``resize_mode``,
    ``apply_voi`` (the preprocessing to embed new images with), ``checkpoint`` and its ``sha256``.

    Args:
        backbone: built from the bundle's config (``network_def``).
        path: ``models/backbone.pt`` of a pretraining run (or its ``checkpoint.pt``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no pretrained backbone at '{path}': run the bundle's configs/train.json first "
                              f"(it writes models/backbone.pt in its output_dir), or set checkpoint to an export")
    ckpt = load_backbone_weights(backbone, path)
    meta = dict(ckpt.get("metadata") or {})
    if "image_size" not in meta:
        raise CheckpointError(f"checkpoint '{path}' does not record the image size it was trained at "
                              f"(metadata.image_size), which every export of this package's pretraining bundles does")
    backbone.info = {"method": ckpt.get("method"), "epoch": ckpt.get("epoch"), "backbone": backbone.spec(),
                     "checkpoint": str(path), "sha256": file_sha256(path),
                     **PREPROCESSING_DEFAULTS, **{k: meta[k] for k in ("image_size", *PREPROCESSING_DEFAULTS) if k in meta}}
    return backbone.eval()


def strip_prefixes(key: str, prefixes) -> str:
    """``key`` with any run of the wrapper ``prefixes`` removed from its start (e.g. ``module.encoder_q.``)."""
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex): identifies an initialisation file whatever its name or place."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def initialisation_chain(report: dict | None) -> list[dict]:
    """Where a network's initial weights came from, most recent first, down to random or an outside file.

    ``report`` is an :func:`~monai_cxrssl.networks.init_backbone` report (kept by every SSL method and
    classifier as ``init_report``, stored in checkpoints and backbone exports as ``"initialisation"``;
    a classifier's ``model_info`` has it as ``"init"``). Each report of a file of this project carries
    that file's own ``"initialisation"``, so the chain is followed back through every stage. Each link:
    ``{"source", "format", "method", "epoch", "sha256", "data"}`` (``data``: the dataset or datalist the
    stage trained on, when recorded); the last link is ``{"source": "random"}`` for a chain that started
    from random weights, and ``{"source": None}`` when a file predates this record.
    """
    chain, seen = [], 0
    while isinstance(report, dict) and seen < 100:
        origin = report.get("origin") or {}
        data = origin.get("datalist") or origin.get("dataset_dir") or None
        chain.append({"source": report.get("source"), "format": report.get("format"), "method": report.get("method"),
                      "epoch": report.get("epoch"), "sha256": report.get("sha256"), "data": data})
        if report.get("source") == "random" or report.get("format") not in (BACKBONE_EXPORT, SSL_CHECKPOINT):
            return chain
        report, seen = report.get("initialisation"), seen + 1
    chain.append({"source": None, "format": None, "method": None, "epoch": None, "sha256": None, "data": None})
    return chain

