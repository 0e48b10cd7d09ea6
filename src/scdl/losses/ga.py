"""Gradient-aware losses of GALoss (ECCV 2024): top-k class-equilibrium CE and GA soft Dice.

Both losses take raw logits ``(B, C, *spatial)`` and an integer label map ``(B, *spatial)`` and are
computed in float32 (also under bf16/fp16 autocast). See ``docs/method.md`` §4.1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _check_shapes(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.ndim != target.ndim + 1 or logits.shape[:1] + logits.shape[2:] != target.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be (B, C, *S) for target {tuple(target.shape)} (B, *S)"
        )


class GACELoss(nn.Module):
    """Top-k% cross-entropy with a class-equilibrium exponent (GACE).

    Per-voxel CE ``l_v`` is computed over the whole batch; the ``K = floor(k% * N)`` voxels with the
    largest CE are kept (``N`` = number of non-ignored voxels). With ``n_i`` the number of kept voxels
    of class ``i``::

        GACE = sum_i  sum_{kept v, y_v = i} l_v / ((n_i + 1e-10)^(1 - gamma) * K^gamma + 1e-10)

    i.e. each class contributes ``mean_i(l) * (n_i / K)^gamma``: ``gamma = 1`` is the plain mean CE of
    the kept voxels, ``gamma = 0`` the sum of per-class mean CEs (fully class-balanced).

    Args:
        k: percentage of hardest voxels kept (10 = hardest 10 %, 100 = all voxels).
        gamma: class-equilibrium exponent in [0, 1].
        ignore_index: label excluded from the loss (and from ``N``).

    Shapes: ``logits`` (B, C, *S) float, ``target`` (B, *S) integer in ``[0, C)`` or ``ignore_index``.
    Returns a scalar. Ties at the top-k boundary are broken by ``torch.topk`` (unspecified order).
    """

    def __init__(self, k: float = 10, gamma: float = 0.5, ignore_index: int = -100) -> None:
        super().__init__()
        if not 0 < k <= 100:
            raise ValueError(f"k must be in (0, 100], got {k}")
        self.k = float(k)
        self.gamma = float(gamma)
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_shapes(logits, target)
        num_classes = logits.shape[1]
        logits = logits.float()  # fp32 even under autocast
        target = target.long()
        ce = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        ce, target = ce.reshape(-1), target.reshape(-1)
        valid = target != self.ignore_index
        if not bool(valid.all()):
            ce, target = ce[valid], target[valid]
        # Same rounding as the reference (int(n * k / 100)).
        num_kept = int(ce.numel() * self.k / 100)
        if num_kept == 0:
            return logits.sum() * 0.0  # keeps the graph connected
        if num_kept == ce.numel():  # k = 100 (the unsupervised loss): no selection to make
            kept, kept_cls = ce, target
        else:
            kept, idx = torch.topk(ce, num_kept, sorted=False)
            kept_cls = target[idx]
        cls_sum = kept.new_zeros(num_classes).index_add_(0, kept_cls, kept)
        cls_count = torch.bincount(kept_cls, minlength=num_classes).to(kept.dtype)
        denom = (cls_count + 1e-10).pow(1.0 - self.gamma) * math.pow(num_kept, self.gamma) + 1e-10
        return (cls_sum / denom).sum()

    def extra_repr(self) -> str:
        return f"k={self.k}, gamma={self.gamma}, ignore_index={self.ignore_index}"


def ga_dice_per_class(
    probs: torch.Tensor,
    target: torch.Tensor,
    ga: bool = True,
    smooth: float = 1e-10,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Per-class GADice terms ``l_i`` (see :class:`GADiceLoss`) from probabilities.

    Shapes: ``probs`` (B, C, *S) softmax probabilities, ``target`` (B, *S) integer.
    Returns ``(C,)``; sums run over the batch and all voxels except ``ignore_index`` ones.
    """
    _check_shapes(probs, target)
    num_classes = probs.shape[1]
    target = target.long()
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    if not bool(valid.all()):
        probs = probs * valid.unsqueeze(1).to(probs.dtype)
    # Per-class sums without materialising a (B, C, *S) one-hot tensor.
    dims = [0, *range(2, probs.ndim)]
    p_sq = probs.square().sum(dim=dims)  # (C,)
    p_true = probs.gather(1, safe_target.unsqueeze(1)).reshape(-1)
    vflat = valid.reshape(-1)
    tgt_flat = safe_target.reshape(-1)[vflat]
    inter = p_true.new_zeros(num_classes).index_add_(0, tgt_flat, p_true[vflat])
    t_count = torch.bincount(tgt_flat, minlength=num_classes).to(probs.dtype)
    # Plain soft Dice (t^2 = t); for an absent class this is 1 - s / (sum p^2 + s).
    loss = 1.0 - (2.0 * inter + smooth) / (p_sq + t_count + smooth)
    if ga:
        n_vox = vflat.sum().to(probs.dtype)
        # beta = p / N with N = sum(1 - t_i) = number of (valid) voxels for an absent class;
        # detached so that the gradient w.r.t. p is exactly p / N. Clamp only guards the
        # unused branch of classes that fill the whole batch.
        absent = (probs.detach() * probs).sum(dim=dims) / (n_vox - t_count).clamp_min(1.0)
        loss = torch.where(t_count > 0, loss, absent)
    return loss


class GADiceLoss(nn.Module):
    """Soft Dice over the whole batch with probability-aware gradients for absent classes (GADice).

    With softmax probabilities ``p`` and one-hot target ``t`` summed over batch and space, for every
    class ``i`` (background included):

    * present in the batch target: ``l_i = 1 - (2 sum p_i t_i + s) / (sum p_i^2 + sum t_i^2 + s)``;
    * absent, ``ga=True``: ``l_i = sum sg(p_i / N) * p_i`` with ``N = sum (1 - t_i)`` (the number of
      voxels), i.e. value ``sum p_i^2 / N`` and gradient ``p_i / N`` (``sg`` = stop-gradient);
    * absent, ``ga=False``: the standard soft Dice term ``1 - s / (sum p_i^2 + s)`` (~1, vanishing
      gradient), i.e. plain soft Dice.

    ``GADice = mean_i l_i``. Voxels labelled ``ignore_index`` are excluded from every sum.

    Shapes: ``logits`` (B, C, *S) float (softmax applied here, in float32), ``target`` (B, *S)
    integer. Returns a scalar.
    """

    def __init__(self, ga: bool = True, smooth: float = 1e-10, ignore_index: int = -100) -> None:
        super().__init__()
        self.ga = ga
        self.smooth = smooth
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(dim=1)
        return ga_dice_per_class(probs, target, self.ga, self.smooth, self.ignore_index).mean()

    def extra_repr(self) -> str:
        return f"ga={self.ga}, smooth={self.smooth}, ignore_index={self.ignore_index}"


class GALoss(nn.Module):
    """``ce_weight * GACE(k, gamma) + dice_weight * GADice(ga)`` with CEDiceLoss's call signature.

    Shapes: ``logits`` (B, C, *S) float, ``target`` (B, *S) integer; returns a scalar.
    """

    def __init__(
        self,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        k: float = 10,
        gamma: float = 0.5,
        ga: bool = True,
        smooth: float = 1e-10,
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.ce = GACELoss(k=k, gamma=gamma, ignore_index=ignore_index)
        self.dice = GADiceLoss(ga=ga, smooth=smooth, ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.ce_weight:
            loss = loss + self.ce_weight * self.ce(logits, target)
        if self.dice_weight:
            loss = loss + self.dice_weight * self.dice(logits, target)
        return loss
