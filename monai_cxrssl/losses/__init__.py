"""Losses of the SSL methods."""

from .classification import ClassificationLoss
from .ntxent import NTXentLoss
from .infonce import InfoNCELoss
from .dino import DINOLoss
