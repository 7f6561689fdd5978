"""The SSL trainer on MONAI/Ignite engines, and its handlers and schedules."""

from .classification import (BestModelHandler, ModelSelection, NonFiniteLossCheck,
                             export_torchscript, fit_classifier, load_trained_classifier, read_model_info,
                             trained_model_file)
from .checkpoint import ClassifierCheckpoint, SSLCheckpoint, TrainingCheckpoint, tensorboard_writer
from .features import FeatureDataset, probe_inputs
from .gradients import FreezeLastLayer, GradientClipping
from .logistic_probe import DEFAULT_CS, LogisticProbe
from .progress import ProgressHandler, scalar_outputs
from .precision import FastInferer, autocast, cpu_supports_bf16, grad_scaler, resolve_precision, to_channels_last
from .schedules import RunSchedule, ScheduleTable, warmup_cosine
from .trainer import SSLTrainer
