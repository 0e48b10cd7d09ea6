"""Cross pseudo supervision (GA-CPS, scdl-method.md §4.2): two VNets with different initialisations
supervise each other with their detached argmax predictions."""

from __future__ import annotations

import torch
from torch import nn

from scdl.frameworks.base import SemiSupervisedModule
from scdl.frameworks.scdl_plugin import SCDLPlugin


class CPSModule(SemiSupervisedModule):
    """Networks A and B, trained jointly.

    Per iteration (``Bl`` labeled first, then ``Bu`` unlabeled):
    ``L = sup(A_l, y) + sup_b(B_l, y) + w(t) * [unsup(A, B) + unsup(B, A)] (+ SCDL aux on A)``
    where ``unsup(student, other)`` supervises ``student`` with ``argmax(other)`` (detached, e.g.
    :class:`~scdl.losses.consistency.PseudoLabelLoss`), computed on all samples (GA-CPS) or the
    unlabeled ones only; ``w(t) = unsup_weight * sigmoid_rampup(t, rampup_steps)``. Inference
    averages the logits of A and B.

    Args:
        backbone: network A (Kaiming init in GA-CPS); ``forward_features`` / ``encode`` / ``decode``
            / ``head`` as :class:`~scdl.models.vnet.VNet`.
        backbone_b: network B (Xavier init), same architecture.
        sup_loss, sup_loss_b: supervised losses of A and B (``sup_loss_b`` defaults to ``sup_loss``;
            DHC uses difficulty-weighted for A and distribution-weighted for B).
        unsup_loss: cross pseudo-label loss ``(student_logits, other_logits) -> scalar``.
        unsup_weight, rampup_steps: CPS weight (0.1) and its sigmoid ramp-up (all iterations).
        cps_on_labeled: the CPS term also covers the labeled samples (GA-CPS: True).
        scdl: optional SCDL plug-in on A's decoder features (GA-CPS + SCDL: train-time only, i.e.
            ``prior_feedback="none"``; with ``head`` A's logits use the prior at inference too).
    """

    def __init__(
        self,
        backbone: nn.Module,
        backbone_b: nn.Module,
        sup_loss: nn.Module,
        unsup_loss: nn.Module,
        sup_loss_b: nn.Module | None = None,
        unsup_weight: float = 0.1,
        rampup_steps: int = 17000,
        cps_on_labeled: bool = True,
        scdl: SCDLPlugin | None = None,
        **kwargs,
    ) -> None:
        super().__init__(unsup_weight=unsup_weight, rampup_steps=rampup_steps, **kwargs)
        self.save_hyperparameters(
            ignore=[
                "backbone",
                "backbone_b",
                "sup_loss",
                "sup_loss_b",
                "unsup_loss",
                "scdl",
                "optimizer",  # plain values only: checkpoints load with weights_only=True
            ]
        )
        self.net_a, self.net_b = backbone, backbone_b
        self.convert_memory_format(self.net_a, self.net_b)
        self.sup_loss = sup_loss
        self.sup_loss_b = sup_loss_b if sup_loss_b is not None else sup_loss
        self.unsup_loss = unsup_loss
        self.cps_on_labeled = cps_on_labeled
        if scdl is not None and scdl.prior_feedback == "bottleneck":
            raise ValueError("CPS supports SCDL prior_feedback head|none, not bottleneck")
        self.attach_scdl(scdl)

    def scdl_features(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder features (B, D, X, Y, Z) of network A, which SCDL tokenises."""
        return self.net_a.decode(self.net_a.encode(x))

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        logits_a = self.head_logits(self.scdl_features(x), self.net_a.head)
        return 0.5 * (logits_a + self.net_b(x))

    def parameter_groups(self) -> list[dict]:
        nets = [
            {"params": list(self.net_a.parameters()), "name": "net_a"},
            {"params": list(self.net_b.parameters()), "name": "net_b"},
        ]
        return nets + self.scdl_parameter_groups()

    def training_loss(self, batch: dict, batch_idx: int) -> torch.Tensor:
        unlabeled = batch.get("unlabeled")
        y = batch["labeled"]["label"]
        x, n_l = self.joint_input(batch)
        features = self.scdl_features(x)
        logs: dict[str, torch.Tensor | float] = {}
        loss = features.new_zeros((), dtype=torch.float32)
        logits_a, terms = self.logits_and_scdl_terms(features, y, self.net_a.head)
        if terms is not None:
            loss = loss + terms.aux_loss
            logs.update(self.scdl.log_values(terms))
        logits_b = self.net_b(x)
        loss_sup = self.sup_loss(logits_a[:n_l], y) + self.sup_loss_b(logits_b[:n_l], y)
        loss = loss + loss_sup
        logs["train/loss_sup"] = loss_sup
        if unlabeled is not None or self.cps_on_labeled:
            lo = 0 if self.cps_on_labeled else n_l
            loss_cps = self.unsup_loss(logits_a[lo:], logits_b[lo:]) + self.unsup_loss(
                logits_b[lo:], logits_a[lo:]
            )
            if hasattr(self.sup_loss_b, "observe") and unlabeled is not None:
                # DHC: B's distribution weights follow its own pseudo-labels of the unlabeled batch
                self.sup_loss_b.observe(logits_b[n_l:].detach().argmax(dim=1))
            w = self.unsup_weight_at(self.global_step)
            loss = loss + w * loss_cps
            logs.update({"train/loss_unsup": loss_cps, "train/unsup_weight": w})
        self.log_step(logs, loss, x.shape[0])
        return loss

    def load_reference_weights(self, state_a: dict, state_b: dict) -> None:
        """Loads the released GA-CPS weights (two reference-VNet state dicts) into A and B."""
        from scdl.models.reference_weights import convert_reference_vnet

        self.net_a.load_state_dict(convert_reference_vnet(state_a), strict=True)
        self.net_b.load_state_dict(convert_reference_vnet(state_b), strict=True)
