"""Exponential-moving-average teacher for mean-teacher training."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMATeacher(nn.Module):
    """A frozen copy of a student network whose weights track the student's by EMA.

    After every optimiser step call :meth:`update`: ``theta_t <- a * theta_t + (1 - a) * theta_s``
    with ``a = min(1 - 1 / (step + 1), decay)`` (the UA-MT / MagicNet warm-up: early on the teacher
    follows the student closely). Floating-point buffers (BatchNorm running statistics) are averaged
    the same way; integer buffers are copied. The teacher never receives gradients: its parameters
    have ``requires_grad=False`` and :meth:`forward` runs under ``torch.no_grad``. Being a submodule
    of the LightningModule, it is saved in checkpoints, so resuming restores it.
    """

    def __init__(self, student: nn.Module, decay: float = 0.99, foreach: bool = True) -> None:
        super().__init__()
        # foreach: one multi-tensor kernel per operation over all tensors instead of two small
        # kernels per tensor (the same arithmetic, element by element: bitwise equal results)
        self.foreach = foreach
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(student)
        for p in self.module.parameters():
            p.requires_grad_(False)

    def alpha(self, step: int) -> float:
        """The averaging weight used at optimiser step ``step`` (0-based)."""
        return min(1.0 - 1.0 / (step + 1), self.decay)

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> float:
        """Moves the teacher toward ``student``; returns the alpha used."""
        a = self.alpha(step)
        pairs = list(zip(self.module.parameters(), student.parameters(), strict=True))
        floats = pairs + [
            (t, s)
            for t, s in zip(self.module.buffers(), student.buffers(), strict=True)
            if t.is_floating_point()
        ]
        if self.foreach:
            teacher, source = [t for t, _ in floats], [s.detach() for _, s in floats]
            torch._foreach_mul_(teacher, a)
            torch._foreach_add_(teacher, source, alpha=1.0 - a)
        else:
            for t, s in floats:
                t.mul_(a).add_(s.detach(), alpha=1.0 - a)
        for t, s in zip(self.module.buffers(), student.buffers(), strict=True):
            if not t.is_floating_point():
                t.copy_(s)
        return a

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    @torch.no_grad()
    def noisy_forward(self, x: torch.Tensor, noise_std: float, train: bool = True) -> torch.Tensor:
        """Teacher logits on ``x + clamp(N(0, noise_std^2), +-2 noise_std)`` (UA-MT / MagicNet),
        with BatchNorm in train (batch statistics) or eval mode."""
        if noise_std > 0:
            noise = torch.randn_like(x) * noise_std
            x = x + noise.clamp(-2 * noise_std, 2 * noise_std)
        self.train(train)
        return self.module(x)
