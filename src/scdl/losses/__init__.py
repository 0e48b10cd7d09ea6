"""Losses: supervised CE + Dice, pseudo-label consistency, ramp-up schedules."""

from scdl.losses.ce_dice import CEDiceLoss
from scdl.losses.rampup import sigmoid_rampup

__all__ = ["CEDiceLoss", "sigmoid_rampup"]
