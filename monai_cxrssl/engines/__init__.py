"""The SSL trainer on MONAI/Ignite engines, and its handlers and schedules."""

from .checkpoint import SSLCheckpoint
from .progress import ProgressHandler
from .precision import autocast, cpu_supports_bf16, resolve_precision
from .schedules import warmup_cosine
from .trainer import SSLTrainer, scalar_outputs
