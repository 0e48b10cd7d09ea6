"""Resuming a run: which checkpoint, which step, and the checkpoints a killed run left behind.

``python src/train.py experiment=... run_name=<name> resume=true`` continues the run folder of that
name (the same folder Hydra resolves for that ``task_name`` / ``experiment_name`` / ``run_name``)
from its ``checkpoints/last.ckpt``; ``ckpt_path=<run>/checkpoints/last.ckpt`` with the same
``run_name`` is the explicit form. Every checkpoint the project writes holds plain values only and
is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from scdl.runs import (
    CHECKPOINTS,
    DISCARDED,
    FINISHED,
    LAST,
    CheckpointReadError,
    checkpoint_step,
    finished_record,
    read_checkpoint,
)
from scdl.utils.config import in_multirun
from scdl.utils.schedules import poly_factor

log = logging.getLogger(__name__)


class ResumeError(ValueError, CompactHydraException):
    """A resume request that cannot be honoured; the message says why and what to run."""


@dataclass(frozen=True)
class ResumePlan:
    """``ckpt_path`` for ``trainer.fit`` (None: fresh start), the step it holds, and whether it is
    this run folder's own checkpoint (then logs are continued, not restarted)."""

    ckpt_path: str | None = None
    step: int | None = None
    same_run: bool = False
    finished: dict | None = None  # the finished run's record: nothing left to do


def plan_resume(cfg: DictConfig, output_dir: Path) -> ResumePlan:
    """What ``cfg.resume`` / ``cfg.ckpt_path`` ask for, checked against the run folder."""
    ckpt = cfg.get("ckpt_path")
    if cfg.get("resume"):
        # in a multirun the sweep_name + job fix the folder; a single run needs its run_name
        if OmegaConf.is_interpolation(cfg, "run_name") and not in_multirun():
            raise ResumeError(
                "resume=true needs the name of the run to continue: add run_name=<folder name> "
                f"(the folders of this experiment are in {output_dir.parent})"
            )
        done = finished_record(output_dir)
        if done is not None:
            extended = _extension(cfg, output_dir, done)
            if extended is None:
                return ResumePlan(finished=done)
            ckpt = str(extended)
        last = output_dir / CHECKPOINTS / LAST
        if ckpt is None and last.is_file():
            ckpt = str(last)
        elif ckpt is None:
            log.warning("resume=true: no %s yet, starting run %s from scratch", last, output_dir)
            return ResumePlan()
    if ckpt is None:
        return ResumePlan()
    path = Path(str(ckpt)).expanduser()
    if not path.is_file():
        raise ResumeError(f"ckpt_path={ckpt}: no such checkpoint file")
    try:
        step = checkpoint_step(path)
    except CheckpointReadError as err:  # name the other checkpoints the run could resume from
        others = sorted(p.name for p in path.parent.glob("*.ckpt") if p != path)
        where = (
            f" Other checkpoints in {path.parent}: {', '.join(others)} (ckpt_path=<file> with the "
            "same run_name resumes from one; a best-*.ckpt restarts at its step)"
            if others
            else " No other checkpoint is in that folder: start the run again (resume=false)."
        )
        raise ResumeError(f"ckpt_path={path} cannot be resumed from: {err}.{where}") from err
    same_run = output_dir.resolve() in path.resolve().parents
    log.info("resuming from %s (step %d)%s", path, step, "" if same_run else " into a new folder")
    return ResumePlan(str(path), step, same_run)


def _extension(cfg: DictConfig, output_dir: Path, done: dict) -> Path | None:
    """``last.ckpt`` of a finished run when ``trainer.max_steps`` asks for more steps than it
    trained (the run is continued there, its ``finished.json`` kept as
    ``finished-step<N>.json``); None when there is nothing left to do."""
    last = output_dir / CHECKPOINTS / LAST
    wanted = OmegaConf.select(cfg, "trainer.max_steps", default=None)
    step = checkpoint_step(last) if last.is_file() else None
    if step is None or wanted is None or int(wanted) <= step:
        log.warning(
            "resume=true: run %s finished at %s%s: nothing to do (%s)",
            output_dir,
            done.get("finished_at", "?"),
            "" if step is None else f", step {step} (trainer.max_steps={wanted})",
            "a larger trainer.max_steps continues it; a new sweep_name starts a new sweep"
            if in_multirun()
            else "a larger trainer.max_steps continues it; resume=false or a new run_name starts "
            "a new run",
        )
        return None
    horizon = OmegaConf.select(cfg, "framework.poly_horizon", default=None)
    power = float(OmegaConf.select(cfg, "framework.poly_power", default=0.9) or 0.9)
    if horizon is None:
        factor = poly_factor(step, int(wanted), power)
        schedule = (
            f"the poly learning-rate schedule decays over the new trainer.max_steps={wanted}: "
            f"from step {step} the lr is {factor:.3g} x the base lr (it was near 0 at the end of "
            f"the finished run), so the result differs from a {wanted}-step run trained from the "
            "start"
        )
    else:
        schedule = f"the poly schedule keeps its horizon framework.poly_horizon={horizon}"
    log.warning(
        "resume=true trainer.max_steps=%s: run %s finished at step %d; continuing it from %s to "
        "step %s (%s). The best checkpoint is chosen over the whole run and tested again.",
        wanted,
        output_dir,
        step,
        last,
        wanted,
        schedule,
    )
    finished = output_dir / FINISHED
    os.replace(finished, output_dir / f"finished-step{step}.json")
    return last


def set_aside_orphans(checkpoints_dir: Path, resume_ckpt: str | Path) -> list[Path]:
    """Moves the ``best-*.ckpt`` that the resumed checkpoint does not know (written by the killed
    run after its last ``last.ckpt``: a discarded timeline) to ``checkpoints/discarded/``, so
    picking the best checkpoint by score never picks them. Returns the moved files."""
    state = read_checkpoint(resume_ckpt)
    known = set()
    for key, cb_state in (state.get("callbacks") or {}).items():
        if key.startswith("BestCheckpoint") or key.startswith("ModelCheckpoint"):
            known |= {Path(p).name for p in (cb_state.get("best_k_models") or {})}
    moved = []
    for f in sorted(checkpoints_dir.glob("best*.ckpt")):
        if f.name not in known:
            target = checkpoints_dir / DISCARDED / f.name
            target.parent.mkdir(exist_ok=True)
            os.replace(f, target)
            moved.append(target)
    if moved:
        log.warning(
            "%d best checkpoint(s) written after %s (by the interrupted run) moved to %s",
            len(moved),
            Path(resume_ckpt).name,
            checkpoints_dir / DISCARDED,
        )
    return moved
