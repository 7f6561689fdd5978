"""Backbones (feature extractors over MONAI networks) and heads."""

from .backbones import BACKBONES, Backbone, build_backbone, register_backbone
from .heads import ProjectionHead
