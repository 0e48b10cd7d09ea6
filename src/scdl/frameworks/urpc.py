"""URPC (uncertainty rectified pyramid consistency, Luo et al., MICCAI 2021 / MedIA 2022) as DHC's
``code/train_urpc.py`` runs it: one network with a prediction at every decoder stage, supervised at
every scale, and on unlabeled patches each scale pulled towards the mean of all scales where the
scales agree (docs/method.md §4.4c)."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from scdl.frameworks.base import SemiSupervisedModule
from scdl.frameworks.plugin import FrameworkPlugin
from scdl.models.contracts import DeepSupervisionBackbone, SegmentationBackbone, check_backbone
from scdl.models.vnet import init_conv_weights


def pyramid_consistency(probs: list[torch.Tensor]) -> torch.Tensor:
    """URPC's rectified consistency of the softmax maps ``probs`` (each (B, C, *S), full size).

    With the mean ``q = mean_k p_k`` (not detached, as the reference), per scale ``k``:
    ``v_k = sum_c q log(q / p_k)`` (B, 1, *S) (``KLDivLoss(log p_k, q)``, summed over classes),
    ``L_k = mean((q - p_k)^2 exp(-v_k)) / (mean(exp(-v_k)) + 1e-8) + mean(v_k)``; returns
    ``mean_k L_k``.
    """
    mean = torch.stack(probs).mean(dim=0)
    losses = []
    for p in probs:
        variance = F.kl_div(torch.log(p), mean, reduction="none").sum(dim=1, keepdim=True)
        weight = torch.exp(-variance)
        dist = (mean - p) ** 2
        losses.append(torch.mean(dist * weight) / (torch.mean(weight) + 1e-8) + variance.mean())
    return torch.stack(losses).mean()


class URPCModule(SemiSupervisedModule):
    """One network with deep supervision.

    The backbone's last decoder stage gives the main logits (through the plug-in, as every
    framework's host); every deeper stage ``i`` gets its own 1x1x1 classifier whose logits are
    up-sampled (trilinear) to the patch: ``K`` = number of stages outputs. Per iteration:

    ``L = mean_k sup_loss(out_k[:Bl], y) + w(t) * pyramid_consistency(softmax(out_k[Bl:]))``

    (:func:`pyramid_consistency`; DHC: ``sup_loss`` = (CE + soft Dice with smooth 1e-8) / 2, so the
    sum over 4 scales / 8 of the reference). Inference uses the main logits only.

    Args:
        backbone: a :class:`~scdl.models.contracts.DeepSupervisionBackbone` (``model=vnet``).
        sup_loss: ``(logits, labels) -> scalar``, applied at every scale.
        unsup_loss: accepted for the common build interface, unused.
        plugin: optional plug-in on the backbone (its logits are the main scale's).
        aux_init: init of the deeper stages' classifiers: ``kaiming`` (the reference's
            ``unet_3D_ds`` draws every Conv3d Kaiming-normal), ``xavier`` or ``default``.
        **kwargs: see :class:`SemiSupervisedModule`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        sup_loss: nn.Module,
        unsup_loss: nn.Module | None = None,
        plugin: FrameworkPlugin | None = None,
        aux_init: str = "kaiming",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(
            ignore=["backbone", "sup_loss", "unsup_loss", "plugin", "optimizer"]
        )
        self.net = check_backbone(backbone)
        if not isinstance(backbone, DeepSupervisionBackbone):
            raise TypeError(
                f"framework=urpc needs a backbone whose decoder stages can be read "
                f"(decode_stages, stage_channels); {type(backbone).__name__} has none: use "
                "model=vnet"
            )
        self.aux_heads = nn.ModuleList(
            nn.Conv3d(c, self.num_classes, 1) for c in backbone.stage_channels[:-1]
        )
        # the reference's unet_3D_ds draws every Conv3d, these heads included, Kaiming-normal
        init_conv_weights(self.aux_heads, aux_init)
        self.convert_memory_format(cast(nn.Module, self.net), self.aux_heads)
        self.sup_loss = sup_loss
        self.attach_plugin(plugin)

    @property
    def plugin_host(self) -> SegmentationBackbone:
        return self.net

    def parameter_groups(self) -> list[dict]:
        return [
            {"params": list(cast(nn.Module, self.net).parameters()), "name": "backbone"},
            {"params": list(self.aux_heads.parameters()), "name": "aux_heads"},
            *self.plugin_parameter_groups(),
        ]

    def training_loss(self, batch: dict, batch_idx: int) -> torch.Tensor:
        labeled, unlabeled = batch["labeled"], batch.get("unlabeled")
        y = labeled["label"]
        x, n_l = self.joint_input(batch)
        skips = self.net.encode(x)
        stages = cast(DeepSupervisionBackbone, self.net).decode_stages(skips)
        logs: dict[str, torch.Tensor | float] = {}
        loss = stages[-1].new_zeros((), dtype=torch.float32)
        step = self.host_train_step(self.net, skips, stages[-1], y)
        if step.loss is not None:
            loss = loss + step.loss
        logs.update(step.logs)
        size = x.shape[2:]
        outputs = (
            [step.logits]
            + [  # finest first, as the reference's dsv1..dsv4
                F.interpolate(head(s), size=size, mode="trilinear", align_corners=False)
                for head, s in zip(self.aux_heads, stages[:-1], strict=True)
            ][::-1]
        )
        loss_sup = torch.stack([self.sup_loss(o[:n_l], y) for o in outputs]).mean()
        loss = loss + loss_sup
        logs["train/loss_sup"] = loss_sup
        if unlabeled is not None:
            probs = [o[n_l:].float().softmax(dim=1) for o in outputs]
            loss_unsup = pyramid_consistency(probs)
            w = self.unsup_weight_at(self.global_step)
            loss = loss + w * loss_unsup
            logs.update({"train/loss_unsup": loss_unsup, "train/unsup_weight": w})
        self.log_step(logs, loss, x.shape[0])
        return loss
