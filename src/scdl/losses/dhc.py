"""DHC (MICCAI 2023) class re-weighting: distribution-aware (DistDW) and difficulty-aware (DiffDW).

Both weighters are stateful ``nn.Module``s whose state lives in registered buffers, so Lightning
checkpoints save and restore it. Their ``update`` methods return per-class weights ``(C,)`` to be
passed to :class:`WeightedCEDiceLoss`. See ``docs/method.md`` §4.4.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from scdl.utils.distributed import all_reduce_sum


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Voxel count per class of an integer label map of any shape; values outside
    ``[0, num_classes)`` (e.g. an ignore label) are skipped. Returns float64 ``(C,)``."""
    flat = labels.reshape(-1).long()
    flat = flat[(flat >= 0) & (flat < num_classes)]
    return torch.bincount(flat, minlength=num_classes).double()


def dice_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class ``(tp, |pred|, |target|)`` voxel counts, int64 ``(3, C)``, of two integer label
    maps of the same shape; voxels whose target is outside ``[0, C)`` are skipped. Counts add up
    over batches and DDP ranks (:func:`hard_batch_dice` of the sum is the Dice of the union)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = (target >= 0) & (target < num_classes)  # drop ignore labels
    pred, target = pred[keep], target[keep]
    tp = torch.bincount(target[pred == target], minlength=num_classes)[:num_classes]
    n_pred = torch.bincount(pred, minlength=num_classes)[:num_classes]
    n_true = torch.bincount(target, minlength=num_classes)[:num_classes]
    return torch.stack([tp, n_pred, n_true])


def dice_from_counts(counts: torch.Tensor, smooth: float = 1e-8) -> torch.Tensor:
    """DHC's hard Dice ``(C,)`` float32 from :func:`dice_counts` ``(3, C)``."""
    tp, n_pred, n_true = counts.float()
    # 2tp + fp + fn = |pred_c| + |true_c|
    return (2 * tp + smooth) / (n_pred + n_true + smooth + 1e-8)


def hard_batch_dice(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, smooth: float = 1e-8
) -> torch.Tensor:
    """DHC's per-class hard Dice over the whole batch, background included.

    ``D_c = (2 tp + smooth) / (2 tp + fp + fn + smooth + 1e-8)`` (a class absent from both maps
    therefore scores 0.5, as in DHC's ``SoftDiceLoss(smooth=1e-8)``).

    Shapes: ``pred`` and ``target`` integer label maps of the same shape, e.g. (B, X, Y, Z); voxels
    whose target is outside ``[0, C)`` are skipped. Returns float32 ``(C,)``.
    """
    return dice_from_counts(dice_counts(pred, target, num_classes), smooth)


