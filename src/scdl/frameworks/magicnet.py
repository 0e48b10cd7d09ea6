"""GA-MagicNet: mean teacher with MagicNet's cube partition-and-recovery (docs/method.md §4.3), the
framework of SCDL's released results.

Per iteration, with ``Bl`` labeled then ``Bu`` unlabeled patches of size P cut into ``n`` cubes
per axis (3 cubes of 32^3 at 96^3; 3 of 16^3 at the phantom's 48^3):

1. plain pass: ``student(x)`` -> ``logits`` (through the plug-in: SCDL's head prior changes them,
   its bottleneck prior adds an auxiliary pass, :meth:`host_train_step`);
2. cross-image partition and recovery: every cube position gets its own random permutation of
   the batch; the student decodes the mixed volumes and the decoder features are un-mixed cube-wise
   before the head -> ``logits_unmix``;
3. within-image partition: every volume's n^3 cubes go through the encoder as a batch; their
   bottlenecks, in a random order, feed the location head (n^3-way cross-entropy ``L_loc``); their
   decoder features, re-assembled, feed the head -> ``logits_local``;
4. teacher pseudo-labels on the unlabeled patches (noised input); from step ``blend_start`` on
   (101: the reference blends when ``iter_num > 100``, ``iter_num`` counting finished steps) blended
   cube-wise with the student's within-image prediction, weighted by class frequency
   (:class:`~scdl.losses.magicnet.ClassFrequencyWeights`);
5. ``L = [GACE + GADice](logits_l) + GADice(unmix_l) + GADice(local_l)) / 4 + loc_weight * L_loc
   + w_cons(t) * GADice(unmix_u, PL)`` (+ the plug-in's loss), ``w_cons`` MagicNet's step schedule.

The EMA teacher is updated after every optimiser step; validation and test use the student (with the
plug-in's inference path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from scdl.frameworks.base import SemiSupervisedModule
from scdl.frameworks.magicnet_cubes import (
    check_cube_grid,
    merge_cubes,
    partition_cross_image,
    recover_cross_image,
    shuffle_cubes,
    split_cubes,
    transpose_cube_grid,
)
from scdl.frameworks.plugin import FrameworkPlugin
from scdl.losses.magicnet import ClassFrequencyWeights, magicnet_consistency_weight
from scdl.models.contracts import SegmentationBackbone, check_backbone
from scdl.models.ema import EMATeacher

if TYPE_CHECKING:
    from scdl.models.vnet_magic import VNetMagic


class MagicNetModule(SemiSupervisedModule):
    """GA-MagicNet (student + EMA teacher + cube partition-and-recovery).

    Args:
        backbone: the student, a :class:`~scdl.models.vnet_magic.VNetMagic` (a segmentation backbone
            with ``locate(bottlenecks) -> (N, n^3)`` location logits).
        sup_loss: supervision of the plain logits, ``(logits, labels) -> scalar`` (GA: GACE +
            GADice, i.e. the first two of MagicNet's four supervised terms).
        unsup_loss: unused (MagicNet's consistency is ``dice_loss`` on hard pseudo-labels); kept
            for the builder's common signature.
        dice_loss: the Dice loss of the unmixed / local logits and of the consistency (GADice).
        cubes_per_axis: n (3).
        ema_decay: teacher EMA decay (0.99).
        teacher_noise: std of the teacher's input noise, clipped at +-2 std (0.1).
        loc_weight: weight of the location loss (0.1).
        cons_weight, cons_steps_per_epoch, cons_rampup_epochs: ``w_cons(t) = cons_weight *
            exp(-5 (1 - min(t // steps, epochs) / epochs)^2)`` (0.1, 350, 200).
        blend_start: first step (``global_step``, finished steps) whose pseudo-labels are blended
            with the within-image prediction (101, the reference's ``iter_num > 100``); ``blend_update_every``, ``blend_temperature``: the class-frequency
            histogram refresh interval (20) and temperature (1).
        mix_pl_from: whose within-image prediction is blended into the unlabeled pseudo-labels:
            ``labeled`` (the released GALoss / SCDL code decodes the labeled samples' cubes: a
            quirk, kept as the default for reproduction) or ``unlabeled`` (upstream MagicNet's fix).
        released_cube_order: re-assemble within-image cube features at the transposed grid position
            as the released ``unmix_tensor`` does (docs/method.md §4.3); False = where they were cut.
        plugin: optional plug-in on the student (SCDL); the teacher has none.
        **kwargs: see :class:`SemiSupervisedModule`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        sup_loss: nn.Module,
        unsup_loss: nn.Module | None = None,
        dice_loss: nn.Module | None = None,
        cubes_per_axis: int = 3,
        ema_decay: float = 0.99,
        teacher_noise: float = 0.1,
        loc_weight: float = 0.1,
        cons_weight: float = 0.1,
        cons_steps_per_epoch: int = 350,
        cons_rampup_epochs: int = 200,
        blend_start: int = 101,
        blend_update_every: int = 20,
        blend_temperature: float = 1.0,
        mix_pl_from: Literal["labeled", "unlabeled"] = "labeled",
        released_cube_order: bool = False,
        plugin: FrameworkPlugin | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(
            ignore=["backbone", "sup_loss", "unsup_loss", "dice_loss", "plugin", "optimizer"]
        )
        self.student = check_backbone(backbone)
        if not hasattr(self.student, "locate"):
            raise TypeError(
                f"{type(backbone).__name__} has no cube-location head (locate): framework=magicnet "
                "needs model=vnet_magic"
            )
        self.convert_memory_format(self.student)
        self.teacher = EMATeacher(cast(nn.Module, self.student), decay=ema_decay)
        self.sup_loss = sup_loss
        self.unsup_loss = unsup_loss
        if dice_loss is None:
            from scdl.losses.ga import GADiceLoss

            dice_loss = GADiceLoss()
        self.dice_loss = dice_loss
        if mix_pl_from not in ("labeled", "unlabeled"):
            raise ValueError(f"mix_pl_from must be labeled|unlabeled, got {mix_pl_from!r}")
        self.n = int(cubes_per_axis)
        self.teacher_noise = teacher_noise
        self.loc_weight = loc_weight
        self.cons_weight = cons_weight
        self.cons_steps_per_epoch = cons_steps_per_epoch
        self.cons_rampup_epochs = cons_rampup_epochs
        self.blend_start = blend_start
        self.mix_pl_from = mix_pl_from
        self.released_cube_order = released_cube_order
        self.class_weights = ClassFrequencyWeights(
            self.num_classes, blend_temperature, blend_update_every
        )
        self.attach_plugin(plugin)

    # --- hooks ------------------------------------------------------------------------------------
    @property
    def plugin_host(self) -> SegmentationBackbone:
        return self.student

    def after_optimizer_step(self, step: int) -> None:
        self.teacher.update(cast(nn.Module, self.student), step)

    # --- MagicNet parts ---------------------------------------------------------------------------
    def cross_image_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, C, X, Y, Z) of the batch after cross-image partition and recovery."""
        mixed, perms = partition_cross_image(x, self.n)
        features = self.student.decode(self.student.encode(self.to_memory_format(mixed)))
        return self.student.head(recover_cross_image(features, perms, self.n))

    def within_image(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every volume's cubes through the student: (location loss, the cubes' decoder features
        re-assembled to (B, F, X, Y, Z))."""
        b = x.shape[0]
        k = self.n**3
        cubes = self.to_memory_format(split_cubes(x, self.n))  # (B n^3, 1, c, c, c)
        skips = self.student.encode(cubes)
        bottlenecks = skips[-1].reshape(b, k, *skips[-1].shape[1:])
        losses = []
        for i in range(b):  # the location head's BatchNorm1d sees one volume's n^3 cubes at once
            shuffled, labels = shuffle_cubes(bottlenecks[i])
            locate = cast("VNetMagic", self.student).locate  # checked in __init__
            losses.append(F.cross_entropy(locate(shuffled).float(), labels))
        loss_loc = torch.stack(losses).mean()
        merged = merge_cubes(self.student.decode(skips), self.n)
        if self.released_cube_order:
            merged = transpose_cube_grid(merged, self.n)
        return loss_loc, merged

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher.noisy_forward(x, self.teacher_noise, train=True)  # MagicNet: train mode

    def consistency_weight(self, step: int) -> float:
        return magicnet_consistency_weight(
            step, self.cons_weight, self.cons_steps_per_epoch, self.cons_rampup_epochs
        )

    # --- training -------------------------------------------------------------------------------
    def blends_at(self, step: int) -> bool:
        """Whether the pseudo-labels of step ``step`` (finished steps before it) are blended."""
        return step >= self.blend_start

    def training_loss(self, batch: dict, batch_idx: int) -> torch.Tensor:
        labeled, unlabeled = batch["labeled"], batch.get("unlabeled")
        y = labeled["label"]
        x, n_l = self.joint_input(batch)
        check_cube_grid(x.shape[2:], self.n, self.student.size_divisor)
        skips = self.student.encode(x)
        features = self.student.decode(skips)
        logs: dict[str, torch.Tensor | float] = {}
        loss = features.new_zeros((), dtype=torch.float32)
        step = self.host_train_step(self.student, skips, features, y)
        if step.loss is not None:
            loss = loss + step.loss
        logs.update(step.logs)
        logits_unmix = self.cross_image_logits(x)
        loss_loc, local_features = self.within_image(x)
        logits_local = self.student.head(local_features)
        # MagicNet: [GACE + GADice](plain) + GADice(unmix) + GADice(local), averaged over the 4
        loss_sup = (
            self.sup_loss(step.logits[:n_l], y)
            + self.dice_loss(logits_unmix[:n_l], y)
            + self.dice_loss(logits_local[:n_l], y)
        ) / 4.0
        loss = loss + loss_sup + self.loc_weight * loss_loc
        logs.update({"train/loss_sup": loss_sup, "train/loss_loc": loss_loc})
        if unlabeled is not None:
            with torch.no_grad():
                t_logits = self.teacher_logits(x[n_l:])
                if self.blends_at(self.global_step):
                    source = (
                        local_features[:n_l]
                        if self.mix_pl_from == "labeled"
                        else (local_features[n_l:])
                    )
                    mix_logits = self.student.head(source.detach())[: t_logits.shape[0]]
                    t_logits = self.class_weights.blend(t_logits.float(), mix_logits.float())
                pseudo = t_logits.float().softmax(dim=1).argmax(dim=1)
                self.class_weights.observe(pseudo, self.global_step)
            loss_cons = self.dice_loss(logits_unmix[n_l:], pseudo)
            w = self.consistency_weight(self.global_step)
            loss = loss + w * loss_cons
            logs.update({"train/loss_unsup": loss_cons, "train/unsup_weight": w})
        self.log_step(logs, loss, x.shape[0])
        return loss
