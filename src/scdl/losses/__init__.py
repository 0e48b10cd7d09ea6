"""Losses: supervised CE + Dice, pseudo-label consistency, ramp-up schedules."""

from scdl.losses.ce_dice import CEDiceLoss
from scdl.losses.dhc import DiffDW, DistDW, WeightedCEDiceLoss, class_counts, hard_batch_dice
from scdl.losses.ga import GACELoss, GADiceLoss, GALoss, ga_dice_per_class
from scdl.losses.rampup import sigmoid_rampup

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
    "sigmoid_rampup",
]
