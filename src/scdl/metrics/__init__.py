"""Metrics and results shared by training (``scdl.frameworks``) and evaluation
(``scdl.evaluation``): the Dice metric and the one results schema / writer.

Sits below both: it imports neither ``scdl.frameworks`` nor ``scdl.evaluation``.
"""

from scdl.metrics.dice import (
    ABSENT_POLICIES,
    AbsentPolicy,
    PerCaseDice,
    dice_counts,
    per_class_dice,
)
from scdl.metrics.results import (
    TRAIN_TEST_STEM,
    aggregate_metrics,
    class_means,
    format_metrics_table,
    load_metrics,
    save_metrics,
)

__all__ = [
    "ABSENT_POLICIES",
    "TRAIN_TEST_STEM",
    "AbsentPolicy",
    "PerCaseDice",
    "aggregate_metrics",
    "class_means",
    "dice_counts",
    "format_metrics_table",
    "load_metrics",
    "per_class_dice",
    "save_metrics",
]
