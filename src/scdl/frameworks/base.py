"""What every semi-supervised framework shares: optimiser + poly schedule, sliding-window validation and
test with per-class Dice, and the ``segment`` hook that inference calls.

Subclasses implement :meth:`training_loss`, :meth:`segment` (a patch -> logits, the path used at
inference) and :meth:`parameter_groups`, and may override :meth:`after_optimizer_step` (EMA updates).
:meth:`training_step` wraps :meth:`training_loss` in the non-finite guard.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import cast

import lightning as L
import numpy as np
import torch
from torch import nn

from scdl.data.labels import assert_unique_class_names
from scdl.frameworks.plugin import FrameworkPlugin, PluginStep
from scdl.inference.sliding_window import SlidingWindowConfig, sliding_window_probs
from scdl.metrics.dice import AbsentPolicy, PerCaseDice
from scdl.metrics.results import aggregate_metrics, format_metrics_table, save_metrics
from scdl.models.contracts import SegmentationBackbone
from scdl.runs import TRAIN_TEST_STEM
from scdl.utils.distributed import is_distributed
from scdl.utils.schedules import poly_lr, sigmoid_rampup

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss was NaN/Inf for ``max_nonfinite_steps`` consecutive steps."""


class SemiSupervisedModule(L.LightningModule):
    """Base LightningModule.

    Args:
        num_classes: classes C including background.
        class_names: C names (index = label id), used in metric keys ``val/dice_<name>``.
        optimizer: a partial optimiser (Hydra ``_partial_: true``), called with parameter groups.
        poly_power: exponent of the poly learning-rate decay, stepped every iteration.
        poly_horizon: iterations over which the lr decays (default: ``trainer.max_steps``).
        inference: sliding-window settings for validation and test.
        val_absent: Dice of a class absent from the ground truth (see :func:`per_class_dice`).
        channels_last: run convolutions in channels-last-3D memory format (faster on CPU).
        unsup_weight, rampup_steps: weight of the unsupervised term and the length of its sigmoid
            ramp-up in iterations (:meth:`unsup_weight_at`).
        max_nonfinite_steps: a step whose loss is NaN/Inf is skipped (no optimiser or EMA update)
            and counted (``train/nonfinite_steps``); after this many consecutive skipped steps the
            run stops with :class:`NonFiniteLossError`. 0 = stop at the first one.
    """

    sup_loss: nn.Module  # set by the framework; the plug-in's train_step gets it

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        poly_power: float = 0.9,
        poly_horizon: int | None = None,
        inference: SlidingWindowConfig | dict | None = None,
        val_absent: AbsentPolicy = "zero",
        channels_last: bool = False,
        unsup_weight: float = 0.1,
        rampup_steps: int = 1000,
        max_nonfinite_steps: int = 20,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        names = list(class_names) if class_names is not None else []
        if names and len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        self.class_names = names or [f"class{i}" for i in range(self.num_classes)]
        assert_unique_class_names(self.class_names, source="class_names")  # metric keys
        self.optimizer_factory = optimizer or (
            lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
        )
        self.poly_power = poly_power
        self.poly_horizon = poly_horizon
        if isinstance(inference, dict) or inference is None:
            inference = SlidingWindowConfig(**(dict(inference) if inference else {}))
        self.inference_cfg = inference
        self.channels_last = channels_last
        self.unsup_weight = unsup_weight
        self.rampup_steps = rampup_steps
        if int(max_nonfinite_steps) < 0:
            raise ValueError(f"max_nonfinite_steps must be >= 0, got {max_nonfinite_steps}")
        self.max_nonfinite_steps = int(max_nonfinite_steps)
        self.nonfinite_steps = 0  # skipped steps in total (restored on resume)
        self._consecutive_nonfinite = 0
        self._step_skipped = False
        self._rng_restored = False  # on_load_checkpoint restored this rank's random streams
        self._last_logs: dict = {}
        self.plugin: FrameworkPlugin | None = None
        # the resolved run config (plain values: model, plug-in, data classes and protocol,
        # split), set by training and embedded in every checkpoint
        self.run_config: dict | None = None
        self.val_dice = PerCaseDice(self.num_classes, val_absent)
        self.test_dice = PerCaseDice(self.num_classes, "skip")
        self.val_case_ids: list[str] = []  # cases of the last validation (all ranks)
        self.test_case_ids: list[str] = []
        # foreground class ids with the fewest labeled voxels (set from the data by training):
        # their mean Dice is logged as <stage>/dice_minority
        self.minority_classes: list[int] = []
        self.test_results: dict | None = None

    # --- to implement -------------------------------------------------------------------------
    def training_loss(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """The scalar loss of one iteration (labeled + unlabeled batch); logs its parts."""
        raise NotImplementedError

    def after_optimizer_step(self, step: int) -> None:
        """Runs right after every optimiser step that was not skipped (e.g. the EMA teacher
        update), before any callback sees the step: a checkpoint written at the step's end holds
        the updated teacher. ``step`` is the 0-based index of that optimiser step."""

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Inference path: a patch (N, 1, X, Y, Z) -> logits (N, C, X, Y, Z). Default: the
        :attr:`plugin_host` (through the plug-in when it changes inference)."""
        if self.plugin is None or not self.plugin.changes_inference:
            return self.plugin_host(x)
        return self.host_inference_logits(self.plugin_host, self.plugin_features(x))

    def parameter_groups(self) -> list[dict]:
        """Optimiser parameter groups (dicts with ``params`` and optional per-group settings).
        Default: the :attr:`plugin_host` (``backbone``) and the plug-in's group; a framework with
        other trainable parameters overrides this (checked: none may be left out)."""
        groups = [
            {"params": list(cast(nn.Module, self.plugin_host).parameters()), "name": "backbone"},
            *self.plugin_parameter_groups(),
        ]
        grouped = {id(p) for g in groups for p in g["params"]}
        missing = [
            n for n, p in self.named_parameters() if p.requires_grad and id(p) not in grouped
        ]
        if missing:
            raise NotImplementedError(
                f"{type(self).__name__} has trainable parameters outside its plug-in host and "
                f"plug-in ({missing[:4]}...): override parameter_groups()"
            )
        return groups

    # --- plug-in hooks ------------------------------------------------------------------------
    @property
    def plugin_host(self) -> SegmentationBackbone:
        """The backbone a plug-in attaches to (the student, CPS's network A, ...)."""
        raise NotImplementedError

    def attach_plugin(self, plugin: FrameworkPlugin | None) -> None:
        """Plugs a plug-in (e.g. SCDL) into :attr:`plugin_host` (None = off); its classes must be
        the model's."""
        if plugin is not None and plugin.num_classes != self.num_classes:
            raise ValueError(
                f"the plug-in has {plugin.num_classes} classes, the model {self.num_classes}"
            )
        self.plugin = plugin
        if plugin is not None:
            self.convert_memory_format(plugin)

    def plugin_parameter_groups(self) -> list[dict]:
        return [] if self.plugin is None else [self.plugin.parameter_group(self.base_lr)]

    def plugin_features(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder features (B, F, X, Y, Z) of :attr:`plugin_host`, which the plug-in reads."""
        host = self.plugin_host
        return host.decode(host.encode(x))

    def host_inference_logits(
        self, net: SegmentationBackbone, features: torch.Tensor
    ) -> torch.Tensor:
        """Inference logits of ``net`` on its decoder ``features`` (through the plug-in when it
        changes inference)."""
        if self.plugin is None or not self.plugin.changes_inference:
            return net.head(features)
        return self.plugin.inference_logits(net, features)

    def host_train_step(
        self,
        net: SegmentationBackbone,
        skips: list[torch.Tensor],
        features: torch.Tensor,
        labels: torch.Tensor,
    ) -> PluginStep:
        """Training logits of ``net`` for the batch (labeled first) plus the plug-in's loss and
        logs; without a plug-in just ``net.head(features)``."""
        if self.plugin is None:
            return PluginStep(logits=net.head(features))
        if hasattr(self.plugin, "training_step_index"):  # for plug-ins with schedules
            self.plugin.training_step_index = self.global_step
        return self.plugin.train_step(net, skips, features, labels, self.sup_loss)

    def unsup_weight_at(self, step: int) -> float:
        return self.unsup_weight * sigmoid_rampup(step, self.rampup_steps)

    def joint_input(self, batch: dict) -> tuple[torch.Tensor, int]:
        """Labeled then unlabeled images as one (Bl + Bu, 1, P, P, P) tensor, and Bl."""
        labeled, unlabeled = batch["labeled"], batch.get("unlabeled")
        x = (
            labeled["image"]
            if unlabeled is None
            else torch.cat([labeled["image"], unlabeled["image"]])
        )
        return self.to_memory_format(x), labeled["image"].shape[0]

    def log_step(self, logs: dict, loss: torch.Tensor, batch_size: int) -> None:
        logs["train/loss"] = loss
        self._last_logs = logs
        self.log_dict(logs, batch_size=batch_size)
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=batch_size)

    # --- non-finite guard ---------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        """:meth:`training_loss`, or None (Lightning then skips backward and the parameter update)
        when the loss is NaN/Inf on any rank."""
        self._last_logs = {}
        loss = self.training_loss(batch, batch_idx)
        bad = not bool(torch.isfinite(loss.detach()).all())
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:  # every rank skips, or none (DDP)
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        self._step_skipped = bad
        if bad:
            parts = sorted(
                k
                for k, v in self._last_logs.items()
                if isinstance(v, torch.Tensor) and not bool(torch.isfinite(v).all())
            )
            self._skip_step(
                f"non-finite loss at step {self.global_step} (non-finite terms: "
                f"{', '.join(parts) or 'loss'})",
                "Check the data (python src/check_data.py data=...), lower optimizer.lr, or try "
                "trainer.precision=32-true.",
            )
        if trainer is not None:
            self.log("train/nonfinite_steps", float(self.nonfinite_steps), batch_size=1)
        return None if bad else loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """A finite loss can still give NaN/Inf gradients (e.g. an overflow under bf16 autocast):
        then the step is skipped as well (gradients dropped, no parameter or EMA update) and
        counted. Gradients are already all-reduced here, so every DDP rank decides alike.

        Under fp16 mixed precision the gradients arrive unscaled, and the GradScaler skips the
        optimiser step itself (and lowers its scale): the step is counted here alike, and the EMA
        update skipped (:meth:`optimizer_step`)."""
        if self._step_skipped:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        grads = [g for g in grads if g is not None]
        # one float64 sum per tensor: NaN/Inf anywhere makes the total non-finite, and finite
        # float32/bf16 values cannot overflow it (3x cheaper than isfinite().all() per tensor)
        if not grads or bool(
            torch.isfinite(torch.stack([g.sum(dtype=torch.float64) for g in grads]).sum())
        ):
            return
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            self._skip_step(
                f"non-finite gradients at step {self.global_step} (fp16 overflow: the GradScaler "
                "skips the step and lowers its scale)",
                "A few at the start are the scaler calibrating; if they persist use "
                "trainer.precision=bf16-mixed (GPUs with bf16: A100, H100, ...) or 32-true.",
            )
            return
        optimizer.zero_grad(set_to_none=True)  # optimisers skip parameters without a gradient
        self._skip_step(
            f"non-finite gradients at step {self.global_step} (finite loss)",
            "Try trainer.precision=32-true or a lower optimizer.lr.",
        )

    def _skip_step(self, what: str, fix: str) -> None:
        """Marks this step skipped and counts it; warns, or raises :class:`NonFiniteLossError`
        after more than ``max_nonfinite_steps`` skipped steps in a row."""
        self._step_skipped = True
        self.nonfinite_steps += 1
        self._consecutive_nonfinite += 1
        message = (
            f"{what}; step skipped, {self._consecutive_nonfinite} in a row, "
            f"{self.nonfinite_steps} in total"
        )
        if self._consecutive_nonfinite > self.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"training stopped: {message}, more than framework.max_nonfinite_steps="
                f"{self.max_nonfinite_steps}. {fix} The last good state is "
                "<run>/checkpoints/last.ckpt."
            )
        log.warning(message)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)  # runs training_step + backward in its closure
        if not self._step_skipped:
            self._consecutive_nonfinite = 0
            # global_step is incremented after this hook: it is still this step's index
            self.after_optimizer_step(self.global_step)

    def on_train_start(self) -> None:
        """Under DDP every rank was seeded alike, which gives every rank the same initial weights;
        from here each rank draws its own random numbers (teacher noise, SCDL samples, dropout,
        cube permutations): rank r > 0 reseeds its streams from (seed, r) and rank 0 keeps its own,
        so a one-process run is unchanged. A resumed run has restored each rank's own streams."""
        trainer = self.trainer
        if trainer.world_size > 1 and not self._rng_restored:
            seed_rank_streams(trainer.global_rank)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["nonfinite_steps"] = self.nonfinite_steps
        if self.run_config is not None:  # a checkpoint copied anywhere evaluates on its own
            checkpoint["run_config"] = self.run_config
        checkpoint["rng_states"] = rng_states()
        # every rank dumps the checkpoint (rank 0 writes it): keep each rank's streams
        if is_distributed():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, checkpoint["rng_states"])
            checkpoint["rng_states_per_rank"] = gathered

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.nonfinite_steps = int(checkpoint.get("nonfinite_steps", 0))
        trainer = self._trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        per_rank = checkpoint.get("rng_states_per_rank")
        if per_rank and len(per_rank) == world:  # a resumed run continues each rank's streams
            set_rng_states(per_rank[rank])
            self._rng_restored = True
        elif "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])
            self._rng_restored = world == 1
            if world > 1:
                log.warning(
                    "the checkpoint holds the random streams of %s, not of these %d ranks: each "
                    "rank reseeds its own (the resumed run is not bitwise that of an uninterrupted "
                    "one)",
                    f"{len(per_rank)} ranks" if per_rank else "one process",
                    world,
                )

    @property
    def base_lr(self) -> float | None:
        """Learning rate of the partial optimiser (for relative per-group rates), if known."""
        return getattr(self.optimizer_factory, "keywords", {}).get("lr")

    def to_memory_format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else x

    def convert_memory_format(
        self, *modules: nn.Module | SegmentationBackbone | FrameworkPlugin
    ) -> None:
        """Backbones and plug-ins are modules too (their protocols name only their own part)."""
        if self.channels_last:  # only 5-D weights have a channels-last-3D layout
            for m in modules:
                for conv in cast(nn.Module, m).modules():
                    if isinstance(conv, nn.Conv3d | nn.ConvTranspose3d):
                        # torch's stub of Module.to lacks the memory_format keyword it accepts
                        conv.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]

    def predict_volume(self, image: torch.Tensor) -> torch.Tensor:
        """Whole volume (B, 1, X, Y, Z) -> class probabilities (B, C, X, Y, Z).

        Leaves the random streams as it found them (a plug-in may sample while predicting):
        validation must not move the training's random numbers, or a run resumed from the
        checkpoint written before a validation would draw other noise than the uninterrupted run.
        """
        devices = [image.device] if image.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return sliding_window_probs(
                lambda x: self.segment(self.to_memory_format(x)), image, self.inference_cfg
            )

    # --- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameter_groups())
        max_steps = self.trainer.max_steps if self.trainer is not None else -1
        if max_steps is None or max_steps <= 0:
            raise ValueError("trainer.max_steps must be set: the poly schedule decays over it")
        scheduler = poly_lr(optimizer, max_steps, self.poly_power, self.poly_horizon)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # --- validation / test ---------------------------------------------------------------------
    # Each case is scored exactly once under DDP too: batches carry the case's data-set position
    # (``index``), under which PerCaseDice drops the copies a padding distributed sampler makes and
    # restores the single-process order, so val/test Dice equal the single-process values.
    def _evaluate(self, batch: dict, metric: PerCaseDice) -> None:
        """``batch``: ``image`` (B, 1, X, Y, Z), ``label`` (B, X, Y, Z), ``case_id`` (B names) and
        ``index`` (B,) data-set positions (needed under DDP)."""
        probs = self.predict_volume(batch["image"])
        metric.update(probs.argmax(dim=1), batch["label"], batch.get("index"), batch.get("case_id"))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_dice)

    def on_validation_epoch_end(self) -> None:
        rows = self.val_dice.compute()
        self.val_case_ids = self.val_dice.compute_case_ids()  # the cases behind val/dice
        self._log_dice("val", rows)
        self.val_dice.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_dice)

    def on_test_epoch_end(self) -> None:
        rows = self.test_dice.compute()
        self.test_case_ids = self.test_dice.compute_case_ids()
        self._log_dice("test", rows)
        self.test_dice.reset()
        if rows.numel() == 0:
            self.test_results = None
            return
        # the one results schema of scdl.metrics.results, as src/eval.py writes it
        self.test_results = aggregate_metrics(
            [{"dice": row} for row in rows.cpu().double().numpy()],
            class_names=self.class_names[1:],
            case_ids=self.test_case_ids,
            protocol="train_test",
        )
        self.test_results["dice_absent"] = self.test_dice.absent
        self.test_results["ckpt"] = getattr(self.trainer, "ckpt_path", None)
        if self.trainer.is_global_zero:
            # written here, not by the caller: under ddp_spawn the caller never sees this module
            out_dir = self.trainer.default_root_dir
            paths = save_metrics(self.test_results, out_dir, stem=TRAIN_TEST_STEM)
            self.test_results["files"] = {k: str(v) for k, v in paths.items()}
            title = f"test Dice ({out_dir})"
            print(format_metrics_table(self.test_results, use_rich=True, title=title))

    def _log_dice(self, stage: str, rows: torch.Tensor) -> None:
        if rows.numel() == 0:
            return
        per_class = torch.nanmean(rows, dim=0)
        # rows are already gathered from every rank and deduplicated (PerCaseDice): no sync_dist
        self.log(f"{stage}/dice", torch.nanmean(per_class), prog_bar=True)
        for name, value in zip(self.class_names[1:], per_class, strict=True):
            self.log(f"{stage}/dice_{name}", value)
        if self.minority_classes:
            minority = per_class[[c - 1 for c in self.minority_classes]]
            self.log(f"{stage}/dice_minority", torch.nanmean(minority))