class DistDW(nn.Module):
    """Distribution-aware class weights from voxel counts (DHC ``DistDW``).

    For counts ``n_c``: ``r_c = (max n + 1e-8) / (n_c + 1e-8)`` and
    ``w_c = C * log r_c / max_c log r_c``; the running weights are an EMA
    ``w <- m * w + (1 - m) * w_cur`` (``m = momentum``). Rare classes get weights up to ``C``; the most
    frequent class (usually background) gets 0. If all counts are equal (``max log r = 0``) the
    current weights are uniform ``C`` (DHC would produce NaN).

    Typical use: :meth:`init_weights` with the labeled-set counts, then :meth:`update` each
    iteration with the pseudo labels of the unlabeled batch. The first ``update`` without a prior
    ``init_weights`` sets the weights directly (no EMA from an arbitrary start).

    Buffers: ``weights`` (C,), ``initialized`` (bool scalar).
    """

    weights: torch.Tensor
    initialized: torch.Tensor

    def __init__(self, num_classes: int, momentum: float = 0.99) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.momentum = momentum
        self.register_buffer("weights", torch.full((num_classes,), float(num_classes)))
        self.register_buffer("initialized", torch.tensor(False))

    def weights_from_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """Instantaneous DistDW weights ``(C,)`` (float32) for counts ``(C,)``."""
        counts = torch.as_tensor(counts, dtype=torch.float64, device=self.weights.device)
        log_r = torch.log((counts.max() + 1e-8) / (counts + 1e-8))
        if float(log_r.max()) <= 0.0:
            return torch.full_like(self.weights, float(self.num_classes))
        return (self.num_classes * log_r / log_r.max()).to(self.weights.dtype)

    @torch.no_grad()
    def init_weights(self, counts: torch.Tensor) -> torch.Tensor:
        """Sets the weights from (labeled-set) counts ``(C,)`` without EMA; returns them."""
        self.weights.copy_(self.weights_from_counts(counts))
        self.initialized.fill_(True)
        return self.weights.clone()

    @torch.no_grad()
    def update(
        self, labels: torch.Tensor | None = None, *, counts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """EMA update from an integer label map (any shape) or from class ``counts`` (C,).

        Returns the new weights ``(C,)`` (a copy, safe to keep).
        """
        if (labels is None) == (counts is None):
            raise ValueError("pass exactly one of labels or counts")
        if counts is None:
            counts = class_counts(cast(torch.Tensor, labels), self.num_classes)  # labels given
        current = self.weights_from_counts(counts)
        if bool(self.initialized):
            self.weights.mul_(self.momentum).add_(current, alpha=1.0 - self.momentum)
        else:
            self.weights.copy_(current)
            self.initialized.fill_(True)
        return self.weights.clone()


class DiffDW(nn.Module):
    """Difficulty-aware class weights from the per-class hard Dice of the labeled batch (DHC ``DiffDW``).

    With the current Dice ``D`` (DHC's smoothed hard Dice, > 0; an exact 0 is lifted to the
    smallest normal float to keep ``log`` finite), the previous Dice
    ``D'`` (initially 1e-8), ``delta = D - D'`` and ``m = (a - 1) / a`` (``a = accumulate_iters``)::

        learn   <- m * learn   + (1 - m) * [delta > 0]  * delta * log(D / D')
        unlearn <- m * unlearn + (1 - m) * [delta <= 0] * delta * log(D / D')
        difficulty = ((unlearn + 1e-8) / (learn + 1e-8)) ** (1 / 5)
        beta    <- m * beta + (1 - m) * (1 - D)          (beta starts at 1)
        w = C * difficulty * beta / max(difficulty * beta)

    Before the first update the weights are uniform ``C`` (DHC's ``init_weights``).

    Buffers: ``last_dice``, ``learn``, ``unlearn``, ``beta``, ``weights`` (all (C,)).
    """

    last_dice: torch.Tensor
    learn: torch.Tensor
    unlearn: torch.Tensor
    beta: torch.Tensor
    weights: torch.Tensor

    def __init__(self, num_classes: int, accumulate_iters: int = 50) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.momentum = (accumulate_iters - 1) / accumulate_iters
        self.register_buffer("last_dice", torch.full((num_classes,), 1e-8))
        self.register_buffer("learn", torch.zeros(num_classes))
        self.register_buffer("unlearn", torch.zeros(num_classes))
        self.register_buffer("beta", torch.ones(num_classes))
        self.register_buffer("weights", torch.full((num_classes,), float(num_classes)))

    @torch.no_grad()
    def update_from_dice(self, dice: torch.Tensor) -> torch.Tensor:
        """One update from per-class Dice ``(C,)`` in [0, 1]; returns the new weights ``(C,)``."""
        dice = torch.as_tensor(dice, dtype=self.last_dice.dtype, device=self.last_dice.device)
        # DHC's smoothed Dice is never 0 (a present, unpredicted class scores ~1e-8 / |target|),
        # so its log is finite: only an exact 0 from another source is lifted, to the smallest
        # normal float (a clamp at 1e-8 moved such classes' weights by up to 0.19 of ~5)
        dice = dice.clamp_min(torch.finfo(dice.dtype).tiny)
        m = self.momentum
        delta = dice - self.last_dice
        log_ratio = torch.log(dice / self.last_dice)
        zero = torch.zeros_like(delta)
        cur_learn = torch.where(delta > 0, delta, zero) * log_ratio
        cur_unlearn = torch.where(delta <= 0, delta, zero) * log_ratio
        self.last_dice.copy_(dice)
        self.learn.mul_(m).add_(cur_learn, alpha=1 - m)
        self.unlearn.mul_(m).add_(cur_unlearn, alpha=1 - m)
        self.beta.mul_(m).add_(1.0 - dice, alpha=1 - m)
        difficulty = ((self.unlearn + 1e-8) / (self.learn + 1e-8)).pow(0.2)
        w = difficulty * self.beta
        self.weights.copy_(self.num_classes * w / w.max())
        return self.weights.clone()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Update from a prediction and the labeled target; returns the new weights ``(C,)``.

        ``pred``: logits/probabilities (B, C, *S) (argmax over dim 1) or a label map (B, *S);
        ``target``: integer label map (B, *S). Under DDP the Dice is that of all ranks' batches
        (their counts are summed), so every rank makes the same update.
        """
        if pred.ndim == target.ndim + 1:
            pred = pred.argmax(dim=1)
        counts = all_reduce_sum(dice_counts(pred, target, self.num_classes))
        return self.update_from_dice(dice_from_counts(counts))


class WeightedCEDiceLoss(nn.Module):
    """Class-weighted CE + class-weighted batch soft Dice (DHC's ``DC_and_CE_loss(w_dc=w, w_ce=w)``).

    * CE: ``F.cross_entropy(logits, target, weight=w)`` (weighted mean, ``sum w_y l / sum w_y``).
    * Dice over the whole batch with ``D_c = (2 tp_c + smooth) / (sum p_c + sum t_c + smooth + 1e-8)``
      and term ``mean_c w_c (1 - D_c)`` over foreground classes (``include_background=False``).
      DHC writes ``-mean_c w_c D_c``; the two differ by the constant ``mean_c w_c`` only.

    ``class_weights=None`` means all ones (then the loss is the unweighted CE + soft Dice).
    Use ``dice_weight=0`` for DHC's weighted-CE-only CPS loss.

    Shapes: ``logits`` (B, C, *S) float, ``target`` (B, *S) integer, ``class_weights`` (C,).
    """

    def __init__(
        self,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
        include_background: bool = False,
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.smooth = smooth
        self.include_background = include_background
        self.ignore_index = ignore_index

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        class_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if logits.ndim != target.ndim + 1:
            raise ValueError(
                f"logits {tuple(logits.shape)} must have one more dim (C) than target {tuple(target.shape)}"
            )
        num_classes = logits.shape[1]
        logits = logits.float()
        target = target.long()
        if class_weights is None:
            class_weights = logits.new_ones(num_classes)
        w = class_weights.detach().to(device=logits.device, dtype=torch.float32)
        loss = logits.new_zeros(())
        if self.ce_weight:
            ce = F.cross_entropy(logits, target, weight=w, ignore_index=self.ignore_index)
            loss = loss + self.ce_weight * ce
        if self.dice_weight:
            valid = target != self.ignore_index
            probs = logits.softmax(dim=1) * valid.unsqueeze(1)
            onehot = F.one_hot(target.clamp(0, num_classes - 1), num_classes).movedim(-1, 1)
            onehot = onehot * valid.unsqueeze(1)
            dims = [0, *range(2, logits.ndim)]
            tp = (probs * onehot).sum(dims)
            denom = probs.sum(dims) + onehot.sum(dims) + self.smooth + 1e-8
            dice = (2 * tp + self.smooth) / denom
            first = 0 if self.include_background else 1
            loss = loss + self.dice_weight * (w[first:] * (1.0 - dice[first:])).mean()
        return loss
