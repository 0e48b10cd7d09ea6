"""Adsh (adaptive thresholding, Guo & Li, ICML 2022) as DHC's ``code/train_adsh.py`` runs it on
CPS: per-class confidence thresholds, re-estimated from a window of recent unlabeled predictions so
that every class keeps the fraction of its voxels that the majority class keeps above 0.9; a class's
logit enters the cross pseudo-label loss only where its score passes its threshold
(docs/method.md §4.4c)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from scdl.frameworks.base import unlabeled_stream
from scdl.frameworks.cps import CPSModule, check_patch_state


class AdshModule(CPSModule):
    """CPS with Adsh's adaptive per-class thresholds.

    Per network (A, B): a window of the softmax of the last ``window_samples`` unlabeled patches.
    Each step the network's unlabeled softmax is stored; when the window is full (the reference's
    ``cur_iter >= tot_iter - 1``, checked before storing; that step's scores are not stored) the
    thresholds are re-estimated and the window restarts:

    * ``n_c`` = voxels of the window predicted as class ``c`` (argmax); the majority class
      ``k = argmax n``; ``rho = (#{score_k > thresh_major} + 1e-8) / (n_k + 1e-8)``;
    * ``t_c`` = the ``int(rho * n_c)``-th largest (0-based) class-``c`` score over all voxels of the
      window.

    Thresholds start at 0. The pseudo-label's provider decides what is sampled: for A's term,
    ``s_{v,c} = [softmax_c(logits_B)_v > t^B_c]`` (B's scores against B's thresholds), and, as the
    reference's ``ClassDependent_WeightedCrossEntropyLoss``, the loss is
    ``mean_v CE(logits_A,v * s_v, argmax(logits_B)_v)`` (masked classes' logits set to 0); B's term
    the same with A and B swapped (the reference: ``cps_loss_func(output_A, max_B, sample_map_B)``).

    Deviations: the window is not in checkpoints (AMOS: ~3 GB per network at 51 patches of
    16 x 96^3); a resumed run restarts the current window with the restored thresholds. An index
    ``int(rho * n_c)`` past the end (one class predicted everywhere) takes the smallest score (the
    reference fails). Under DDP each rank keeps its own window and thresholds.

    Args:
        patch_size: the training patch (P, P, P).
        window_samples: unlabeled patches per window; None (default): the reference's unlabeled
            cases // 4 of the run's split (at least 1), read when training starts.
        thresh_major: the majority class's confidence threshold (0.9 in the DHC script).
        **kwargs: see :class:`~scdl.frameworks.cps.CPSModule`.
    """

    thresholds: torch.Tensor
    window_fill: torch.Tensor
    window: torch.Tensor

    def __init__(
        self,
        *args,
        patch_size: Sequence[int] = (96, 96, 96),
        window_samples: int | None = None,
        thresh_major: float = 0.9,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if window_samples is not None and window_samples < 1:
            raise ValueError(f"window_samples must be >= 1, got {window_samples}")
        self.thresh_major = float(thresh_major)
        self.patch_size = tuple(int(p) for p in patch_size)
        c = self.num_classes
        self.register_buffer("thresholds", torch.zeros(2, c))
        self.register_buffer("window_fill", torch.zeros(2, dtype=torch.long))
        self.register_buffer("window", torch.zeros(2, 0, c, *self.patch_size), persistent=False)
        self.window_from_split = window_samples is None
        if window_samples is not None:
            self.set_window(int(window_samples))

    @property
    def window_samples(self) -> int:
        """Unlabeled patches per window (0 until sized from the split)."""
        return int(self.window.shape[1])

    def set_window(self, samples: int) -> None:
        """An empty window of ``samples`` softmax maps per network (2, N, C, P, P, P)."""
        shape = (2, samples, self.num_classes, *self.patch_size)
        self.window = torch.zeros(shape, device=self.window.device)

    def on_fit_start(self) -> None:
        """Sizes the window from the split where ``window_samples`` is None (DHC's
        ``u_len // 4``)."""
        super().on_fit_start()
        if self.window_from_split:
            cases, _ = unlabeled_stream(self, "window_samples")
            self.set_window(max(1, cases // 4))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        checkpoint["state_dict"]["window_fill"] = torch.zeros(2, dtype=torch.long)

    @torch.no_grad()
    def update_thresholds(self, net: int, unlabeled_logits: torch.Tensor) -> torch.Tensor:
        """Stores one network's unlabeled softmax (Bu, C, P, P, P) in its window, or, when the
        window is full, re-estimates its thresholds (C,) from it; returns the current ones."""
        fill = int(self.window_fill[net])
        if fill < self.window_samples - 1:
            rows = min(unlabeled_logits.shape[0], self.window_samples - fill)
            scores = unlabeled_logits[:rows].float().softmax(dim=1)
            self.window[net, fill : fill + rows] = scores
            self.window_fill[net] = fill + unlabeled_logits.shape[0]
            return self.thresholds[net]
        self.thresholds[net] = adaptive_thresholds(self.window[net], self.thresh_major)
        self.window_fill[net] = 0
        return self.thresholds[net]

    def cps_term(
        self,
        logits_a: torch.Tensor,
        logits_b: torch.Tensor,
        lo: int,
        n_l: int,
        y: torch.Tensor,
        skips: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        check_patch_state("Adsh's window", self.window, logits_a)
        a, b = logits_a[lo:], logits_b[lo:]
        if logits_a.shape[0] > n_l:
            self.update_thresholds(0, logits_a[n_l:].detach())
            self.update_thresholds(1, logits_b[n_l:].detach())
        target_a, target_b = a.detach().argmax(dim=1), b.detach().argmax(dim=1)
        # each network learns the other's pseudo-label where the other is above its thresholds
        return class_masked_ce(a, target_b, b, self.thresholds[1]) + class_masked_ce(
            b, target_a, a, self.thresholds[0]
        )


def adaptive_thresholds(scores: torch.Tensor, thresh_major: float) -> torch.Tensor:
    """Adsh's thresholds (C,) from a window of softmax scores (N, C, *S); see :class:`AdshModule`."""
    c = scores.shape[1]
    flat = scores.movedim(1, 0).reshape(c, -1)  # (C, N * V)
    voxel_num = torch.bincount(flat.argmax(dim=0), minlength=c).float()
    major = int(voxel_num.argmax())
    kept = (flat[major] > thresh_major).float().sum()
    rho = (kept + 1e-8) / (voxel_num[major] + 1e-8)  # float32, as the reference
    total = flat.shape[1]
    thresholds = torch.empty(c, device=scores.device)
    for i in range(c):
        k = min(int(rho * voxel_num[i]), total - 1)  # the k-th largest, 0-based
        thresholds[i] = torch.kthvalue(flat[i], total - k).values
    return thresholds


def class_masked_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    provider_logits: torch.Tensor,
    thresholds: torch.Tensor,
) -> torch.Tensor:
    """``mean_v CE(logits_v * s_v, target_v)``, ``s_{v,c} = [softmax_c(provider_logits)_v > t_c]``
    (no gradient): logits and provider_logits (B, C, *S), target (B, *S), the provider's
    thresholds (C,). The provider is the network whose argmax is ``target``."""
    with torch.no_grad():
        shape = (1, -1) + (1,) * (logits.ndim - 2)
        sample = (provider_logits.float().softmax(dim=1) > thresholds.view(shape)).float()
    return F.cross_entropy(logits.float() * sample, target.long())
