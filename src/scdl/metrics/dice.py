"""Hard Dice per foreground class: the one implementation behind validation, the training test,
``src/eval.py`` (both protocols) and folder evaluation.

Counts come from one confusion matrix per case (a single ``torch.bincount`` of
``C * target + pred``: exact int64 counts, O(voxels), no one-hot). Library code was checked and
not used for the counting: torchmetrics' ``multiclass_stat_scores`` builds the same matrix but,
whenever deterministic algorithms are on, falls back to an (N voxels x C^2) int64 tensor (about
1 GB for one 96 x 96 x 64 volume with 14 classes); MONAI's ``DiceMetric`` one-hot encodes both maps
(C times the volume) and knows two of the four absent-class rules below. ``tests/test_metrics.py``
checks that the numbers equal MONAI's ``DiceMetric`` for the rules both have.

Rules when the ground truth of a class is empty (``absent``):

* ``zero``: 0 (the SCDL/GALoss validation rule);
* ``skip``: NaN, i.e. left out of means (the training test; MONAI ``ignore_empty=True``);
* ``one``: 1 when the prediction is empty too, else 0 (the paper protocol's both-empty rule;
  MONAI ``ignore_empty=False``);
* ``skip_both_empty``: NaN when the prediction is empty too, else 0 (the standard protocol).

A class predicted nowhere but present in the ground truth always scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np
import torch
from torchmetrics import Metric

AbsentPolicy = Literal["zero", "skip", "one", "skip_both_empty"]
ABSENT_POLICIES: tuple[str, ...] = get_args(AbsentPolicy)


def _as_index_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    # int32 halves the memory of int64 on large volumes; C^2 stays far below 2^31
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x).astype(np.int32, copy=False))
    return x.to(torch.int32)


def dice_counts(
    pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(|P_c & G_c|, |P_c|, |G_c|)`` for every class c in 0..C-1 as int64 tensors (C,).

    ``pred``, ``target``: integer label maps of the same shape (torch or numpy). Values outside
    ``[0, C)`` count for no class.
    """
    p, g = _as_index_tensor(pred).reshape(-1), _as_index_tensor(target).reshape(-1)
    if p.shape != g.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(target.shape)} differ")
    valid = (p >= 0) & (p < num_classes) & (g >= 0) & (g < num_classes)
    if not bool(valid.all()):  # labels outside [0, C): count each side alone
        pc = torch.bincount(p[(p >= 0) & (p < num_classes)], minlength=num_classes)
        gc = torch.bincount(g[(g >= 0) & (g < num_classes)], minlength=num_classes)
        inter = torch.bincount(g[valid & (p == g)], minlength=num_classes)
        return inter, pc, gc
    confusion = torch.bincount(g * num_classes + p, minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes)  # rows: target, columns: pred
    return confusion.diagonal(), confusion.sum(0), confusion.sum(1)  # all int64


def per_class_dice(
    pred: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    num_classes: int,
    absent: AbsentPolicy = "zero",
) -> torch.Tensor:
    """Hard Dice ``2 |P & G| / (|P| + |G|)`` of each foreground class 1..C-1 for one case.

    ``pred``, ``target``: integer maps (X, Y, Z). Returns (C - 1,) float64; ``absent`` decides the
    value of a class whose ground truth is empty (see the module docstring).
    """
    if absent not in ABSENT_POLICIES:
        raise ValueError(f"absent must be one of {ABSENT_POLICIES}, got {absent!r}")
    inter, pc, gc = (t[1:].to("cpu", torch.float64) for t in dice_counts(pred, target, num_classes))
    denom = pc + gc
    scores = torch.where(denom > 0, 2.0 * inter / denom.clamp_min(1), torch.zeros_like(denom))
    gt_empty, pred_empty = gc == 0, pc == 0
    nan = torch.full_like(scores, float("nan"))
    if absent == "skip":
        scores = torch.where(gt_empty, nan, scores)
    elif absent == "one":
        scores = torch.where(gt_empty & pred_empty, torch.ones_like(scores), scores)
    elif absent == "skip_both_empty":
        scores = torch.where(gt_empty & pred_empty, nan, scores)
    # "zero": gt empty -> 0 already (no overlap possible)
    return scores


