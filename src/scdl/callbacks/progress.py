"""Training progress that reads well in a log file.

On a terminal Lightning's tqdm bar is right. In a log file (SLURM, ``nohup``, a Hydra multirun's
job log, CI) the bar is a stream of carriage returns: ``progress_bar`` picks
:class:`TrainingProgressLines` there instead, one line every ``every_n_steps`` steps (and at least
every ``every_s`` seconds), e.g. ``train: step 150/500 (30%), loss 1.234, 1.71 it/s, 1:28 elapsed,
~3:25 left``, and one line per validation with the monitored scores.
"""

from __future__ import annotations

import sys
import time
from typing import Any, cast

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

from scdl.utils.progress import format_clock


class TrainingProgressLines(ProgressBar):
    """Plain progress lines for training and validation (see the module docstring)."""

    def __init__(self, every_n_steps: int = 50, every_s: float = 120.0, stream: Any = None) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps, self.every_s = every_n_steps, every_s
        self._stream = stream
        self._enabled = True
        self._start = self._last = 0.0
        self._first_step = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, text: str) -> None:
        if self._enabled:
            print(text, file=self._stream or sys.stdout, flush=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._last = time.monotonic()
        self._first_step = trainer.global_step  # a resumed run: the speed counts new steps only

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step, now = trainer.global_step, time.monotonic()
        if step % self.every_n_steps and now - self._last < self.every_s:
            return
        self._last = now
        done, elapsed = step - self._first_step, now - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        parts = [f"train: step {step}" + (f"/{total} ({100 * step // total}%)" if total else "")]
        loss = self.get_metrics(trainer, pl_module).get("loss")
        if loss is not None:
            parts.append(f"loss {float(cast(float, loss)):.3f}")
        parts += [f"{rate:.2f} it/s", f"{format_clock(elapsed)} elapsed"]
        if total and rate > 0:
            parts.append(f"~{format_clock((total - step) / rate)} left")
        self._print(", ".join(parts))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        scores = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k in ("val/dice", "val/dice_minority") and v.numel() == 1
        }
        if scores:
            text = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
            self._print(f"validation at step {trainer.global_step}: {text}")


def progress_bar(refresh_rate: int = 5, every_n_steps: int = 50) -> ProgressBar:
    """Lightning's tqdm bar on a terminal (stderr), :class:`TrainingProgressLines` otherwise."""
    if sys.stderr.isatty():
        return TQDMProgressBar(refresh_rate=refresh_rate)
    return TrainingProgressLines(every_n_steps=every_n_steps)
