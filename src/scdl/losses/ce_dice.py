"""Cross-entropy + soft Dice on integer label maps (MONAI's Dice, batch-wise)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn


class CEDiceLoss(nn.Module):
    """``ce_weight * CE(logits, target) + dice_weight * SoftDice(softmax(logits), onehot(target))``.

    Args:
        ce_weight, dice_weight: weights of the two terms.
        include_background: whether class 0 enters the Dice term.
        batch: Dice computed over the whole batch (one Dice per class) rather than per sample;
            batch Dice is stable for small organs absent from a patch.
        ignore_index: label value excluded from both terms (e.g. -1 for unlabeled voxels).

    Shapes: ``logits`` (B, C, X, Y, Z) float, ``target`` (B, X, Y, Z) integer in ``[0, C)``.
    """

    def __init__(
        self,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        include_background: bool = True,
        batch: bool = True,
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.ignore_index = ignore_index
        self.dice = DiceLoss(
            include_background=include_background,
            softmax=False,
            batch=batch,
            smooth_nr=1e-5,
            smooth_dr=1e-5,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim != target.ndim + 1:
            raise ValueError(
                f"logits {tuple(logits.shape)} must have one more dim (C) than target {tuple(target.shape)}"
            )
        target = target.long()
        logits = logits.float()  # losses in fp32 even under bf16 autocast
        loss = logits.new_zeros(())
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(
                logits, target, ignore_index=self.ignore_index
            )
        if self.dice_weight:
            valid = (target != self.ignore_index).unsqueeze(1)
            probs = logits.softmax(dim=1) * valid
            onehot = F.one_hot(target.clamp_min(0), logits.shape[1]).movedim(-1, 1) * valid
            loss = loss + self.dice_weight * self.dice(probs, onehot.to(probs.dtype))
        return loss
