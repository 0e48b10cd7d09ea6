"""Unsupervised losses between a student and a (detached) teacher prediction."""

from __future__ import annotations

import inspect

import torch
from torch import nn


class PseudoLabelLoss(nn.Module):
    """Supervises the student with the teacher's hard pseudo-labels.

    ``loss(student_logits, argmax(teacher_logits))`` with any supervised ``loss`` taking
    (logits (B, C, ...), target (B, ...)); voxels whose teacher confidence is below ``threshold``
    get ``ignore_index`` (0 = keep all voxels, the GA-CPS / MagicNet default).
    """

    def __init__(self, loss: nn.Module, threshold: float = 0.0, ignore_index: int = -100) -> None:
        super().__init__()
        self.loss = loss
        self.threshold = threshold
        self.ignore_index = ignore_index
        # a class-weighted loss (DHC's weighted CE) takes the student network's class weights
        self.takes_class_weights = "class_weights" in inspect.signature(loss.forward).parameters

    @staticmethod
    def pseudo_labels(
        teacher_logits: torch.Tensor, threshold: float = 0.0, ignore_index: int = -100
    ) -> torch.Tensor:
        """(B, C, ...) logits -> (B, ...) long labels, low-confidence voxels set to ``ignore_index``."""
        probs = teacher_logits.detach().float().softmax(dim=1)
        conf, labels = probs.max(dim=1)
        if threshold > 0:
            labels = labels.masked_fill(conf < threshold, ignore_index)
        return labels

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        class_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``class_weights`` (C,) are passed to the loss when it takes them (else ignored)."""
        target = self.pseudo_labels(teacher_logits, self.threshold, self.ignore_index)
        if self.takes_class_weights:
            return self.loss(student_logits, target, class_weights=class_weights)
        return self.loss(student_logits, target)
