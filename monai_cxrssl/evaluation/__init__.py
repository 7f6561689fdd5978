"""Downstream evaluation: ROC AUC, bootstrap and DeLong confidence intervals, paired model comparisons.

- :mod:`monai_cxrssl.evaluation.stats`: numpy in, plain Python floats and dicts out; no bundle needed.
- :mod:`monai_cxrssl.evaluation.rankme`: label-free comparison of pretrained encoders (RankMe).
- :mod:`monai_cxrssl.evaluation.structured_report`: predictions as DICOM Structured Reports (highdicom).
"""

from .embeddings import EmbeddingWriter, read_embeddings
from .metrics import MacroAUC, probabilities
from .rankme import rank_encoders, rankme
from .report import PredictionReport, output_names, read_predictions
from .shift import shift_report
from .structured_report import StructuredReports, read_structured_report, write_structured_reports
from .stats import (
    auc,
    bootstrap_auc_ci,
    delong_ci,
    delong_test,
    independent_bootstrap_auc_diff,
    multilabel_auc,
    paired_bootstrap_auc_diff,
    seed_averaged_bootstrap,
    sensitivity_specificity,
)

__all__ = [
    "StructuredReports",
    "read_structured_report",
    "write_structured_reports",
    "EmbeddingWriter",
    "read_embeddings",
    "rankme",
    "rank_encoders",
    "MacroAUC",
    "probabilities",
    "PredictionReport",
    "output_names",
    "read_predictions",
    "shift_report",
    "auc",
    "multilabel_auc",
    "bootstrap_auc_ci",
    "paired_bootstrap_auc_diff",
    "independent_bootstrap_auc_diff",
    "delong_ci",
    "delong_test",
    "seed_averaged_bootstrap",
    "sensitivity_specificity",
]
