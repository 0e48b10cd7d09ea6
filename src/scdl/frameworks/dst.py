"""DST (debiased self-training, Chen et al., NeurIPS 2022) as DHC's ``code/train_dst.py`` runs it
on CPS: each network gets two extra decoders on its encoder, a pseudo-label decoder whose confident
predictions (> 0.95) supervise the other network, and a worst-case decoder trained adversarially
through a gradient-reversal layer (docs/method.md §4.4c)."""

from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from scdl.frameworks.cps import CPSModule
from scdl.losses.consistency import voxel_weighted_ce
from scdl.models.contracts import DecoderFactoryBackbone


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``-coeff``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.neg() * ctx.coeff, None


def reverse_gradient(x: torch.Tensor, coeff: float) -> torch.Tensor:
    """Gradient reversal: ``x`` forward, ``-coeff * grad`` backward."""
    return cast(torch.Tensor, _ReverseGradient.apply(x, coeff))


def warm_start_coeff(step: int, lo: float = 0.0, hi: float = 0.1, alpha: float = 1.0,
                     max_iters: int = 500) -> float:  # fmt: skip
    """The reference's warm-start reversal strength ``2 (hi - lo) / (1 + exp(-alpha i / N)) -
    (hi - lo) + lo``: ``lo`` at step 0, towards ``hi``."""
    span = hi - lo
    return 2.0 * span / (1.0 + math.exp(-alpha * step / max_iters)) - span + lo


def worst_case_loss(
    main_l: torch.Tensor, worst_l: torch.Tensor, main_u: torch.Tensor, worst_u: torch.Tensor
) -> torch.Tensor:
    """DST's worst-case estimation: ``2 CE(worst_l, argmax main_l) + NLL(log(min(1 - softmax(worst_u)
    + 1e-6, 1)), argmax main_u)`` (the main predictions detached). Logits (B, C, *S)."""
    loss = 2 * F.cross_entropy(worst_l.float(), main_l.detach().argmax(dim=1))
    if main_u.shape[0]:  # a batch without unlabeled patches has no second term
        away = torch.log(torch.clamp(1.0 - worst_u.float().softmax(dim=1) + 1e-6, max=1.0))
        loss = loss + F.nll_loss(away, main_u.detach().argmax(dim=1))
    return loss


class DSTModule(CPSModule):
    """CPS with DST's decoupled pseudo-label and worst-case decoders.

    Per network ``n`` (A, B) with encoder maps ``e_n``: the main decoder gives ``s_n`` (supervised,
    inference), the pseudo decoder ``q_n``, the worst-case decoder ``w_n`` = decoder(GRL(e_n)) with
    the reversal strength :func:`warm_start_coeff` of the step. Then

    ``L_unsup = mean_v CE(s_A, argmax q_B) [max softmax q_B > 0.95] + (A <-> B)
    + worst_case_loss(s_A, w_A) + worst_case_loss(s_B, w_B)``

    (labeled / unlabeled parts of the batch as :func:`worst_case_loss` takes them), weighted by
    the CPS weight. As in the reference, nothing trains the pseudo decoders (their pseudo-labels
    are integer argmaxes and their confidence mask is detached), so they keep their initial weights
    and only their BatchNorm statistics follow the data: here they are frozen and run without a
    graph (the same values; no unused parameters under DDP).

    Args:
        threshold: confidence of the pseudo decoders' labels (0.95).
        grl_hi, grl_max_iters: reversal strength target (0.1) and its time scale (500 steps).
        **kwargs: see :class:`~scdl.frameworks.cps.CPSModule`; the backbones need
            ``make_decoder()`` (``model=vnet`` has it).
    """

    def __init__(
        self,
        *args,
        threshold: float = 0.95,
        grl_hi: float = 0.1,
        grl_max_iters: int = 500,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        for net in (self.net_a, self.net_b):
            if not isinstance(net, DecoderFactoryBackbone):
                raise TypeError(
                    f"framework=dst needs a backbone with make_decoder() (extra decoders on its "
                    f"encoder); {type(net).__name__} has none: use model=vnet"
                )
        self.threshold, self.grl_hi, self.grl_max_iters = threshold, grl_hi, int(grl_max_iters)
        nets = {"a": self.net_a, "b": self.net_b}
        self.pseudo_decoders = nn.ModuleDict(
            {k: cast(Any, n).make_decoder() for k, n in nets.items()}
        )
        self.worst_decoders = nn.ModuleDict(
            {k: cast(Any, n).make_decoder() for k, n in nets.items()}
        )
        self.pseudo_decoders.requires_grad_(False)
        self.convert_memory_format(self.pseudo_decoders, self.worst_decoders)

    def parameter_groups(self) -> list[dict]:
        groups = super().parameter_groups()
        worst = list(self.worst_decoders.parameters())
        return [*groups, {"params": worst, "name": "worst_case_decoders"}]

    def grl_coeff(self) -> float:
        """The reversal strength of this step (the reference steps it after every iteration)."""
        return warm_start_coeff(self.global_step, 0.0, self.grl_hi, 1.0, self.grl_max_iters)

    def cps_term(
        self,
        logits_a: torch.Tensor,
        logits_b: torch.Tensor,
        lo: int,
        n_l: int,
        y: torch.Tensor,
        skips: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        if skips is None:
            raise ValueError("DST's decoders need the encoder maps of both networks (skips)")
        coeff = self.grl_coeff()
        pseudo, worst = {}, {}
        for key, enc in zip(("a", "b"), skips, strict=True):
            with torch.no_grad():
                pseudo[key] = self.pseudo_decoders[key](enc)[lo:].float().softmax(dim=1).max(dim=1)
            worst[key] = self.worst_decoders[key]([reverse_gradient(e, coeff) for e in enc])
        (conf_a, target_a), (conf_b, target_b) = pseudo["a"], pseudo["b"]
        t = self.threshold
        loss_cps = voxel_weighted_ce(logits_a[lo:], target_b, (conf_b > t).float()) + (
            voxel_weighted_ce(logits_b[lo:], target_a, (conf_a > t).float())
        )
        loss_worst = sum(
            worst_case_loss(main[:n_l], worst[k][:n_l], main[n_l:], worst[k][n_l:])
            for k, main in (("a", logits_a), ("b", logits_b))
        )
        self.log("train/loss_worst_case", cast(torch.Tensor, loss_worst).detach(), batch_size=1)
        return loss_cps + cast(torch.Tensor, loss_worst)
