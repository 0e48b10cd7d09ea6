"""Mean teacher: a student trained on labeled patches and on the EMA teacher's pseudo-labels of
unlabeled patches (the framework of GA-MagicNet / UA-MT, without MagicNet's cube mixing)."""

from __future__ import annotations

from typing import Literal, cast

import torch
from torch import nn

from scdl.frameworks.base import SemiSupervisedModule
from scdl.frameworks.plugin import FrameworkPlugin
from scdl.models.contracts import SegmentationBackbone, check_backbone
from scdl.models.ema import EMATeacher


class MeanTeacherModule(SemiSupervisedModule):
    """Student + EMA teacher.

    Per iteration (``Bl`` labeled + ``Bu`` unlabeled patches of size P):
    ``L = sup_loss(student(x_l), y_l) + w(t) * unsup_loss(student(x_u), teacher(x_u + noise))``,
    ``w(t) = unsup_weight * sigmoid_rampup(t, rampup_steps)``; after every optimiser step
    ``teacher <- a * teacher + (1 - a) * student`` (:class:`EMATeacher`).

    Args:
        backbone: the student network (:class:`~scdl.models.contracts.SegmentationBackbone`).
        sup_loss: ``(logits (B, C, P, P, P), labels (B, P, P, P)) -> scalar``.
        unsup_loss: ``(student_logits, teacher_logits) -> scalar`` (e.g. :class:`PseudoLabelLoss`).
        ema_decay: teacher EMA decay.
        unsup_weight, rampup_steps: weight of the unsupervised term and its sigmoid ramp-up length
            in iterations.
        teacher_noise: std of the Gaussian noise on the teacher input (clipped at +-2 std).
        teacher_mode: ``train`` (batch statistics in BatchNorm, as GA-MagicNet) or ``eval``.
        plugin: optional plug-in on the student (:class:`~scdl.frameworks.plugin.FrameworkPlugin`,
            e.g. SCDL; None = plain mean teacher): its loss joins the total and it may change the
            student's logits (training and inference). The teacher stays a plain EMA backbone
            (there is no EMA of the plug-in).
        **kwargs: see :class:`SemiSupervisedModule`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        sup_loss: nn.Module,
        unsup_loss: nn.Module,
        ema_decay: float = 0.99,
        unsup_weight: float = 0.1,
        rampup_steps: int = 1000,
        teacher_noise: float = 0.1,
        teacher_mode: Literal["train", "eval"] = "train",
        plugin: FrameworkPlugin | None = None,
        **kwargs,
    ) -> None:
        super().__init__(unsup_weight=unsup_weight, rampup_steps=rampup_steps, **kwargs)
        # plain values only (no optimizer partial): checkpoints load with weights_only=True
        self.save_hyperparameters(
            ignore=["backbone", "sup_loss", "unsup_loss", "plugin", "optimizer"]
        )
        self.student = check_backbone(backbone)
        self.convert_memory_format(self.student)
        self.teacher = EMATeacher(cast(nn.Module, self.student), decay=ema_decay)
        self.sup_loss = sup_loss
        self.unsup_loss = unsup_loss
        self.teacher_noise = teacher_noise
        if teacher_mode not in ("train", "eval"):
            raise ValueError(f"teacher_mode must be train|eval, got {teacher_mode!r}")
        self.teacher_mode = teacher_mode
        self.attach_plugin(plugin)

    @property
    def plugin_host(self) -> SegmentationBackbone:
        return self.student

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher prediction on a noised copy of ``x`` (no gradient)."""
        return self.teacher.noisy_forward(x, self.teacher_noise, self.teacher_mode == "train")

    def training_loss(self, batch: dict, batch_idx: int) -> torch.Tensor:
        labeled, unlabeled = batch["labeled"], batch.get("unlabeled")
        x, n_l = self.joint_input(batch)
        skips = self.student.encode(x)
        features = self.student.decode(skips)
        logs: dict[str, torch.Tensor | float] = {}
        loss = features.new_zeros((), dtype=torch.float32)
        step = self.host_train_step(self.student, skips, features, labeled["label"])
        logits = step.logits
        if step.loss is not None:
            loss = loss + step.loss
        logs.update(step.logs)
        loss_sup = self.sup_loss(logits[:n_l], labeled["label"])
        loss = loss + loss_sup
        logs["train/loss_sup"] = loss_sup
        if unlabeled is not None:
            self.observe_labeled(logits[:n_l].detach(), labeled["label"])
            loss_unsup = self.consistency(logits[n_l:], x[n_l:])
            w = self.unsup_weight_at(self.global_step)
            loss = loss + w * loss_unsup
            logs.update({"train/loss_unsup": loss_unsup, "train/unsup_weight": w})
        self.log_step(logs, loss, x.shape[0])
        return loss

    def observe_labeled(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Sees the student's detached logits (Bl, C, P, P, P) of the labeled patches and their
        labels (Bl, P, P, P) before the unsupervised term (Acisis's confidence statistics)."""

    def consistency(self, student_logits: torch.Tensor, x_unlabeled: torch.Tensor) -> torch.Tensor:
        """The unsupervised term: ``unsup_loss`` of the student's logits (Bu, C, P, P, P) against
        the teacher's prediction of the noised unlabeled patches (Bu, 1, P, P, P)."""
        return self.unsup_loss(student_logits, self.teacher_logits(x_unlabeled))

    def after_optimizer_step(self, step: int) -> None:
        self.teacher.update(cast(nn.Module, self.student), step)
