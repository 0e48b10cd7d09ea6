"""MagicNet's cube-wise pseudo-label blending weights and consistency schedule (docs/method.md §4.3).

* :class:`ClassFrequencyWeights`: a histogram of the recent pseudo-labels (replaced every
  ``update_every`` iterations by the counts observed since the previous refresh, as the released
  ``OrganClassLogger``), turned into per-class weights ``d_c <- d_c^(1/T) / sum_c d_c^(1/T)``,
  ``d <- d / max d``; the voxel weight map is ``w = d[argmax teacher]`` and the blended pseudo-label
  logits are ``(1 - w) * teacher + w * mixPL``. Frequent classes (background) lean on the
  within-image cube prediction, rare classes on the teacher.
* :func:`magicnet_consistency_weight`: ``0.1 * exp(-5 (1 - min(it // 350, 200) / 200)^2)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from scdl.utils.distributed import all_reduce_sum


class ClassFrequencyWeights(nn.Module):
    """Per-class blending weights from the histogram of recent pseudo-labels.

    Args:
        num_classes: C (background included; the histogram counts every class).
        temperature: T of ``d^(1/T)`` (MagicNet ``T_dist`` = 1).
        update_every: the histogram is refreshed at iterations that are multiples of this (20).

    Usage per iteration ``it``: :meth:`observe` the iteration's hard pseudo-labels (after blending,
    once blending has started), then the weights of the next iteration come from :meth:`weights`.
    The released loop appends first and refreshes when ``it % 20 == 0``: at iteration 0 the
    histogram is the teacher's first pseudo-labels, at iteration 20 those of iterations 1 ... 20.

    Buffers (saved in checkpoints): ``counts`` (C,) the histogram in use, ``pending`` (C,) the counts
    observed since the last refresh. Under DDP each rank keeps its own histogram (not synchronised).
    """

    counts: torch.Tensor
    pending: torch.Tensor

    def __init__(self, num_classes: int, temperature: float = 1.0, update_every: int = 20) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}")
        self.num_classes = num_classes
        self.temperature = float(temperature)
        self.update_every = int(update_every)
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("pending", torch.zeros(num_classes, dtype=torch.float64))

    @torch.no_grad()
    def observe(self, pseudo_labels: torch.Tensor, iteration: int) -> None:
        """Adds the hard labels (any shape, values in [0, C)) to the pending counts and refreshes
        the histogram when ``iteration % update_every == 0``."""
        flat = pseudo_labels.detach().reshape(-1).long()
        counts = torch.bincount(flat, minlength=self.num_classes)
        self.pending += all_reduce_sum(counts).to(self.pending)  # DDP: every rank's pseudo-labels
        if iteration % self.update_every == 0 and self.pending.sum() > 0:
            self.counts.copy_(self.pending)
            self.pending.zero_()

    def class_weights(self) -> torch.Tensor:
        """(C,) float32 weights in [0, 1], the most frequent class 1; all 0 (pure teacher) before
        any histogram exists."""
        d = self.counts.pow(1.0 / self.temperature)
        total = d.sum()
        if total <= 0:
            return torch.zeros_like(d, dtype=torch.float32)
        d = d / total
        return (d / d.max()).float()

    def forward(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Weight map ``d[argmax_c teacher]``: (B, C, ...) logits -> (B, 1, ...) float32."""
        labels = teacher_logits.argmax(dim=1, keepdim=True)
        return self.class_weights().to(teacher_logits.device)[labels]

    def blend(self, teacher_logits: torch.Tensor, mix_logits: torch.Tensor) -> torch.Tensor:
        """``(1 - w) * teacher_logits + w * mix_logits`` with ``w = self(teacher_logits)``."""
        w = self(teacher_logits).to(teacher_logits.dtype)
        return (1.0 - w) * teacher_logits + w * mix_logits


def magicnet_consistency_weight(
    iteration: int, weight: float = 0.1, steps_per_epoch: int = 350, rampup_epochs: int = 200
) -> float:
    """MagicNet's consistency weight ``weight * exp(-5 (1 - min(it // steps_per_epoch,
    rampup_epochs) / rampup_epochs)^2)``: 0.1 * e^-5 ~= 6.7e-4 at 0, about 0.0056 at 17,000 and 0.1
    from 70,000 on (a per-"epoch" step function of 350 iterations)."""
    epoch = min(max(iteration // steps_per_epoch, 0), rampup_epochs)
    phase = 1.0 - epoch / rampup_epochs
    return float(weight * math.exp(-5.0 * phase * phase))
