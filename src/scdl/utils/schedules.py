"""Schedules over training steps: the learning rate (poly) and the ramp-up of the unsupervised
loss weights (sigmoid)."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def poly_lr(
    optimizer: torch.optim.Optimizer, max_steps: int, power: float = 0.9, horizon: int | None = None
) -> LambdaLR:
    """Polynomial decay ``lr = base_lr * (1 - step / horizon) ** power`` stepped every iteration.

    ``horizon`` defaults to ``max_steps`` (GA-CPS); MagicNet decays over 70,000 but stops at 17,000
    (docs/method.md §4.3, §8.10). The step is clipped to ``horizon - 1`` so the lr never hits 0.

    Kept instead of ``torch.optim.lr_scheduler.PolynomialLR(total_iters=horizon, power=power)``,
    which is not the same schedule: it reaches lr 0 at ``step >= horizon`` (no clipping, so steps
    past the horizon, e.g. of a run resumed to train longer, would not learn), and it updates the
    lr recursively (``lr_t = lr_{t-1} * ratio``), which drifts from this closed form in the last
    bits (checked: relative difference < 1e-15 within the horizon, but not bitwise equal, and
    ``tests/test_step_pin.py`` pins the trajectory bit for bit).
    """
    horizon = int(horizon or max_steps)
    if horizon <= 0:
        raise ValueError(f"poly_lr needs a positive horizon, got {horizon}")
    return LambdaLR(optimizer, lambda step: poly_factor(step, horizon, power))


def poly_factor(step: int, horizon: int, power: float = 0.9) -> float:
    """The lr multiplier of :func:`poly_lr` at ``step``: ``(1 - min(step, horizon - 1) /
    horizon) ** power``."""
    return (1.0 - min(step, horizon - 1) / horizon) ** power


def sigmoid_rampup(current: float, length: float) -> float:
    """Sigmoid-shaped ramp from 0 to 1: ``exp(-5 (1 - t)^2)``, ``t = clip(current / length, 0, 1)``.

    (Laine & Aila 2017; used by UA-MT, GA-CPS and MagicNet.) ``length <= 0`` means no ramp (1.0).
    """
    if length <= 0:
        return 1.0
    t = min(max(current, 0.0), length) / length
    return float(math.exp(-5.0 * (1.0 - t) ** 2))
