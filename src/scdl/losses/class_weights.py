"""Class weights from voxel counts, as the re-weighting baselines of DHC's benchmark compute them
(docs/method.md §4.4c): CReST, SimiS and CLD, each a CE + soft Dice loss whose class weights come
from the labeled set's counts and (CReST, SimiS) follow an EMA of the network's own pseudo-labels.

:class:`CountWeightedLoss` has the interface CPS already uses for DHC's distribution weights
(``wants_labeled_counts`` / ``init_from_counts`` at the start of training, ``observe`` with the
network's pseudo-labels before each step's losses, ``class_weights`` handed to the cross
pseudo-label term), so each baseline is a loss config on the CPS framework.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from scdl.losses.dhc import WeightedCEDiceLoss, class_counts
from scdl.utils.distributed import all_reduce_sum

Rule = Literal["crest", "simis", "cld"]


def crest_weights(counts: torch.Tensor) -> torch.Tensor:
    """CReST's class weights ``(C,)`` float64 (DHC ``code/train_crest.py``, eq. 1 of CReST).

    ``mu_c = ((n_c + 1e-8) / (max n + 1e-8)) ** (1/3)``; with the classes ranked by ``mu``
    descending (ties in class order), the class of rank ``l`` gets the ``mu`` of rank ``C - 1 - l``:
    the most frequent class gets the rarest class's ``mu`` and the rarest gets 1.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    mu = ((counts + 1e-8) / (counts.max() + 1e-8)).pow(1.0 / 3.0)
    ranked = sorted(range(len(mu)), key=lambda c: float(mu[c]), reverse=True)  # stable
    weights = torch.empty_like(mu)
    for rank, c in enumerate(ranked):
        weights[c] = mu[ranked[len(mu) - 1 - rank]]
    return weights


def simis_weights(counts: torch.Tensor) -> torch.Tensor:
    """SimiS's class weights ``(C,)`` float64 (DHC ``code/train_simis.py``):
    ``C * (max P - P_c)`` with ``P_c = (n_c + 1e-8) / (sum n + 1e-8)`` (the most frequent class
    gets 0)."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    p = (counts + 1e-8) / (counts.sum() + 1e-8)
    return len(counts) * (p.max() - p)


def cld_weights(counts: torch.Tensor) -> torch.Tensor:
    """CLD's class weights ``(C,)`` float64 (DHC ``code/train_cld.py``):
    ``(max n / n_c) ** (1/3)``. A class absent from the counts would get an infinite weight in the
    reference (and a NaN loss); here its count is taken as 1 voxel (the largest finite weight)."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    return (counts.max() / counts.clamp_min(1.0)).pow(1.0 / 3.0)


RULES = {"crest": crest_weights, "simis": simis_weights, "cld": cld_weights}


class CountWeightedLoss(nn.Module):
    """Class-weighted CE + foreground soft Dice (DHC's ``DC_and_CE_loss(w_dc=w, w_ce=w)``, see
    :class:`~scdl.losses.dhc.WeightedCEDiceLoss`) with weights ``w`` from voxel counts.

    * ``crest``: ``w`` = :func:`crest_weights` of the labeled set, then after every
      :meth:`observe` ``w <- m w + (1 - m) crest_weights(counts of the pseudo-labels)``.
    * ``simis``: ``w <- m * C + (1 - m) simis_weights(labeled set)`` (the reference's EMA from
      uniform ``C``), then the same EMA of :func:`simis_weights` after every :meth:`observe`.
    * ``cld``: ``w`` = :func:`cld_weights` of the labeled set, fixed.

    Before :meth:`init_from_counts` the weights are uniform 1 and the first :meth:`observe` sets
    them (no EMA from an arbitrary start), as :class:`~scdl.losses.dhc.DistDW` does; ``cld``
    refuses instead (its weights are never updated, so they must be the labeled set's).

    Args:
        num_classes: C.
        rule: ``crest`` | ``simis`` | ``cld``.
        momentum: EMA momentum of the weights (0.99 in both references).
        observes: which samples' pseudo-labels CPS hands to :meth:`observe`: ``unlabeled``
            (CReST: ``output_u``) or ``all`` (SimiS: the whole batch).
        ce_weight, dice_weight: weights of the two terms.

    Shapes: ``logits`` (B, C, *S), ``target`` (B, *S) integer. Buffers: ``weights`` (C,),
    ``initialized`` (bool scalar), both in the checkpoint.
    """

    weights: torch.Tensor
    initialized: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        rule: Rule = "crest",
        momentum: float = 0.99,
        observes: Literal["unlabeled", "all"] = "unlabeled",
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"rule must be one of {sorted(RULES)}, got {rule!r}")
        if observes not in ("unlabeled", "all"):
            raise ValueError(f"observes must be unlabeled|all, got {observes!r}")
        self.num_classes = int(num_classes)
        self.rule = rule
        self.momentum = float(momentum)
        self.observes = observes
        self.loss = WeightedCEDiceLoss(ce_weight, dice_weight)
        self.register_buffer("weights", torch.ones(self.num_classes))
        self.register_buffer("initialized", torch.tensor(False))

    def rule_weights(self, counts: torch.Tensor) -> torch.Tensor:
        """This rule's weights ``(C,)`` (float32, on the buffer's device) for counts ``(C,)``."""
        return RULES[self.rule](counts.cpu()).to(self.weights)

    @property
    def wants_labeled_counts(self) -> bool:
        """Not yet initialised (a restored checkpoint is)."""
        return not bool(self.initialized)

    @torch.no_grad()
    def init_from_counts(self, counts: torch.Tensor) -> None:
        """The weights of the labeled set's voxel counts ``(C,)``."""
        current = self.rule_weights(torch.as_tensor(counts))
        if self.rule == "simis":  # the reference's EMA(weights, C * ones)
            current = self.momentum * self.num_classes + (1.0 - self.momentum) * current
        self.weights.copy_(current)
        self.initialized.fill_(True)

    @torch.no_grad()
    def observe(self, labels: torch.Tensor) -> None:
        """One EMA step from a pseudo-label map (any shape; all DDP ranks' counts summed).
        ``cld`` weights are fixed once initialised."""
        if self.rule == "cld":
            if not bool(self.initialized):
                # CLD's weights are fixed from the labeled set: pseudo-labels of an untrained
                # network would fix arbitrary weights for the whole run
                raise ValueError(
                    "loss=cld: the class weights come from the labeled set's voxel counts, read "
                    "when training starts from the data module's split and cache_dir; this run "
                    "has none: use scdl's data module, or call init_from_counts(counts) first"
                )
            return
        counts = all_reduce_sum(class_counts(labels, self.num_classes))
        current = self.rule_weights(counts)
        if bool(self.initialized):
            self.weights.mul_(self.momentum).add_(current, alpha=1.0 - self.momentum)
        else:
            self.weights.copy_(current)
            self.initialized.fill_(True)

    @property
    def class_weights(self) -> torch.Tensor:
        return self.weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, target, self.weights.clone())
