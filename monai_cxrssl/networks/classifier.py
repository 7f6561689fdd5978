"""The downstream classifier: a backbone and a linear head, trained as a linear probe or end to end."""

from __future__ import annotations

import torch
from torch import nn

from monai_cxrssl.networks.backbones import Backbone

__all__ = ["CXRClassifier", "build_classifier", "classifier_from_info"]

MODES = ("linear", "finetune")


class CXRClassifier(nn.Module):
    """Backbone features -> linear layer -> one logit per output.

    Args:
        backbone: the feature extractor (random, or loaded from pretraining).
        num_outputs: 1 for a binary task, the number of classes (multi-class) or findings (multi-label).
        mode: ``"linear"``: the backbone is frozen (no gradients, kept in eval mode so that its
            BatchNorm statistics do not drift even when an engine calls ``train()``), only the head
            trains; ``"finetune"``: everything trains.
        dropout: dropout before the linear layer.
    """

    def __init__(self, backbone: Backbone, num_outputs: int, mode: str = "finetune", dropout: float = 0.0):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
        self.backbone = backbone
        self.mode = mode
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.out_dim, num_outputs))
        # feature standardisation before the head (identity unless fitted; see fit_feature_standardisation)
        self.register_buffer("feature_mean", torch.zeros(backbone.out_dim))
        self.register_buffer("feature_std", torch.ones(backbone.out_dim))
        if mode == "linear":
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> CXRClassifier:
        super().train(mode)
        if self.mode == "linear":
            self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features of images ``(B, C, H, W)`` (without gradients in linear mode)."""
        if self.mode == "linear":
            with torch.no_grad():
                return self.backbone(x).float()
        return self.backbone(x).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of images ``(B, C, H, W)``, or of precomputed features ``(B, out_dim)`` (linear probing)."""
        feats = x.float() if x.ndim == 2 else self.features(x)
        return self.head((feats - self.feature_mean) / self.feature_std)

    def fit_feature_standardisation(self, features: torch.Tensor, eps: float = 1e-6) -> None:
        """Standardise features by the mean and standard deviation of ``features`` (training set), as a
        logistic-regression probe on standardised features does. Saved with the model."""
        features = features.float()
        self.feature_mean.copy_(features.mean(0).to(self.feature_mean))
        self.feature_std.copy_(features.std(0).clamp_min(eps).to(self.feature_std))

    def param_groups(self, lr: float, backbone_lr_factor: float = 1.0) -> list[dict]:
        """Optimiser parameter groups: the head at ``lr``, the backbone at ``lr * backbone_lr_factor``
        (fine-tuning only; a frozen backbone has no group)."""
        groups = [{"params": list(self.head.parameters()), "lr": lr, "name": "head"}]
        if self.mode == "finetune":
            groups.append({"params": list(self.backbone.parameters()), "lr": lr * backbone_lr_factor,
                           "name": "backbone"})
        return groups


def build_classifier(backbone: str = "resnet18", num_outputs: int = 1, mode: str = "finetune",
                     init_weights: str | None = "random", key_map: dict | None = None, dropout: float = 0.0,
                     in_channels: int = 1, init_strict: bool = True, **backbone_kwargs) -> CXRClassifier:
    """A classifier whose backbone is built by name and initialised from ``init_weights``.

    ``init_weights``: ``random``, a backbone export / training checkpoint of this project, or an
    outside state dict (see :func:`~monai_cxrssl.networks.weights.init_backbone`). What was loaded
    is kept in ``classifier.init_report`` (and recorded with the trained model). ``init_strict`` (default) makes
    keys of an outside state dict that the backbone lacks an error, unless ``key_map`` says how to read the file.
    """
    from monai_cxrssl.networks.backbones import build_backbone
    from monai_cxrssl.networks.weights import init_backbone

    net = build_backbone(backbone, in_channels=in_channels, **backbone_kwargs)
    report = init_backbone(net, init_weights, key_map, strict=init_strict)
    model = CXRClassifier(net, num_outputs=num_outputs, mode=mode, dropout=dropout)
    model.init_report = report
    return model


def classifier_from_info(info: dict) -> CXRClassifier:
    """The untrained network a training run describes in its ``models/model_info.json``: the backbone of its
    ``backbone`` spec, ``num_outputs`` and ``mode`` (the inference config's ``network_def``; the weights come
    from ``models/model.pt``). Raises a ``KeyError`` naming a missing entry."""
    from monai_cxrssl.networks.backbones import build_backbone

    for key in ("backbone", "num_outputs"):
        if key not in info:
            raise KeyError(f"the classifier's model_info has no '{key}' (written by every training run of this package)")
    spec = dict(info["backbone"])
    backbone = build_backbone(spec.pop("name"), **{k: v for k, v in spec.items() if k != "out_dim"})
    return CXRClassifier(backbone, num_outputs=int(info["num_outputs"]), mode=info.get("mode", "finetune"))
