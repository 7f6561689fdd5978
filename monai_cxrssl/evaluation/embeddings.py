"""One embedding per image from a pretrained encoder: what the pretraining bundles' ``inference.json`` writes.

The embeddings are the backbone's features (what a linear probe or fine-tuning starts from), usable by any
downstream tool: nearest-neighbour retrieval, clustering, a linear probe in another package.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine

from monai_cxrssl.evaluation.report import RunCollector
from monai_cxrssl.utils import atomic_write

__all__ = ["EmbeddingWriter", "read_embeddings"]

logger = logging.getLogger(__name__)

EMBEDDINGS_NPY = "embeddings.npy"
EMBEDDINGS_CSV = "embeddings.csv"


class EmbeddingWriter(RunCollector):
    """Collect an evaluator's outputs, one embedding per image, and write them when it completes.

    Writes to ``output_dir`` (each file atomically):

    - ``embeddings.npy``: float32 array ``(N, D)``, row ``i`` for image ``i`` of the CSV;
    - ``embeddings.csv``: ``image, patient_id, e0 ... e{D-1}`` (one row per image, in input order).

    Args:
        output_dir: where to write.
        path_key, group_key: batch keys of the image path and of the patient id.
        pred_key: output key of the embeddings (MONAI's ``SupervisedEvaluator``: ``pred``).

    Raises:
        ValueError: an output that is not ``(B, D)``, or a non-finite embedding (naming its images).
    """

    def __init__(self, output_dir, path_key: str = "path", group_key: str = "patient_id", pred_key: str = "pred"):
        self.output_dir = Path(output_dir)
        self.path_key, self.group_key, self.pred_key = path_key, group_key, pred_key
        self.reset()

    def reset(self, engine: Engine | None = None) -> None:
        self._embeddings, self._paths, self._groups = [], [], []

    def collect(self, engine: Engine) -> None:
        out, batch = engine.state.output, engine.state.batch
        emb = torch.as_tensor(out[self.pred_key]).detach().float().cpu().numpy()
        if emb.ndim != 2:
            raise ValueError(f"expected one embedding vector per image, shape (batch, dim); got {tuple(emb.shape)}")
        n = emb.shape[0]
        paths = [str(p) for p in batch.get(self.path_key, [""] * n)]
        bad = ~np.isfinite(emb).all(axis=1)
        if bad.any():
            raise ValueError(f"non-finite embeddings for {int(bad.sum())} image(s), e.g. "
                             f"{[paths[i] for i in np.flatnonzero(bad)[:3]]}: check these files and the precision")
        self._embeddings.append(emb.astype(np.float32))
        self._paths += paths
        self._groups += [str(g) for g in batch.get(self.group_key, [""] * n)]

    def write(self, engine: Engine | None = None) -> Path:
        if not self._embeddings:
            raise ValueError("no images were embedded: the input list is empty")
        emb = np.concatenate(self._embeddings)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.output_dir / EMBEDDINGS_NPY, "wb") as f:
            np.save(f, emb, allow_pickle=False)
        with atomic_write(self.output_dir / EMBEDDINGS_CSV, "w", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["image", "patient_id"] + [f"e{j}" for j in range(emb.shape[1])])
            for i in range(emb.shape[0]):
                w.writerow([self._paths[i], self._groups[i]] + [repr(float(v)) for v in emb[i]])
        logger.info("wrote %d embeddings of dimension %d to %s (%s, %s)", emb.shape[0], emb.shape[1],
                    self.output_dir, EMBEDDINGS_NPY, EMBEDDINGS_CSV)
        return self.output_dir


def read_embeddings(folder) -> tuple[np.ndarray, list[str], list[str]]:
    """``(embeddings (N, D), image paths, patient ids)`` from a folder written by :class:`EmbeddingWriter`."""
    folder = Path(folder)
    emb = np.load(folder / EMBEDDINGS_NPY, allow_pickle=False)
    with open(folder / EMBEDDINGS_CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    if len(rows) != emb.shape[0]:
        raise ValueError(f"'{folder}': {EMBEDDINGS_CSV} has {len(rows)} rows but {EMBEDDINGS_NPY} {emb.shape[0]}")
    return emb, [r[0] for r in rows], [r[1] for r in rows]
