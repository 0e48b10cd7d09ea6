"""Callbacks that break a training run on purpose (used by tests/test_resume.py through
``+callbacks.<name>._target_=fault_injection.<Class>`` with ``PYTHONPATH=tests``)."""

from __future__ import annotations

import os
import signal

import torch
from lightning.pytorch.callbacks import Callback, Checkpoint


class KillAfterCheckpoint(Checkpoint):
    """SIGKILLs the process when training step ``step`` starts: right after the checkpoint written
    at the end of the previous step (and the log flush that follows it; Lightning runs Checkpoint
    callbacks last, in the order given)."""

    def __init__(self, step: int) -> None:
        self.step = int(step)

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SaveTeacherAtStart(Checkpoint):
    """Writes the module's teacher weights to ``path`` when training (re)starts."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        torch.save({k: v.clone() for k, v in pl_module.teacher.state_dict().items()}, self.path)


class NaNLossAtStep(Checkpoint):
    """Makes the supervised loss NaN at training step ``step`` and writes to ``report`` whether
    the student and teacher weights stayed unchanged across that step."""

    def __init__(self, step: int, report: str) -> None:
        self.step, self.report = int(step), report
        self._before: list | None = None

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        if trainer.global_step != self.step:
            return
        self._before = [p.detach().clone() for p in pl_module.parameters()]
        loss = pl_module.sup_loss
        original = loss.forward

        def nan_once(*a, **k):
            loss.forward = original
            return original(*a, **k) * float("nan")

        loss.forward = nan_once

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if self._before is not None:
            after = list(pl_module.parameters())
            same = all(torch.equal(a, b) for a, b in zip(self._before, after, strict=True))
            with open(self.report, "w") as f:
                f.write(f"{int(same)}\n")
            self._before = None


class NaNWeightsAfterStep(Checkpoint):
    """Sets one student weight to NaN at the end of training step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = int(step)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.student.parameters()).view(-1)[0] = float("nan")


class NaNGradAtStep(NaNLossAtStep):
    """Makes one gradient NaN after the backward of training step ``step`` (the loss stays
    finite) and reports, like :class:`NaNLossAtStep`, whether the weights stayed unchanged."""

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.step:
            self._before = [p.detach().clone() for p in pl_module.parameters()]

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step == self.step:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.view(-1)[0] = float(
                "nan"
            )


class ScriptedScore(Callback):
    """Makes the module log ``scores[k]`` as ``key`` at the k-th validation (k = step - 1 with a
    validation after every step), so a test chooses which step holds the best checkpoint."""

    def __init__(self, scores: list[float], key: str = "val/dice") -> None:
        self.scores, self.key = [float(s) for s in scores], key

    def setup(self, trainer, pl_module, stage: str) -> None:
        original = pl_module.log

        def log(name, value, *args, **kwargs):
            if name == self.key and not trainer.sanity_checking:
                k = min(max(trainer.global_step - 1, 0), len(self.scores) - 1)
                value = torch.tensor(self.scores[k])
            return original(name, value, *args, **kwargs)

        pl_module.log = log


class RankProbe(Callback):
    """Writes ``<folder>/rank<r>.json`` at the end of training: per training step, a digest of the
    labeled patches and of the torch / numpy random states at the step's start (what the noise,
    the SCDL samples and dropout are drawn from)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.steps: list[dict] = []

    @staticmethod
    def _digest(data: bytes) -> str:
        import hashlib

        return hashlib.sha256(data).hexdigest()[:16]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import numpy as np

        self.steps.append(
            {
                "step": trainer.global_step,
                "patches": self._digest(batch["labeled"]["image"].numpy().tobytes()),
                "torch_rng": self._digest(torch.get_rng_state().numpy().tobytes()),
                "numpy_rng": self._digest(np.random.get_state()[1].tobytes()),  # noqa: NPY002
            }
        )

    def on_train_end(self, trainer, pl_module) -> None:
        import json
        from pathlib import Path

        path = Path(self.folder) / f"rank{trainer.global_rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.steps))
