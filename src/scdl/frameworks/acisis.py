"""Acisis as DHC's ``code/train_acisis.py`` runs it: a mean teacher whose pseudo-label CE keeps
voxels at random by class, with class rates from a fuzzy-rank fusion of three confidence criteria
of the student on its labeled voxels, and weighted by the voxel's confidence (docs/method.md §4.4c).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from scdl.frameworks.base import unlabeled_stream
from scdl.frameworks.mean_teacher import MeanTeacherModule
from scdl.losses.consistency import voxel_weighted_ce
from scdl.utils.distributed import all_reduce_mean

PENALTY_RANK = 0.632  # the reference's P_FR: rank of a class outside a criterion's top m
PENALTY_CONF = 0.0  # P_CCF: its confidence factor there


class AcisisModule(MeanTeacherModule):
    """Mean teacher with Acisis's class-wise sampling of the pseudo-label loss.

    Each step, from the student's labeled logits and labels (:meth:`observe_labeled`), per class
    ``c`` with ``n_c`` labeled voxels: entropy ``sum p_c log p`` (over classes), confidence ``p_c``
    and margin ``max p - p_c``, summed over the voxels of class ``c`` and divided by ``n_c``. The
    reference multiplies a (Bl, ...) map by a (Bl, 1, ...) mask, which pairs every sample's scores
    with every sample's labels; ``cross_sample_statistics=true`` (default) keeps that, ``false``
    pairs each sample with its own labels (the same for Bl = 1).

    Every ``update_every`` steps (the reference: one epoch of the unlabeled loader), with the
    criteria averaged over those steps and soft-maxed over classes (``R``, 3 x C):
    fuzzy ranks ``K = 1 - exp(-exp(-2 R))``, kept for each criterion's ``top_m`` smallest and
    ``0.632`` elsewhere; ``FR = sum K`` over criteria; ``CFS = 1 - sum R' / 3`` with ``R'`` = ``R``
    set to 0 where ``K`` is the penalty; ``CC <- 0.99 CC + 0.01 (CFS * FR) / max`` (CC starts at
    0); the sampling rate ``r = ((1 - CC) / max(1 - CC)) ** lambda`` (starts at 1).

    Loss on the unlabeled patches: ``mean_v CE(s_v, argmax t_v) * m_v * (max p^s_v) ** beta`` with
    ``t`` the teacher's logits (no input noise) and ``m_v`` = [u > 1 - r_c] for the student's own
    predicted class ``c`` (``u ~ U(0, 1)``).

    Args:
        update_every: steps per rate update; None (default): one epoch of the reference's
            unlabeled loader, ceil(unlabeled cases / unlabeled batch size) of the run's split,
            read when training starts.
        rate_momentum: EMA of CC (0.99); top_m: 12; rate_power (lambda): 2.5; beta: 1.5.
        cross_sample_statistics: see above.
        **kwargs: see :class:`~scdl.frameworks.mean_teacher.MeanTeacherModule`.
    """

    criteria: torch.Tensor
    criteria_steps: torch.Tensor
    class_confidence: torch.Tensor
    sampling_rate: torch.Tensor

    def __init__(
        self,
        *args,
        update_every: int | None = None,
        rate_momentum: float = 0.99,
        top_m: int = 12,
        rate_power: float = 2.5,
        beta: float = 1.5,
        cross_sample_statistics: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if update_every is not None and update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}")
        self.update_every, self.rate_momentum = int(update_every or 0), rate_momentum
        self.update_from_split = update_every is None
        self.top_m, self.rate_power, self.beta = int(top_m), rate_power, beta
        self.cross_sample_statistics = cross_sample_statistics
        c = self.num_classes
        self.register_buffer("criteria", torch.zeros(3, c, dtype=torch.float64))
        self.register_buffer("criteria_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("class_confidence", torch.zeros(c))  # the reference's CC
        self.register_buffer("sampling_rate", torch.ones(c))

    def on_fit_start(self) -> None:
        """One unlabeled epoch per rate update where ``update_every`` is None (DHC:
        ``len(unlabeled_loader)``, no drop_last)."""
        super().on_fit_start()
        if self.update_from_split:
            cases, batch = unlabeled_stream(self, "update_every")
            self.update_every = max(1, math.ceil(cases / batch))

    @torch.no_grad()
    def labeled_criteria(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(3, C) entropy, confidence and margin per class of one labeled batch (see the class)."""
        p = logits.float().softmax(dim=1)  # (B, C, *S)
        log_p_sum = torch.log(p + 1e-12).sum(dim=1)  # sum over classes of log p, (B, *S)
        margin = p.max(dim=1).values.unsqueeze(1) - p  # (B, C, *S)
        onehot = torch.nn.functional.one_hot(labels.long(), self.num_classes).movedim(-1, 1)
        onehot = onehot.to(p.dtype)  # (B, C, *S)
        n = onehot.sum(dim=[0, *range(2, onehot.ndim)]) + 1e-12  # (C,)
        per_class = [p * log_p_sum.unsqueeze(1), p, margin]
        if self.cross_sample_statistics:  # every sample's scores x every sample's labels
            mask = onehot.sum(dim=0)  # (C, *S)
            sums = [(f.sum(dim=0) * mask).flatten(1).sum(1) for f in per_class]
        else:
            sums = [(f * onehot).transpose(0, 1).flatten(1).sum(1) for f in per_class]
        return torch.stack(sums) / n

    @torch.no_grad()
    def observe_labeled(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        # per-class means of this rank's batch: averaged over ranks, so the softmax of
        # update_sampling_rate sees the reference's scale whatever the rank count
        self.criteria += all_reduce_mean(self.labeled_criteria(logits, labels).double())
        self.criteria_steps += 1
        if int(self.criteria_steps) == self.update_every:
            self.update_sampling_rate()

    @torch.no_grad()
    def update_sampling_rate(self) -> None:
        """The fuzzy-rank fusion of the accumulated criteria (see the class); resets them."""
        steps = int(self.criteria_steps)
        r_norm = (self.criteria / steps).softmax(dim=1).cpu().numpy()  # (3, C)
        ranks = fuzzy_ranks(r_norm, self.top_m)
        fr = ranks.sum(axis=0)
        cf = np.where(ranks == PENALTY_RANK, PENALTY_CONF, r_norm)
        cfs = 1 - cf.sum(axis=0) / cf.shape[0]
        current = torch.as_tensor(cfs * fr, dtype=torch.float32, device=self.criteria.device)
        current = current / current.max()
        cc = self.class_confidence
        cc.mul_(self.rate_momentum).add_(current, alpha=1 - self.rate_momentum)
        rate = 1 - cc
        self.sampling_rate.copy_((rate / (rate.max() + 1e-12)).pow(self.rate_power))
        self.criteria.zero_()
        self.criteria_steps.zero_()

    @torch.no_grad()
    def sample_map(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, *S) voxel weights: [u > 1 - r_c] for the predicted class c, times (max p) ** beta."""
        p = logits.float().softmax(dim=1)
        confidence, pred = p.max(dim=1)
        u = torch.rand(pred.shape, device=logits.device)
        keep = (u > 1 - self.sampling_rate[pred]).float()
        return keep * confidence.pow(self.beta)

    def consistency(self, student_logits: torch.Tensor, x_unlabeled: torch.Tensor) -> torch.Tensor:
        target = self.teacher_logits(x_unlabeled).argmax(dim=1)
        return voxel_weighted_ce(student_logits, target, self.sample_map(student_logits))


def fuzzy_ranks(r_norm: np.ndarray, top: int) -> np.ndarray:
    """(criteria, C) -> Gompertz ranks ``1 - exp(-exp(-2 r))``, kept at each criterion's ``top``
    smallest values (every class equal to one of them) and :data:`PENALTY_RANK` elsewhere."""
    ranks = np.vectorize(lambda v: 1 - math.exp(-math.exp(-2.0 * v)))(r_norm)
    out = np.full(ranks.shape, PENALTY_RANK)
    for i, row in enumerate(ranks):
        for k in range(min(top, row.size)):
            hit = row == np.partition(row, k)[k]
            out[i][hit] = row[hit]
    return out
