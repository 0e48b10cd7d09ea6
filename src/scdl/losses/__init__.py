"""Losses: supervised CE + Dice, pseudo-label consistency, GA and DHC class weighting (the ramp-up
of their weights is :func:`scdl.utils.schedules.sigmoid_rampup`)."""

from scdl.losses.ce_dice import CEDiceLoss
from scdl.losses.dhc import DiffDW, DistDW, WeightedCEDiceLoss, class_counts, hard_batch_dice
from scdl.losses.ga import GACELoss, GADiceLoss, GALoss, ga_dice_per_class

__all__ = [
    "CEDiceLoss",
    "DiffDW",
    "DistDW",
    "GACELoss",
    "GADiceLoss",
    "GALoss",
    "WeightedCEDiceLoss",
    "class_counts",
    "ga_dice_per_class",
    "hard_batch_dice",
]
