"""evaluation."""

from scdl.evaluation.metrics import (
    METRICS,
    PAPER_PENALTY,
    PAPER_SHAPE,
    aggregate_metrics,
    compute_case_metrics,
    format_metrics_table,
    paper_case_metrics,
    resize_labels_nearest,
    save_metrics,
    standard_case_metrics,
    surface_distances,
)

__all__ = [
    "METRICS",
    "PAPER_PENALTY",
    "PAPER_SHAPE",
    "aggregate_metrics",
    "compute_case_metrics",
    "format_metrics_table",
    "paper_case_metrics",
    "resize_labels_nearest",
    "save_metrics",
    "standard_case_metrics",
    "surface_distances",
]
