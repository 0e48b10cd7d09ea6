"""DHC's re-weighted losses as drop-in ``(logits, target) -> scalar`` modules.

Each wraps a stateful weighter of :mod:`scdl.losses.dhc` (its buffers are in the checkpoint) and a
:class:`~scdl.losses.dhc.WeightedCEDiceLoss`: every call first updates the class weights from what
it sees, then returns the weighted loss.

* ``difficulty`` (DiffDW): updated from the hard Dice of the prediction against the target; DHC uses
  it for model A's supervised loss.
* ``distribution`` (DistDW): DHC initialises it from the voxel counts of the labeled set
  (:meth:`init_from_counts`, called by CPS at the start of training) and then updates it only from
  model B's pseudo-labels of the unlabeled batch (:meth:`observe`, CPS hands them over before the
  step's losses); ``update_on_call=false`` (``loss=dhc``) keeps the labeled targets out of it, as
  DHC does. With ``update_on_call=true`` it also follows the target of every call.

In DHC each network's class weights also weight its cross pseudo-label CE: CPS passes
:attr:`DHCWeightedLoss.class_weights` of A's and B's supervised losses to the CPS term of each
direction when that term takes ``class_weights`` (:class:`~scdl.losses.dhc.WeightedCEDiceLoss`).
"""

from __future__ import annotations

from typing import Literal, cast

import torch
from torch import nn

from scdl.losses.dhc import DiffDW, DistDW, WeightedCEDiceLoss, class_counts
from scdl.utils.distributed import all_reduce_sum


class DHCWeightedLoss(nn.Module):
    """Class-weighted CE + Dice with DHC's adaptive weights.

    Args:
        num_classes: C.
        weighting: ``difficulty`` (DiffDW) or ``distribution`` (DistDW).
        ce_weight, dice_weight: weights of the two terms (``dice_weight=0`` for DHC's CPS loss).
        momentum: DistDW EMA momentum; accumulate_iters: DiffDW accumulation (50).
        update_on_call: distribution weights follow the target of every call (True), or only
            :meth:`init_from_counts` and :meth:`observe` (False: DHC's DistDW).

    Shapes: ``logits`` (B, C, *S), ``target`` (B, *S) integer.
    """

    def __init__(
        self,
        num_classes: int,
        weighting: Literal["difficulty", "distribution"] = "difficulty",
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        momentum: float = 0.99,
        accumulate_iters: int = 50,
        update_on_call: bool = True,
    ) -> None:
        super().__init__()
        if weighting == "difficulty":
            self.weighter: DiffDW | DistDW = DiffDW(num_classes, accumulate_iters)
        elif weighting == "distribution":
            self.weighter = DistDW(num_classes, momentum)
        else:
            raise ValueError(f"weighting must be difficulty|distribution, got {weighting!r}")
        self.weighting = weighting
        self.num_classes = num_classes
        self.update_on_call = update_on_call
        self.loss = WeightedCEDiceLoss(ce_weight, dice_weight)

    @property
    def wants_labeled_counts(self) -> bool:
        """A distribution weighter not yet initialised (a restored checkpoint is)."""
        return self.weighting == "distribution" and not bool(self.weighter.initialized)

    @torch.no_grad()
    def init_from_counts(self, counts: torch.Tensor) -> None:
        """DHC's ``DistDW.init_weights``: the weights of the labeled set's voxel counts (C,)."""
        if self.weighting == "distribution":
            cast(DistDW, self.weighter).init_weights(torch.as_tensor(counts))

    @torch.no_grad()
    def observe(self, labels: torch.Tensor) -> None:
        """Feeds extra label maps (e.g. pseudo-labels) to the distribution weighter."""
        if self.weighting == "distribution":
            weighter = cast(DistDW, self.weighter)
            weighter.update(counts=all_reduce_sum(class_counts(labels, self.num_classes)))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.weighting == "difficulty":
                weights = cast(DiffDW, self.weighter).update(logits.detach(), target)
            elif not self.update_on_call:
                weights = self.weighter.weights.clone()
            else:
                counts = all_reduce_sum(class_counts(target, self.num_classes))  # all ranks' batch
                weights = cast(DistDW, self.weighter).update(counts=counts)
        return self.loss(logits, target, weights)

    @property
    def class_weights(self) -> torch.Tensor:
        return self.weighter.weights
