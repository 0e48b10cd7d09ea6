"""A framework written the way docs/extending.md "Extending" describes (used by tests/test_extending.py):
supervised-only training on the labeled patches, with whatever plug-in the config attaches."""

from __future__ import annotations

import torch
from torch import nn

from scdl.frameworks.base import SemiSupervisedModule
from scdl.frameworks.plugin import FrameworkPlugin
from scdl.models.contracts import SegmentationBackbone, check_backbone


class SupervisedOnly(SemiSupervisedModule):
    def __init__(
        self,
        backbone: nn.Module,
        sup_loss: nn.Module,
        unsup_loss: nn.Module,
        plugin: FrameworkPlugin | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.net = check_backbone(backbone)
        self.sup_loss = sup_loss
        self.attach_plugin(plugin)

    @property
    def plugin_host(self) -> SegmentationBackbone:
        return self.net

    def training_loss(self, batch: dict, batch_idx: int) -> torch.Tensor:
        labeled = batch["labeled"]
        x = self.to_memory_format(labeled["image"])
        skips = self.net.encode(x)
        step = self.host_train_step(self.net, skips, self.net.decode(skips), labeled["label"])
        loss = self.sup_loss(step.logits, labeled["label"])
        if step.loss is not None:
            loss = loss + step.loss
        self.log_step({**step.logs}, loss, x.shape[0])
        return loss
