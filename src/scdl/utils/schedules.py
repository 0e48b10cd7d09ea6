"""Learning-rate schedules."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR


def poly_lr(
    optimizer: torch.optim.Optimizer, max_steps: int, power: float = 0.9, horizon: int | None = None
) -> LambdaLR:
    """Polynomial decay ``lr = base_lr * (1 - step / horizon) ** power`` stepped every iteration.

    ``horizon`` defaults to ``max_steps`` (GA-CPS); MagicNet decays over 70,000 but stops at 17,000
    (scdl-method.md §4.3, §8.10). The step is clipped to ``horizon - 1`` so the lr never hits 0.
    """
    horizon = int(horizon or max_steps)
    if horizon <= 0:
        raise ValueError(f"poly_lr needs a positive horizon, got {horizon}")

    def factor(step: int) -> float:
        return (1.0 - min(step, horizon - 1) / horizon) ** power

    return LambdaLR(optimizer, factor)
