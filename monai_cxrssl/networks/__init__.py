"""Backbones (feature extractors over MONAI networks) and heads."""

from .backbones import BACKBONES, Backbone, build_backbone, register_backbone
from .classifier import CXRClassifier
from .heads import ProjectionHead
