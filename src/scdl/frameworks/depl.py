"""DePL (debiased pseudo-labelling, after Wang et al., CVPR 2022 "Debiased learning from naturally
imbalanced pseudo-labels") as DHC's ``code/train_depl.py`` runs it on CPS: each network's
pseudo-labels are debiased by its running mean prediction before they supervise the other network
(docs/method.md §4.4c)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from scdl.frameworks.cps import CPSModule, check_patch_state
from scdl.losses.consistency import voxel_weighted_ce
from scdl.utils.distributed import all_reduce_sum, is_distributed


class DePLModule(CPSModule):
    """CPS with debiased, confidence-masked pseudo-labels.

    Per network ``n`` a running mean prediction ``qhat_n`` (1, C, P, P, P) (per voxel of the
    patch, as the reference; starts at ``1 / C``). Each step, on samples ``lo:``:

    * debiased probabilities ``p_n = softmax(logits_n - tau * log qhat_n)`` (detached), pseudo-label
      ``argmax p_n`` and mask ``max p_n >= threshold``;
    * then ``qhat_n <- m * qhat_n + (1 - m) * mean_batch softmax(logits_n of the unlabeled samples)``
      (mean over all DDP ranks' samples);
    * ``L_cps = mean_v CE(A_v, argmax p_B) [max p_B >= t] + mean_v CE(B_v, argmax p_A) [max p_A >= t]``.

    The reference also adds ``tau * log qhat`` to the unlabeled logits ("adaptive marginal
    loss") after the supervised loss, but its cross pseudo-label loss reads the unmodified logits,
    so that line changes nothing; it is not reproduced.

    Args:
        patch_size: the training patch (P, P, P): the shape of ``qhat``.
        tau: debiasing strength (1.0); threshold: confidence mask (0.9); qhat_momentum: 0.99.
        **kwargs: see :class:`~scdl.frameworks.cps.CPSModule`.
    """

    qhat: torch.Tensor

    def __init__(
        self,
        *args,
        patch_size: Sequence[int] = (96, 96, 96),
        tau: float = 1.0,
        threshold: float = 0.9,
        qhat_momentum: float = 0.99,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.tau, self.threshold, self.qhat_momentum = tau, threshold, qhat_momentum
        shape = (2, 1, self.num_classes, *(int(p) for p in patch_size))  # A, B
        self.register_buffer("qhat", torch.full(shape, 1.0 / self.num_classes))

    @torch.no_grad()
    def debiased_pseudo_labels(
        self, logits: torch.Tensor, qhat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, P, P, P) logits, (1, C, P, P, P) qhat -> pseudo-labels (B, P, P, P) and their
        0/1 confidence mask (B, P, P, P)."""
        probs = (logits.float() - self.tau * torch.log(qhat)).softmax(dim=1)
        confidence, labels = probs.max(dim=1)
        return labels, (confidence >= self.threshold).float()

    @torch.no_grad()
    def update_qhat(self, net: int, unlabeled_logits: torch.Tensor) -> None:
        """EMA of the mean softmax (over the batch, all ranks) of one network's unlabeled logits."""
        probs = unlabeled_logits.float().softmax(dim=1)
        if is_distributed():
            total = all_reduce_sum(probs.sum(dim=0, keepdim=True))
            count = all_reduce_sum(torch.tensor(float(probs.shape[0]), device=probs.device))
            mean = total / count
        else:
            mean = probs.mean(dim=0, keepdim=True)
        self.qhat[net].mul_(self.qhat_momentum).add_(mean, alpha=1 - self.qhat_momentum)

    def cps_term(
        self,
        logits_a: torch.Tensor,
        logits_b: torch.Tensor,
        lo: int,
        n_l: int,
        y: torch.Tensor,
        skips: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        a, b = logits_a[lo:], logits_b[lo:]
        check_patch_state("DePL's running prediction", self.qhat, a)
        target_a, mask_a = self.debiased_pseudo_labels(a, self.qhat[0])
        target_b, mask_b = self.debiased_pseudo_labels(b, self.qhat[1])
        if logits_a.shape[0] > n_l:  # the reference updates from the unlabeled samples
            self.update_qhat(0, logits_a[n_l:].detach())
            self.update_qhat(1, logits_b[n_l:].detach())
        return voxel_weighted_ce(a, target_b, mask_b) + voxel_weighted_ce(b, target_a, mask_a)
