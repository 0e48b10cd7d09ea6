"""Checkpoints that mean what their names say.

- :class:`BestCheckpoint` keeps the checkpoint with the best monitored score (``best-*.ckpt``) and
  never saves weights that are NaN/Inf or a NaN score as "best".
- :class:`LastCheckpoint` keeps ``last.ckpt`` the true latest state: written every
  ``every_n_train_steps`` optimiser steps, after every validation and at the end of training.

Both write through Lightning's ``trainer.save_checkpoint`` (atomic: a temporary file renamed over
the target), so a run killed while writing leaves the previous ``last.ckpt`` intact.

Order matters for resume: ``last.ckpt`` written after a validation must record the best
checkpoint chosen at that validation, or a resumed run takes that best for an orphan of a
discarded timeline (:func:`scdl.resume.set_aside_orphans`) and tests another one. So the best
checkpoint is saved at validation end (never deferred to the train epoch end, Lightning's default
when validation closes each epoch), and :class:`LastCheckpoint` places itself after every
:class:`~lightning.pytorch.callbacks.ModelCheckpoint` whatever the order of the config.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

from scdl.runs import LAST

log = logging.getLogger(__name__)


def weights_are_finite(module: torch.nn.Module) -> bool:
    """True when every parameter and floating-point buffer of ``module`` is finite."""
    tensors = [*module.parameters(), *(b for b in module.buffers() if b.is_floating_point())]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class BestCheckpoint(ModelCheckpoint):
    """:class:`~lightning.pytorch.callbacks.ModelCheckpoint` that refuses non-finite weights and a
    non-finite monitored value (Lightning would otherwise keep the first such checkpoint as best
    while fewer than ``save_top_k`` exist). It saves at validation end (``save_on_train_epoch_end``
    defaults to False; see the module docstring)."""

    def __init__(self, *args, save_on_train_epoch_end: bool | None = False, **kwargs) -> None:
        kwargs["save_on_train_epoch_end"] = save_on_train_epoch_end
        super().__init__(*args, **kwargs)

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        score = monitor_candidates.get(self.monitor) if self.monitor else None
        if score is not None and not math.isfinite(float(score)):
            log.warning(
                "%s is %s at step %d: no best checkpoint", self.monitor, score, trainer.global_step
            )
            return
        if not weights_are_finite(trainer.lightning_module):
            log.error("non-finite weights at step %d: no best checkpoint", trainer.global_step)
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)


class LastCheckpoint(Checkpoint):
    """Writes ``<dirpath>/last.ckpt`` every ``every_n_train_steps`` steps, after each validation
    during fit, and when training ends (also when it stops early), unless the weights are
    non-finite (then the previous ``last.ckpt`` stays, and an error is logged).

    Args:
        dirpath: the run's ``checkpoints`` folder.
        every_n_train_steps: optimiser steps between saves (0 = only at validation and end).
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 100) -> None:
        super().__init__()
        if int(every_n_train_steps) < 0:
            raise ValueError(f"every_n_train_steps must be >= 0, got {every_n_train_steps}")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = int(every_n_train_steps)
        self._saved_at: int | None = None
        self._flush_logs = False

    @property
    def path(self) -> Path:
        return self.dirpath / LAST

    def save(self, trainer: L.Trainer) -> None:
        if self._saved_at == trainer.global_step:
            return
        if not weights_are_finite(trainer.lightning_module):
            log.error(
                "non-finite weights at step %d: %s not updated (it keeps step %s)",
                trainer.global_step,
                self.path,
                self._saved_at,
            )
            return
        for logger in trainer.loggers:  # the logs up to this state are on disk before it
            logger.save()
        trainer.save_checkpoint(self.path, weights_only=False)  # the full training state
        self._saved_at = trainer.global_step
        self._flush_logs = True  # the step's own metrics are logged after on_train_batch_end

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Runs after every best-checkpoint callback at validation end, whatever the config order
        (Lightning runs checkpoint callbacks last, in the order given)."""
        # assigned by lightning's callback connector, not declared on its Trainer class
        callbacks = trainer.callbacks  # type: ignore[attr-defined]
        bests = [i for i, cb in enumerate(callbacks) if isinstance(cb, ModelCheckpoint)]
        if bests and callbacks.index(self) < max(bests):
            callbacks.remove(self)
            callbacks.insert(max(bests), self)  # max(bests) shifted down by one: right after it
        for cb in callbacks:
            if isinstance(cb, ModelCheckpoint) and cb._should_save_on_train_epoch_end(trainer):
                log.warning(
                    "%s saves at the train epoch end, after last.ckpt: a resumed run may not know "
                    "its best checkpoint; set save_on_train_epoch_end=false",
                    type(cb).__name__,
                )

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0 and trainer.global_step > 0:
            self.save(trainer)

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if self._flush_logs:
            for logger in trainer.loggers:
                logger.save()
            self._flush_logs = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._saved_at = checkpoint.get("global_step")
