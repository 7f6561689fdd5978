"""Precomputed backbone features for linear probing (an engine step: it runs the classifier's network).

A frozen backbone gives the same features every epoch (no augmentation in a linear probe), so
they are computed once; training the linear head on them takes seconds instead of a forward
pass over every image every epoch. The classifier takes features ``(B, D)`` as well as images.
"""

from __future__ import annotations

import logging

import torch
from monai.data import list_data_collate
from torch.utils.data import DataLoader, Dataset

from monai_cxrssl.data.view_batch import ViewBatch
from monai_cxrssl.utils import as_bool

__all__ = ["FeatureDataset", "probe_inputs"]

logger = logging.getLogger(__name__)


class FeatureDataset(Dataset):
    """Items of ``dataset`` with ``image_key`` replaced by the classifier's backbone features.

    Args:
        dataset: yields dictionaries with preprocessed images in [0, 1].
        network: a :class:`~monai_cxrssl.networks.CXRClassifier`.
        prepare_batch: turns a batch into normalised images (default ``ViewBatch()``: normalised, not augmented).
        batch_size, device: for the one pass over the data.
        inferer: runs ``network.features`` (e.g. :class:`~monai_cxrssl.engines.FastInferer` for the
            fast path); called directly when omitted.
        progress: show a progress bar over the batches (tqdm, on stderr).
    """

    def __init__(self, dataset, network, prepare_batch=None, batch_size: int = 64, device=None,
                 image_key: str = "image", inferer=None, progress: bool = False):
        prepare_batch = prepare_batch or ViewBatch()
        device = device or next(network.parameters()).device
        was_training = network.training
        network.eval()
        self.items: list[dict] = []
        with torch.no_grad():
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=list_data_collate)
            if progress and len(loader):
                from tqdm.auto import tqdm

                loader = tqdm(loader, desc=f"backbone features of {len(dataset)} images", unit="batch")
            for batch in loader:
                x, _ = prepare_batch(batch, device)
                feats = (inferer(x, network.features) if inferer is not None else network.features(x)).float().cpu()
                n = feats.shape[0]
                for i in range(n):
                    item = {k: (v[i] if isinstance(v, (torch.Tensor, list)) else v) for k, v in batch.items()}
                    item[image_key] = feats[i]
                    self.items.append(item)
        network.train(was_training)
        logger.info("computed %d backbone features of dimension %d once for linear probing", len(self.items),
                    feats.shape[1] if self.items else 0)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]

    def stack(self, image_key: str = "image") -> torch.Tensor:
        return torch.stack([item[image_key] for item in self.items])


def probe_inputs(dataset, network, fit_standardisation: bool = False, enabled: bool = True, batch_size: int = 64,
                 inferer=None, progress: bool = False):
    """What a classifier trains or validates on: precomputed features in linear mode (when ``enabled``),
    else ``dataset`` itself. With ``fit_standardisation`` (the training set), the classifier's feature
    standardisation is fitted on these features. ``inferer`` runs the feature pass and ``progress`` shows its
    bar (see :class:`FeatureDataset`)."""
    if network.mode != "linear" or not as_bool(enabled, "cache_features"):
        return dataset
    feats = FeatureDataset(dataset, network, batch_size=batch_size, inferer=inferer,
                           progress=as_bool(progress, "progress"))
    if fit_standardisation:
        network.fit_feature_standardisation(feats.stack())
    return feats
