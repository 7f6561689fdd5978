"""Backbones (feature extractors over MONAI networks) and heads."""

from .backbones import BACKBONES, Backbone, build_backbone, register_backbone
from .classifier import CXRClassifier, build_classifier, classifier_from_info
from .heads import DINOHead, ProjectionHead
from .memory_bank import MemoryBank
from .weights import init_backbone, map_state_dict
from .vit import ViTEncoder
