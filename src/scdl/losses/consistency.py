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


def voxel_weighted_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    voxel_weights: torch.Tensor | None = None,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mean_v  w_{y_v} * CE_v * m_v`` over every voxel ``v`` of the batch: DHC's
    ``WeightedCrossEntropyLoss(weight=w)(logits, target, weight_map=m)`` (per-voxel CE, optionally
    class-weighted, times a detached voxel weight map, averaged over all voxels, masked ones
    included), the pseudo-label loss of DePL, DST, CLD and Acisis.

    Shapes: ``logits`` (B, C, *S), ``target`` (B, *S) integer, ``voxel_weights`` (B, *S),
    ``class_weights`` (C,).
    """
    weight = None if class_weights is None else class_weights.detach().to(logits.device).float()
    ce = nn.functional.cross_entropy(logits.float(), target.long(), weight=weight, reduction="none")
    if voxel_weights is not None:
        ce = ce * voxel_weights.detach().to(ce.dtype)
    return ce.mean()
