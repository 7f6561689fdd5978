"""RankMe: choose between pretrained encoders without a single label.

RankMe (Garrido, Balestriero, Najman and LeCun, "RankMe: Assessing the downstream performance of pretrained
self-supervised representations by their rank", ICML 2023) is the effective rank of an encoder's embeddings
of unlabelled images: with the singular values :math:`\\sigma_k` of the ``(N, D)`` embedding matrix,

.. math:: p_k = \\sigma_k / \\lVert\\sigma\\rVert_1 + \\varepsilon, \\qquad
          \\mathrm{RankMe} = \\exp\\Big(-\\sum_k p_k \\log p_k\\Big).

It lies between 1 (every image mapped to one direction: a collapsed encoder) and ``min(N, D)``. Within one
method, runs that differ in a hyperparameter (temperature, learning rate, epochs) rank by RankMe much as
they rank by downstream accuracy, so a recipe can be picked on the unlabelled pretraining images alone: no
labels are spent on the choice, and none has to be counted in a label budget. It does not compare
different methods or backbones of different widths, and it is no substitute for the downstream test.

Use it on the embeddings the pretraining bundles' ``inference.json`` writes (one folder per candidate)::

    python -m monai.bundle run --config_file bundles/simclr_cxr/configs/inference.json \\
        --checkpoint RUN/models/backbone.pt --input UNLABELLED_FOLDER --embeddings_dir RUN/embeddings
    python -m monai_cxrssl rankme t0.1=RUN_A/embeddings t0.2=RUN_B/embeddings
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from monai_cxrssl.exceptions import CXRSSLError

__all__ = ["rankme", "rank_encoders", "format_rankme_table"]

#: the paper's :math:`\varepsilon`
RANKME_EPS = 1e-7


def rankme(embeddings, eps: float = RANKME_EPS) -> float:
    """RankMe of an ``(N, D)`` embedding matrix (one row per image), as a float in ``[1, min(N, D)]``.

    The embeddings are used as they are (not centred or normalised), as in the paper; the singular values
    are computed in float64.

    Raises:
        ValueError: not a 2-D array with at least two rows and one column, non-finite values, or all zeros.
    """
    z = torch.as_tensor(np.asarray(embeddings), dtype=torch.float64)
    if z.ndim != 2 or z.shape[0] < 2 or z.shape[1] < 1:
        raise ValueError(f"RankMe needs an (N, D) embedding matrix with N >= 2, got shape {tuple(z.shape)}")
    if not torch.isfinite(z).all():
        raise ValueError("RankMe: the embeddings hold NaN or infinite values")
    s = torch.linalg.svdvals(z)
    total = s.sum()
    if total <= 0:
        raise ValueError("RankMe: every embedding is zero")
    p = s / total + eps
    return float(math.exp(-(p * p.log()).sum().item()))


def rank_encoders(folders: Mapping[str, str | Path]) -> list[dict]:
    """RankMe of each candidate's embedding folder (written by :class:`~monai_cxrssl.evaluation.EmbeddingWriter`).

    Args:
        folders: candidate name -> folder holding ``embeddings.npy`` and ``embeddings.csv``.

    Returns:
        One dict per candidate, highest RankMe first: ``name, folder, n_images, dim, rankme, selected``
        (``selected`` is true for the first only).

    Raises:
        CXRSSLError: no candidate, a folder without embeddings, or candidates embedding different images
            (RankMe is only comparable on the same images and the same width).
    """
    from monai_cxrssl.evaluation.embeddings import read_embeddings

    if not folders:
        raise CXRSSLError("rankme: give at least one NAME=EMBEDDINGS_FOLDER")
    rows, images = [], {}
    for name, folder in folders.items():
        folder = Path(folder)
        if not (folder / "embeddings.npy").is_file():
            raise CXRSSLError(f"rankme: candidate '{name}': no embeddings.npy in '{folder}' (write it with the "
                              "pretraining bundle's inference.json, --embeddings_dir)")
        try:
            emb, paths, _ = read_embeddings(folder)
            value = rankme(emb)
        except ValueError as e:
            raise CXRSSLError(f"rankme: candidate '{name}' ('{folder}'): {e}") from e
        images[name] = (sorted(paths), emb.shape[1])
        rows.append({"name": name, "folder": str(folder), "n_images": int(emb.shape[0]), "dim": int(emb.shape[1]),
                     "rankme": value})
    first = next(iter(images))
    for name, (paths, dim) in images.items():
        if paths != images[first][0] or dim != images[first][1]:
            raise CXRSSLError(f"rankme: candidates '{first}' and '{name}' embed different images or have different "
                              f"widths ({len(images[first][0])} x {images[first][1]} against {len(paths)} x {dim}); "
                              "RankMe is only comparable on the same images")
    rows.sort(key=lambda r: -r["rankme"])
    for i, r in enumerate(rows):
        r["selected"] = i == 0
    return rows


def format_rankme_table(rows: list[dict]) -> str:
    """A Markdown table of :func:`rank_encoders`' rows."""
    lines = ["| candidate | images | dim | RankMe | selected |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['n_images']} | {r['dim']} | {r['rankme']:.1f} | {'yes' if r['selected'] else ''} |"
              for r in rows]
    return "\n".join(lines)
