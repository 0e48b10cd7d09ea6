"""CLD (Lin et al., MICCAI 2022: calibrating label distribution for class-imbalanced
barely-supervised segmentation) as DHC's ``code/train_cld.py`` runs it: CPS whose losses carry the
labeled set's fixed class weights and whose cross pseudo-label term keeps each voxel at random,
more often for classes the network is less confident about (docs/method.md §4.4c)."""

from __future__ import annotations

import torch

from scdl.frameworks.cps import CPSModule, _class_weights
from scdl.losses.consistency import voxel_weighted_ce
from scdl.utils.distributed import all_reduce_sum


class CLDModule(CPSModule):
    """CPS with CLD's confidence-driven voxel sampling.

    Per network ``n`` (A and B), a confidence bank ``conf_n`` (C,): the mean softmax score of each
    class on the labeled voxels of that class, accumulated over ``bank_every`` iterations, then
    ``conf_n <- conf_new`` (first time) or ``bank_momentum * conf_n + (1 - m) * conf_new``. It
    starts random (``torch.rand``; B starts as a copy of A), as in the reference. The sampling rate
    ``r_c = ((1 - conf_c) / (max(1 - conf) + 1e-12)) ** gamma``; a voxel whose own prediction is
    class ``c`` enters the cross pseudo-label loss when ``u > 1 - r_c`` (``u ~ U(0, 1)``):

    ``L_cps = mean_v w_{y_v} CE(A_v, argmax B_v) m^A_v + mean_v w_{y_v} CE(B_v, argmax A_v) m^B_v``

    with ``w`` the student's class weights (``loss=cld``: the labeled set's ``(max n / n) ** 1/3``)
    and ``m^A`` A's own sample map (the reference samples each network's loss by its own
    prediction).

    Args:
        bank_every: iterations per confidence-bank update (the reference's ``--confs_iter`` 8).
        bank_momentum: EMA momentum of the bank (0.999).
        gamma: exponent of the sampling rate (0.5).
        **kwargs: see :class:`~scdl.frameworks.cps.CPSModule`.
    """

    conf_a: torch.Tensor
    conf_b: torch.Tensor
    conf_sum: torch.Tensor
    conf_count: torch.Tensor
    bank_iters: torch.Tensor

    def __init__(
        self, *args, bank_every: int = 8, bank_momentum: float = 0.999, gamma: float = 0.5, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        if bank_every < 1:
            raise ValueError(f"bank_every must be >= 1, got {bank_every}")
        self.bank_every, self.bank_momentum, self.gamma = int(bank_every), bank_momentum, gamma
        c = self.num_classes
        self.register_buffer("conf_a", torch.rand(c))
        self.register_buffer("conf_b", self.conf_a.clone())
        self.register_buffer("conf_sum", torch.zeros(2, c, dtype=torch.float64))
        self.register_buffer("conf_count", torch.zeros(2, c, dtype=torch.float64))
        self.register_buffer("bank_iters", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def record_confidence(self, logits_l: list[torch.Tensor], y: torch.Tensor) -> None:
        """Adds A's and B's labeled logits (n_l, C, P, P, P) per class score sums to the bank;
        every ``bank_every`` calls the banks are updated (sums over all DDP ranks)."""
        onehot = torch.nn.functional.one_hot(y.long(), self.num_classes).movedim(-1, 1)
        dims = [0, *range(2, onehot.ndim)]
        for i, logits in enumerate(logits_l):
            scores = logits.float().softmax(dim=1)
            self.conf_sum[i] += (scores * onehot).sum(dims).double()
            self.conf_count[i] += onehot.sum(dims).double()
        self.bank_iters += 1
        if int(self.bank_iters) % self.bank_every:
            return
        sums, counts = all_reduce_sum(self.conf_sum), all_reduce_sum(self.conf_count)
        new = (sums / (counts + 1e-12)).float()
        first = int(self.bank_iters) <= self.bank_every
        for i, bank in enumerate((self.conf_a, self.conf_b)):
            if first:
                bank.copy_(new[i])
            else:
                bank.mul_(self.bank_momentum).add_(new[i], alpha=1 - self.bank_momentum)
        self.conf_sum.zero_()
        self.conf_count.zero_()

    def sampling_rate(self, conf: torch.Tensor) -> torch.Tensor:
        """(C,) keep probability per predicted class: ``((1 - conf) / max(1 - conf)) ** gamma``."""
        rate = 1 - conf
        return (rate / (rate.max() + 1e-12)).pow(self.gamma)

    @torch.no_grad()
    def sample_map(self, logits: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
        """(B, P, P, P) 0/1 map: voxel kept when ``u > 1 - r_c`` of its predicted class ``c``."""
        rate = self.sampling_rate(conf)
        pred = logits.argmax(dim=1)
        u = torch.rand(pred.shape, device=logits.device)
        return (u > 1 - rate[pred]).float()

    def cps_term(
        self,
        logits_a: torch.Tensor,
        logits_b: torch.Tensor,
        lo: int,
        n_l: int,
        y: torch.Tensor,
        skips: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        self.record_confidence([logits_a[:n_l], logits_b[:n_l]], y)
        a, b = logits_a[lo:], logits_b[lo:]
        mask_a, mask_b = self.sample_map(a, self.conf_a), self.sample_map(b, self.conf_b)
        target_a, target_b = a.detach().argmax(dim=1), b.detach().argmax(dim=1)
        w_a, w_b = _class_weights(self.sup_loss), _class_weights(self.sup_loss_b)
        return voxel_weighted_ce(a, target_b, mask_a, w_a) + voxel_weighted_ce(
            b, target_a, mask_b, w_b
        )