def unique_cases(keys: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each case once, in key order: ``keys`` (N,) int64 and ``rows`` (N, K) -> the M sorted
    distinct keys (M,) and the row of each key's first occurrence (M, K)."""
    if keys.shape[0] != rows.shape[0]:
        raise ValueError(f"{keys.shape[0]} keys for {rows.shape[0]} rows")
    unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    position = torch.arange(keys.shape[0], device=keys.device)
    first = torch.full_like(unique, keys.shape[0]).scatter_reduce(0, inverse, position, "amin")
    return unique, rows[first]


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class PerCaseDice(Metric):
    """Collects one row of per-class Dice per case, keyed by the case's position in the evaluated
    data set; :meth:`compute` returns (N cases, C - 1) in key order, each case once.

    Exact under DDP: torchmetrics concatenates the ``rows`` / ``keys`` states of every rank (in
    rank order, padding uneven ones internally), and a distributed sampler that pads the data set
    so that every rank runs as many batches (PyTorch's, as Lightning and
    :class:`~scdl.data.datamodule.SemiSupervisedDataModule` use) scores a few cases twice: the
    copies share a key and are dropped, leaving the rows of a single process in its order (so its
    means, bit for bit). Case ids ride along (:meth:`compute_case_ids`)."""

    full_state_update = False
    # the add_state lists (concatenated tensors once torchmetrics has synced them across ranks)
    rows: list[torch.Tensor]
    keys: list[torch.Tensor]

    def __init__(self, num_classes: int, absent: AbsentPolicy = "zero") -> None:
        super().__init__()
        if absent not in ABSENT_POLICIES:
            raise ValueError(f"absent must be one of {ABSENT_POLICIES}, got {absent!r}")
        self.num_classes = num_classes
        self.absent = absent
        self.add_state("rows", default=[], dist_reduce_fx="cat")  # (1, C - 1) float32 per case
        self.add_state("keys", default=[], dist_reduce_fx="cat")  # (1,) int64 per case
        self._case_ids: dict[int, str] = {}  # key -> case id, this rank only

    def update(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        keys: torch.Tensor | Sequence[int] | None = None,
        case_ids: Sequence[str] | None = None,
    ) -> None:
        """``pred``, ``target``: (B, X, Y, Z) integer maps; ``keys``: (B,) the cases' positions in
        the data set (default: numbered on from the cases seen so far, single process only);
        ``case_ids``: B names (optional)."""
        if keys is None:
            if _distributed():  # every rank would number its own cases 0, 1, ...: keys collide
                raise ValueError("PerCaseDice under DDP needs keys (the cases' data-set positions)")
            keys = range(len(self.rows), len(self.rows) + len(pred))
        keys = [int(k) for k in keys]
        if len(keys) != len(pred) or (case_ids is not None and len(case_ids) != len(pred)):
            raise ValueError(f"{len(pred)} cases but {len(keys)} keys / case ids")
        for i, (p, t) in enumerate(zip(pred, target, strict=True)):
            row = per_class_dice(p, t, self.num_classes, self.absent)
            self.rows.append(row.to(self.device, torch.float32)[None])
            self.keys.append(torch.tensor([keys[i]], dtype=torch.long, device=self.device))
            if case_ids is not None:
                self._case_ids[keys[i]] = str(case_ids[i])

    def sync(self, *args, **kwargs) -> None:
        # torchmetrics stands a 1-D float32 tensor in for a rank's empty `cat` state, which does
        # not match the other ranks' (n, C - 1) rows (gloo aborts the all-gather): a rank
        # without cases contributes empty states of the right shape and dtype instead
        if _distributed() and isinstance(self.rows, list) and not self.rows:
            self.rows.append(torch.empty(0, self.num_classes - 1, device=self.device))
            self.keys.append(torch.empty(0, dtype=torch.long, device=self.device))
        super().sync(*args, **kwargs)

    def compute(self) -> torch.Tensor:
        rows: list[torch.Tensor] | torch.Tensor = self.rows
        keys: Any = self.keys  # a list while rows is one, a tensor while rows is one
        if isinstance(rows, list):
            if not rows:
                return torch.empty(0, self.num_classes - 1)
            rows, keys = torch.cat(rows), torch.cat(keys)
        return unique_cases(keys, rows)[1]

    def compute_case_ids(self) -> list[str]:
        """The case ids of every rank's cases (those updated with ``case_ids``), in
        :meth:`compute`'s row order; a collective under DDP: every rank calls it."""
        per_rank: list[Any] = [self._case_ids]
        if _distributed():
            per_rank = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(per_rank, self._case_ids)
        merged: dict[int, str] = {}
        for ids in per_rank:
            for key, case_id in ids.items():
                if merged.setdefault(key, case_id) != case_id:
                    raise ValueError(f"key {key} names two cases: {merged[key]}, {case_id}")
        return [merged[k] for k in sorted(merged)]

    def reset(self) -> None:
        super().reset()
        self._case_ids = {}
