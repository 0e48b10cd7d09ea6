"""Cross pseudo supervision (GA-CPS, docs/method.md §4.2): two VNets with different initialisations
supervise each other with their detached argmax predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from scdl.frameworks.base import SemiSupervisedModule
from scdl.frameworks.plugin import FrameworkPlugin
from scdl.models.contracts import SegmentationBackbone, check_backbone


class CPSModule(SemiSupervisedModule):
    """Networks A and B, trained jointly.

    Per iteration (``Bl`` labeled first, then ``Bu`` unlabeled):
    ``L = sup(A_l, y) + sup_b(B_l, y) + w(t) * [unsup(A, B) + unsup(B, A)] (+ SCDL aux on A)``
    where ``unsup(student, other)`` supervises ``student`` with ``argmax(other)`` (detached, e.g.
    :class:`~scdl.losses.consistency.PseudoLabelLoss`), computed on all samples (GA-CPS) or the
    unlabeled ones only; ``w(t) = unsup_weight * sigmoid_rampup(t, rampup_steps)``. Inference
    averages the logits of A and B.

    Args:
        backbone: network A (Kaiming init in GA-CPS), a
            :class:`~scdl.models.contracts.SegmentationBackbone`.
        backbone_b: network B (Xavier init), same architecture.
        sup_loss, sup_loss_b: supervised losses of A and B (``sup_loss_b`` defaults to ``sup_loss``;
            DHC uses difficulty-weighted for A and distribution-weighted for B).
        unsup_loss: cross pseudo-label loss ``(student_logits, other_logits) -> scalar``.
        unsup_weight, rampup_steps: CPS weight (0.1) and its sigmoid ramp-up (all iterations).
        cps_on_labeled: the CPS term also covers the labeled samples (GA-CPS: True).
        plugin: optional plug-in on network A (:class:`~scdl.frameworks.plugin.FrameworkPlugin`;
            GA-CPS + SCDL is train-time only, i.e. SCDL's ``prior_feedback="none"``; with ``head``
            A's logits use the prior at inference too).
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
        plugin: FrameworkPlugin | None = None,
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
                "plugin",
                "optimizer",  # plain values only: checkpoints load with weights_only=True
            ]
        )
        self.net_a, self.net_b = check_backbone(backbone), check_backbone(backbone_b)
        self.convert_memory_format(self.net_a, self.net_b)
        self.sup_loss = sup_loss
        self.sup_loss_b = sup_loss_b if sup_loss_b is not None else sup_loss
        self.unsup_loss = unsup_loss
        self.cps_on_labeled = cps_on_labeled
        self.attach_plugin(plugin)

    @property
    def plugin_host(self) -> SegmentationBackbone:
        return self.net_a

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        logits_a = self.host_inference_logits(self.net_a, self.plugin_features(x))
        return 0.5 * (logits_a + self.net_b(x))

    def parameter_groups(self) -> list[dict]:
        nets = [
            {"params": list(cast(nn.Module, self.net_a).parameters()), "name": "net_a"},
            {"params": list(cast(nn.Module, self.net_b).parameters()), "name": "net_b"},
        ]
        return nets + self.plugin_parameter_groups()

    def training_loss(self, batch: dict, batch_idx: int) -> torch.Tensor:
        unlabeled = batch.get("unlabeled")
        y = batch["labeled"]["label"]
        x, n_l = self.joint_input(batch)
        skips = self.net_a.encode(x)
        features = self.net_a.decode(skips)
        logs: dict[str, torch.Tensor | float] = {}
        loss = features.new_zeros((), dtype=torch.float32)
        step = self.host_train_step(self.net_a, skips, features, y)
        logits_a = step.logits
        if step.loss is not None:
            loss = loss + step.loss
        logs.update(step.logs)
        skips_b = self.net_b.encode(x)
        logits_b = self.net_b.head(self.net_b.decode(skips_b))
        self.observe_pseudo_labels(logits_a, logits_b, n_l, unlabeled is not None)
        loss_sup = self.sup_loss(logits_a[:n_l], y) + self.sup_loss_b(logits_b[:n_l], y)
        loss = loss + loss_sup
        logs["train/loss_sup"] = loss_sup
        if unlabeled is not None or self.cps_on_labeled:
            lo = 0 if self.cps_on_labeled else n_l
            loss_cps = self.cps_term(logits_a, logits_b, lo, n_l, y, (skips, skips_b))
            w = self.unsup_weight_at(self.global_step)
            loss = loss + w * loss_cps
            logs.update({"train/loss_unsup": loss_cps, "train/unsup_weight": w})
        self.log_step(logs, loss, x.shape[0])
        return loss

    def cps_term(
        self,
        logits_a: torch.Tensor,
        logits_b: torch.Tensor,
        lo: int,
        n_l: int,
        y: torch.Tensor,
        skips: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """The unweighted cross pseudo-label term on samples ``lo:`` of the logits (B, C, P, P, P)
        of A and B (``n_l`` labeled samples first, labels ``y`` (n_l, P, P, P); ``skips``: A's and
        B's encoder maps of the batch, for extra decoders): ``unsup(A, B) +
        unsup(B, A)``, each direction weighted by the student network's own class weights where
        the losses have them (DHC: A's difficulty-, B's distribution-aware weights). The baselines
        that choose their pseudo-labels otherwise (DePL, Adsh, CLD, DST) override it."""
        return self.cross_loss(logits_a[lo:], logits_b[lo:], self.sup_loss) + self.cross_loss(
            logits_b[lo:], logits_a[lo:], self.sup_loss_b
        )

    def class_weighted_losses(self) -> list[tuple[str, nn.Module]]:
        """``("a", sup_loss)`` and ``("b", sup_loss_b)`` (B only when it is its own module)."""
        pairs = [("a", self.sup_loss)]
        return pairs if self.sup_loss_b is self.sup_loss else [*pairs, ("b", self.sup_loss_b)]

    @torch.no_grad()
    def observe_pseudo_labels(
        self, logits_a: torch.Tensor, logits_b: torch.Tensor, n_l: int, has_unlabeled: bool
    ) -> None:
        """Hands each network's own pseudo-labels (argmax of its logits (B, C, P, P, P)) to its
        supervised loss when that loss follows them (``observe``), before this step's losses use
        its class weights: DHC's DistDW (network B) and CReST from the unlabeled samples, SimiS
        (``observes == "all"``) from the whole batch."""
        logits = {"a": logits_a, "b": logits_b}
        for net, loss in self.class_weighted_losses():
            if not hasattr(loss, "observe"):
                continue
            if getattr(loss, "observes", "unlabeled") == "all":
                cast(Any, loss).observe(logits[net].argmax(dim=1))
            elif has_unlabeled:
                cast(Any, loss).observe(logits[net][n_l:].argmax(dim=1))

    def cross_loss(
        self, student: torch.Tensor, other: torch.Tensor, student_sup_loss: nn.Module
    ) -> torch.Tensor:
        """``unsup_loss(student, other)``; with the student network's class weights when its
        supervised loss has them (DHC), so a plain ``(student, other)`` loss keeps working."""
        weights = _class_weights(student_sup_loss)
        if weights is None:
            return self.unsup_loss(student, other)
        return self.unsup_loss(student, other, class_weights=weights)

    def on_fit_start(self) -> None:
        """Class weights that start from the labeled set's voxel counts (DHC's DistDW of B, CReST,
        SimiS, CLD) are initialised here (a restored checkpoint keeps its own; without a cached
        split, from the first pseudo-labels)."""
        super().on_fit_start()
        datamodule = getattr(self.trainer, "datamodule", None)
        split = getattr(datamodule, "split", None)  # a data module of cached cases
        for _, loss in self.class_weighted_losses():
            if getattr(loss, "wants_labeled_counts", False) and split is not None:
                from scdl.data.class_stats import class_voxel_counts

                cache_dir = Path(cast(Any, datamodule).cache_dir)
                counts = class_voxel_counts(
                    cache_dir, tuple(split.labeled), cast(Any, loss).num_classes
                )
                cast(Any, loss).init_from_counts(torch.as_tensor(counts, dtype=torch.float64))

    def load_reference_weights(self, state_a: dict, state_b: dict) -> None:
        """Loads the released GA-CPS weights (two reference-VNet state dicts) into A and B."""
        from scdl.models.reference_weights import convert_reference_vnet

        cast(nn.Module, self.net_a).load_state_dict(convert_reference_vnet(state_a), strict=True)
        cast(nn.Module, self.net_b).load_state_dict(convert_reference_vnet(state_b), strict=True)


def _class_weights(loss: nn.Module) -> torch.Tensor | None:
    """The current class weights (C,) of a class-weighted supervised loss, else None."""
    weights = getattr(loss, "class_weights", None)
    return weights.detach() if isinstance(weights, torch.Tensor) else None


def check_patch_state(what: str, state: torch.Tensor, logits: torch.Tensor) -> None:
    """Refuses logits (B, C, *P) whose (C, *P) differ from the trailing dims of a per-voxel state
    sized by ``framework.patch_size`` (DePL's running prediction, Adsh's window)."""
    expected, got = tuple(state.shape[-logits.ndim + 1 :]), tuple(logits.shape[1:])
    if expected != got:
        raise ValueError(
            f"{what} holds (classes, patch) {expected} (framework.patch_size), the logits {got}: "
            "set framework.patch_size to data.module.patch_size"
        )
