"""W&B panels of validation: per-class Dice at the best step and segmentation overlays of small organs.

At every validation end where ``val/dice`` is the best so far, :class:`WandbValidationMedia` logs the
per-class validation Dice as a ``wandb.Table`` (``val/per_class_dice``) and as a bar chart
(``val/per_class_dice_chart``) and records the step in the run summary (``val/best_step``). At every
validation end it logs ``val/overlays``: a few fixed axial slices of a validation case with the
ground truth and the prediction as W&B masks (toggled and coloured per class in the W&B UI).

The slices are chosen once, on the first validation, to show small organs
(:func:`choose_overlay_slices`): for the smallest foreground classes by voxel count in the
validation labels, the axial slice with the most voxels of that class (a class already visible in
a chosen slice gives its place to the next one). Predictions come from
``pl_module.predict_volume`` (what validation computes) on the overlay case(s) only.

Everything is logged through the run object of the attached W&B logger, so an offline run holds it
all for ``wandb sync``; the overlays are also written as plain arrays
(``<run>/figures/overlays_step<N>.npz``: :func:`scdl.runs.save_overlays`), which the run dashboard
(:mod:`scdl.reporting.dashboard`) draws without reading W&B's files. No-op without a W&B logger, on
ranks other than zero and in sanity checks.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from scdl.loggers import STEP_METRIC
from scdl.runs import FIGURES, save_overlays
from scdl.utils.display import slice_class_counts, to_display, to_uint8

if TYPE_CHECKING:
    from scdl.frameworks.base import SemiSupervisedModule

log = logging.getLogger(__name__)

OVERLAY_KEY = "val/overlays"
TABLE_KEY = "val/per_class_dice"
CHART_KEY = "val/per_class_dice_chart"
BEST_STEP_KEY = "val/best_step"


@dataclass(frozen=True)
class OverlaySlice:
    """One overlay: slice ``index`` along the slice axis of candidate volume ``volume``, chosen to
    show class ``class_index``."""

    volume: int
    index: int
    class_index: int


def choose_overlay_slices(
    labels: Sequence[np.ndarray],
    num_slices: int = 3,
    class_counts: np.ndarray | None = None,
    axis: int = -1,
    shown_fraction: float = 0.5,
) -> list[OverlaySlice]:
    """Slices that show small organs, deterministically.

    Foreground classes present in ``labels`` are ranked by their voxel count (``class_counts``,
    e.g. over every validation label, else over ``labels``), smallest first; for each the slice
    along ``axis`` (of any volume of ``labels``) with the most voxels of it is taken, ties going to
    the first volume and the lowest slice. A class that a slice chosen before already shows (with at
    least ``shown_fraction`` of the voxels of its own best slice) is skipped, so that neighbouring
    small organs (both adrenal glands, say) do not fill every overlay with the same anatomy; the
    next smallest class gets the slot. Stops at ``num_slices`` slices.

    Args:
        labels: integer label volumes (background 0), the candidates for the overlays.
        num_slices: at most this many slices.
        class_counts: (C,) voxel counts ranking the classes; default the counts of ``labels``.
        axis: slice axis (-1: axial for the RAS volumes of the preprocessed caches).
        shown_fraction: see above; 1.0: skipped only where a chosen slice holds as many voxels of
            it as its best slice.

    Returns:
        The slices, in the order of their classes (smallest class first).
    """
    if not labels or num_slices <= 0:
        return []
    num_classes = int(max(int(np.max(lab)) for lab in labels)) + 1
    if class_counts is not None:
        num_classes = max(num_classes, len(class_counts))
    per_slice = [slice_class_counts(lab, num_classes, axis) for lab in labels]
    totals = np.zeros(num_classes, dtype=np.int64)
    if class_counts is not None:
        totals[: len(class_counts)] = np.asarray(class_counts, dtype=np.int64)
    else:
        totals = sum(c.sum(0) for c in per_slice)
    present = [c for c in range(1, num_classes) if any(p[:, c].any() for p in per_slice)]
    chosen: list[OverlaySlice] = []
    for c in sorted(present, key=lambda c: (int(totals[c]), c)):
        # the most voxels of c; ties: first volume, lowest slice
        most, v, s = max(
            (int(p[:, c].max()), -v, -int(p[:, c].argmax())) for v, p in enumerate(per_slice)
        )
        if any(per_slice[o.volume][o.index, c] >= shown_fraction * most for o in chosen):
            continue  # already on screen
        chosen.append(OverlaySlice(-v, -s, c))
        if len(chosen) == num_slices:
            break
    return chosen


def logging_step(trainer: L.Trainer) -> int:
    """The step Lightning logs validation metrics at: their x (``trainer/global_step``) in W&B and
    their ``step`` in ``metrics.csv``. Inside the training loop that is the number of batches
    stepped before the current one (``global_step - 1`` at a validation every N iterations), so media
    logged at it line up with ``val/dice`` on the W&B step slider."""
    epoch_loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return int(getattr(epoch_loop, "_batches_that_stepped", trainer.global_step))


def wandb_logger(trainer: L.Trainer) -> WandbLogger | None:
    """The trainer's first ``WandbLogger`` (None without one)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return logger
    return None


