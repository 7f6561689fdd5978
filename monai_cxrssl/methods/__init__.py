"""SSL methods, one module each: views -> embeddings -> loss, plus the state each keeps."""

from .base import SSLMethod
from .simclr import SimCLR
from .micle import MICLe
from .moco import MoCo
from .dino import DINO