def unlabeled_stream(module: L.LightningModule, key: str) -> tuple[int, int]:
    """(unlabeled cases of the run's split, unlabeled patches per step) from the trainer's data
    module, for a size its reference derives from the unlabeled loader (Adsh's window, Acisis's
    epoch). ValueError naming ``framework.<key>`` where the data module has no split."""
    datamodule = getattr(module.trainer, "datamodule", None)
    split = getattr(datamodule, "split", None)
    unlabeled_bs = int(getattr(datamodule, "unlabeled_bs", 0) or 0)
    if split is None or unlabeled_bs < 1:
        raise ValueError(
            f"framework.{key}=null is derived from the data module's split and unlabeled_bs, "
            f"and {type(datamodule).__name__} has {'no split' if split is None else 'no unlabeled batch'}: "
            f"set framework.{key} to an integer"
        )
    return len(split.unlabeled), unlabeled_bs


def rng_states() -> dict:
    """torch (CPU and CUDA), numpy and Python RNG states as plain values (weights-only loadable)."""
    kind, keys, pos, has_gauss, cached = cast(  # the legacy tuple (not the legacy=False dict)
        "tuple[str, np.ndarray, int, int, float]",
        np.random.get_state(),  # noqa: NPY002 - global RNG
    )
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": list(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def seed_rank_streams(rank: int) -> None:
    """Reseeds the torch (CPU and CUDA), numpy and Python random streams of DDP rank ``rank`` > 0
    from ``(torch.initial_seed(), rank)``; rank 0 keeps its streams."""
    if rank == 0:
        return
    seed = int(np.random.SeedSequence([torch.initial_seed(), rank]).generate_state(1)[0])
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - the global stream the frameworks draw from
    random.seed(seed)


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(  # noqa: NPY002 - restores the global RNG
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