class WandbValidationMedia(L.Callback):
    """Logs per-class Dice (best step) and segmentation overlays of small organs to W&B.

    Args:
        num_slices: overlays per validation (one slice per small class, see
            :func:`choose_overlay_slices`).
        max_cases: the overlay slices are chosen among the first ``max_cases`` validation cases;
            each validation predicts these cases again (``predict_volume``), so keep it to 1-2.
        every_n_validations: log overlays at every n-th validation (the best-step table always).
        monitor: the validation metric whose best value triggers the per-class table.
    """

    def __init__(
        self,
        num_slices: int = 3,
        max_cases: int = 1,
        every_n_validations: int = 1,
        monitor: str = "val/dice",
    ) -> None:
        self.num_slices = num_slices
        self.max_cases = max_cases
        self.every_n_validations = max(1, every_n_validations)
        self.monitor = monitor
        self.best: float | None = None
        self.best_step: int | None = None
        self.slices: list[OverlaySlice] | None = None
        self._cases: list[dict] = []  # candidate cases: case_id, image (1, 1, X, Y, Z), label
        self._class_counts: np.ndarray | None = None
        self._validations = 0

    # --- state (the best value survives a resume) ------------------------------------------------
    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict.get("best")
        self.best_step = state_dict.get("best_step")

    # --- collect -------------------------------------------------------------------------------
    def _active(self, trainer: L.Trainer) -> bool:
        return (
            trainer.is_global_zero
            and not trainer.sanity_checking
            and any(isinstance(lg, WandbLogger) for lg in trainer.loggers)
        )

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.slices is not None or not self._active(trainer):
            return
        if not isinstance(batch, dict) or "label" not in batch or "image" not in batch:
            return
        labels = batch["label"].detach().cpu()
        num_classes = int(getattr(pl_module, "num_classes", int(labels.max()) + 1))
        counts = torch.bincount(labels.flatten().clamp(0, num_classes - 1), minlength=num_classes)
        self._class_counts = counts.numpy() + (
            self._class_counts if self._class_counts is not None else 0
        )
        ids = batch.get("case_id") or [f"val{batch_idx}_{i}" for i in range(len(labels))]
        for i in range(len(labels)):
            if len(self._cases) < self.max_cases:
                self._cases.append(
                    {
                        "case_id": str(ids[i]),
                        "image": batch["image"][i : i + 1].detach().cpu(),
                        "label": labels[i].numpy(),
                    }
                )

    # --- log -----------------------------------------------------------------------------------
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = wandb_logger(trainer)
        if logger is None or not self._active(trainer):
            return
        import wandb

        run = logger.experiment
        # the x of this validation's val/dice in W&B (and its step in metrics.csv)
        logged = getattr(logger, "logged_step", lambda key: None)(self.monitor)
        step = logged if logged is not None else logging_step(trainer)
        logs: dict[str, Any] = {}
        metric = trainer.callback_metrics.get(self.monitor)
        value = float(metric) if metric is not None else math.nan
        if math.isfinite(value) and (self.best is None or value > self.best):
            self.best, self.best_step = value, step
            logs.update(self._per_class(trainer, pl_module, wandb, step))
            run.summary[BEST_STEP_KEY] = step
        if self.slices is None and self._cases:
            self.slices = choose_overlay_slices(
                [c["label"] for c in self._cases], self.num_slices, self._class_counts
            )
            log.info(
                "W&B overlays: %s",
                ", ".join(
                    f"{self._cases[s.volume]['case_id']} z={s.index} "
                    f"({_name(pl_module, s.class_index)})"
                    for s in self.slices
                ),
            )
        if self.slices and self._validations % self.every_n_validations == 0:
            logs[OVERLAY_KEY] = self._overlays(trainer, pl_module, wandb, step)
        self._validations += 1
        if logs:
            run.log({**logs, STEP_METRIC: step})

    def _per_class(
        self, trainer: L.Trainer, pl_module: L.LightningModule, wandb: Any, step: int
    ) -> dict:
        names = list(getattr(pl_module, "class_names", []))[1:]
        rows = [
            [name, float(trainer.callback_metrics[f"{self.monitor}_{name}"])]
            for name in names
            if f"{self.monitor}_{name}" in trainer.callback_metrics
        ]
        if not rows:
            return {}
        table = wandb.Table(columns=["class", "dice"], data=rows)
        title = f"Per-class validation Dice, best step {step}"
        return {TABLE_KEY: table, CHART_KEY: wandb.plot.bar(table, "class", "dice", title=title)}

    @torch.no_grad()
    def _overlays(
        self, trainer: L.Trainer, pl_module: L.LightningModule, wandb: Any, step: int
    ) -> list:
        assert self.slices is not None
        num_classes = cast(int, pl_module.num_classes)
        class_labels = {i: _name(pl_module, i) for i in range(int(num_classes))}
        predictions: dict[int, np.ndarray] = {}
        images, planes = [], []
        for s in self.slices:
            case = self._cases[s.volume]
            if s.volume not in predictions:
                predictions[s.volume] = self._predict(trainer, pl_module, case["image"])
            image = to_display(case["image"][0, 0, ..., s.index].float().numpy())
            truth = to_display(case["label"][..., s.index]).astype(np.uint8)
            pred = to_display(predictions[s.volume][..., s.index]).astype(np.uint8)
            caption = f"{case['case_id']} z={s.index} ({_name(pl_module, s.class_index)})"
            planes.append((to_uint8(image), truth, pred, caption))
            images.append(
                wandb.Image(
                    to_uint8(image),
                    masks={
                        "ground_truth": {"mask_data": truth, "class_labels": class_labels},
                        "prediction": {"mask_data": pred, "class_labels": class_labels},
                    },
                    caption=f"{caption}, step {step}",
                )
            )
        names = [class_labels[i] for i in sorted(class_labels)]
        save_overlays(Path(trainer.default_root_dir) / FIGURES, step, planes, names)
        return images

    @staticmethod
    def _predict(
        trainer: L.Trainer, pl_module: L.LightningModule, image: torch.Tensor
    ) -> np.ndarray:
        """Label map (X, Y, Z) of ``predict_volume``, under the trainer's validation precision."""
        plugin = getattr(trainer, "precision_plugin", None)
        context = plugin.val_step_context() if plugin is not None else contextlib.nullcontext()
        was_training = pl_module.training
        pl_module.eval()
        try:
            with context:
                module = cast("SemiSupervisedModule", pl_module)
                probs = module.predict_volume(image.to(pl_module.device))
        finally:
            pl_module.train(was_training)
        return probs.argmax(dim=1)[0].cpu().numpy()


def _name(pl_module: L.LightningModule, index: int) -> str:
    names = list(getattr(pl_module, "class_names", []))
    return str(names[index]) if index < len(names) else f"class{index}"
