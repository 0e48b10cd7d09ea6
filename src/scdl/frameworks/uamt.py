"""Uncertainty-aware mean teacher (UA-MT, Yu et al., MICCAI 2019) as DHC's ``code/train_uamt.py``
runs it for multi-organ segmentation: the mean teacher of :mod:`scdl.frameworks.mean_teacher` with
its consistency restricted to the voxels the teacher is certain about."""

from __future__ import annotations

import math

import torch

from scdl.frameworks.mean_teacher import MeanTeacherModule
from scdl.utils.schedules import sigmoid_rampup


class UAMTModule(MeanTeacherModule):
    """Mean teacher whose consistency is a masked softmax MSE.

    Per iteration, on the unlabeled patches ``x_u`` (Bu, 1, P, P, P):

    * the teacher's prediction ``q`` of ``x_u`` + clipped noise (as the mean teacher);
    * uncertainty ``u`` (Bu, 1, P, P, P): the entropy (natural log, +1e-6) of the mean softmax of
      ``mc_passes`` further noised teacher passes (the reference: T = 8);
    * threshold ``tau(t) = (0.75 + 0.25 * sigmoid_rampup(t, threshold_rampup_steps)) * ln 2``
      (the reference keeps the binary UA-MT's ``ln 2`` for any number of classes);
    * ``L_cons = sum(mask * (softmax(s_u) - softmax(q))^2) / (2 * sum(mask) + 1e-16)`` with
      ``mask = [u < tau]`` broadcast over the C channels (the reference's divisor 2, again from the
      binary original).

    ``L = sup_loss(s_l, y) + w(t) * L_cons`` with the mean teacher's ``w(t)`` (DHC's scripts:
    0.1, sigmoid ramp over the run). ``unsup_loss`` is not used.

    Args:
        mc_passes: teacher passes for the uncertainty (8).
        threshold_rampup_steps: length of the threshold's ramp (the run's ``max_steps``).
        **kwargs: see :class:`MeanTeacherModule`.
    """

    def __init__(
        self, *args, mc_passes: int = 8, threshold_rampup_steps: int = 1000, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        if mc_passes < 1:
            raise ValueError(f"mc_passes must be >= 1, got {mc_passes}")
        self.mc_passes = int(mc_passes)
        self.threshold_rampup_steps = int(threshold_rampup_steps)

    def threshold_at(self, step: int) -> float:
        """The uncertainty threshold at ``step``: from 0.75 ln 2 to ln 2."""
        return (0.75 + 0.25 * sigmoid_rampup(step, self.threshold_rampup_steps)) * math.log(2)

    @torch.no_grad()
    def uncertainty(self, x_unlabeled: torch.Tensor) -> torch.Tensor:
        """(Bu, 1, P, P, P) entropy of the mean softmax of ``mc_passes`` noised teacher passes."""
        mean = self.teacher_logits(x_unlabeled).float().softmax(dim=1)
        for _ in range(self.mc_passes - 1):
            mean = mean + self.teacher_logits(x_unlabeled).float().softmax(dim=1)
        mean = mean / self.mc_passes
        return -(mean * torch.log(mean + 1e-6)).sum(dim=1, keepdim=True)

    def consistency(self, student_logits: torch.Tensor, x_unlabeled: torch.Tensor) -> torch.Tensor:
        teacher = self.teacher_logits(x_unlabeled).float()
        mask = (self.uncertainty(x_unlabeled) < self.threshold_at(self.global_step)).float()
        dist = (student_logits.float().softmax(dim=1) - teacher.softmax(dim=1)) ** 2
        return (mask * dist).sum() / (2 * mask.sum() + 1e-16)
