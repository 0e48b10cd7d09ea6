"""Ramp-up schedules for unsupervised loss weights."""

from __future__ import annotations

import math


def sigmoid_rampup(current: float, length: float) -> float:
    """Sigmoid-shaped ramp from 0 to 1: ``exp(-5 (1 - t)^2)``, ``t = clip(current / length, 0, 1)``.

    (Laine & Aila 2017; used by UA-MT, GA-CPS and MagicNet.) ``length <= 0`` means no ramp (1.0).
    """
    if length <= 0:
        return 1.0
    t = min(max(current, 0.0), length) / length
    return float(math.exp(-5.0 * (1.0 - t) ** 2))
