"""evaluation: eval.py protocols and distances, folder scoring, run summaries.

The Dice metric and the results schema / writer live one level lower, in :mod:`scdl.metrics`
(shared with the training test); they are re-exported here.
"""

from scdl.evaluation.protocols import (
    METRICS,
    PAPER_PENALTY,
    PAPER_SHAPE,
    compute_case_metrics,
    paper_case_metrics,
    resize_labels_nearest,
    standard_case_metrics,
    surface_distances,
)
from scdl.metrics.results import aggregate_metrics, format_metrics_table, save_metrics

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

# eval.py / predict.py entry logic and their shared checkpoint / grid helpers
from scdl.evaluation.checkpoint import load_module_from_checkpoint  # noqa: E402
from scdl.evaluation.evaluate import evaluate  # noqa: E402
from scdl.evaluation.predict import labels_to_original_grid, predict  # noqa: E402

__all__ += ["evaluate", "labels_to_original_grid", "load_module_from_checkpoint", "predict"]
