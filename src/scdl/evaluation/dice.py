"""Per-case, per-class hard Dice as a torchmetrics ``Metric`` (states sync across DDP ranks)."""

from __future__ import annotations

from typing import Literal

import torch
from torchmetrics import Metric

AbsentPolicy = Literal["zero", "skip", "one"]


def per_class_dice(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, absent: AbsentPolicy = "zero"
) -> torch.Tensor:
    """Hard Dice of each foreground class for one case.

    ``pred``, ``target``: integer maps (X, Y, Z). Returns (C - 1,) float. A class whose prediction
    or ground truth is empty scores 0 (the SCDL/GALoss validation rule); when the ground truth is
    empty, ``absent`` decides: ``zero`` (that rule), ``skip`` (NaN, left out of means) or ``one``
    (1 when the prediction is empty too, else 0).
    """
    scores = torch.empty(num_classes - 1, dtype=torch.float64)
    for c in range(1, num_classes):
        p, g = pred == c, target == c
        ps, gs = int(p.sum()), int(g.sum())
        if gs == 0:
            scores[c - 1] = {"zero": 0.0, "skip": float("nan"), "one": float(ps == 0)}[absent]
        elif ps == 0:
            scores[c - 1] = 0.0
        else:
            scores[c - 1] = 2.0 * int((p & g).sum()) / (ps + gs)
    return scores


class PerCaseDice(Metric):
    """Collects one row of per-class Dice per case; :meth:`compute` returns (N cases, C - 1)."""

    full_state_update = False

    def __init__(self, num_classes: int, absent: AbsentPolicy = "zero") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.absent = absent
        self.add_state("rows", default=[], dist_reduce_fx="cat")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred``, ``target``: (B, X, Y, Z) integer maps."""
        for p, t in zip(pred, target, strict=True):
            row = per_class_dice(p, t, self.num_classes, self.absent)
            self.rows.append(row.to(self.device, torch.float32)[None])

    def compute(self) -> torch.Tensor:
        rows = self.rows
        if isinstance(rows, list):
            if not rows:
                return torch.empty(0, self.num_classes - 1)
            rows = torch.cat(rows)
        return rows
