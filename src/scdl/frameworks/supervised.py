"""Supervised only, at the same labels: the backbone trained on the labeled patches of the
semi-supervised split and nothing else, the lower bound every semi-supervised table reports next
to its methods (DHC's ``code/train_fully.py`` trains the same way on its labeled split; here the
split, recipe and evaluation are those of the semi-supervised runs it is compared with)."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from scdl.frameworks.base import SemiSupervisedModule
from scdl.frameworks.plugin import FrameworkPlugin
from scdl.models.contracts import SegmentationBackbone, check_backbone


class SupervisedModule(SemiSupervisedModule):
    """One backbone, ``L = sup_loss(net(x_l), y_l)`` (+ the plug-in's loss).

    Unlabeled patches are not used: the experiments set ``data.module.unlabeled_bs=0`` so they are
    not even read; when a batch still carries them they are ignored.

    Args:
        backbone: the network (:class:`~scdl.models.contracts.SegmentationBackbone`).
        sup_loss: ``(logits (B, C, P, P, P), labels (B, P, P, P)) -> scalar``.
        unsup_loss: accepted for the common build interface, unused.
        plugin: optional plug-in (e.g. SCDL) on the network.
        **kwargs: see :class:`SemiSupervisedModule`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        sup_loss: nn.Module,
        unsup_loss: nn.Module | None = None,
        plugin: FrameworkPlugin | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(
            ignore=["backbone", "sup_loss", "unsup_loss", "plugin", "optimizer"]
        )
        self.net = check_backbone(backbone)
        self.convert_memory_format(cast(nn.Module, self.net))
        self.sup_loss = sup_loss
        self.attach_plugin(plugin)

    @property
    def plugin_host(self) -> SegmentationBackbone:
        return self.net

    def training_loss(self, batch: dict, batch_idx: int) -> torch.Tensor:
        labeled = batch["labeled"]
        x = self.to_memory_format(labeled["image"])
        skips = self.net.encode(x)
        features = self.net.decode(skips)
        logs: dict[str, torch.Tensor | float] = {}
        loss = features.new_zeros((), dtype=torch.float32)
        step = self.host_train_step(self.net, skips, features, labeled["label"])
        if step.loss is not None:
            loss = loss + step.loss
        logs.update(step.logs)
        loss_sup = self.sup_loss(step.logits, labeled["label"])
        loss = loss + loss_sup
        logs["train/loss_sup"] = loss_sup
        self.log_step(logs, loss, x.shape[0])
        return loss
