"""Loggers that survive a resume: the CSV log is continued, not deleted, and W&B keeps one run id.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its folder exists (a resumed run would lose
its log) and ``WandbLogger`` starts a new run id on every start (``wandb sync`` would then upload
two runs of one name). :class:`ResumableCSVLogger` and :func:`wandb_run_id` fix both.
:class:`WandbLogger` adds tags from the run's experiment / framework / ablation and keeps the best
validation Dice, not the last, in the W&B run summary.
"""

from __future__ import annotations

import csv
import logging
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, cast

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only

from scdl.utils.files import create_once

log = logging.getLogger(__name__)

METRICS = "metrics.csv"


def _read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _write_rows(path: Path, fields: list[str], rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _step(row: dict) -> int | None:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None


def continue_metrics_csv(log_dir: str | Path, resume_step: int | None) -> list[str]:
    """Prepares ``<log_dir>/metrics.csv`` for a new writer and returns its header keys.

    ``resume_step`` None (a fresh start in a folder that already has a log): the old file is kept
    as ``metrics.prev<N>.csv``. Otherwise the rows up to ``resume_step`` stay; rows logged after it
    (by a run killed after its last checkpoint, whose steps are now re-run) move to
    ``metrics.discarded.csv``, so the log stays continuous and nothing is deleted.
    """
    path = Path(log_dir) / METRICS
    if not path.is_file():
        return []
    if resume_step is None:
        n = 1
        while (backup := path.with_name(f"metrics.prev{n}.csv")).exists():
            n += 1
        os.replace(path, backup)
        log.info("previous CSV log of this folder kept as %s", backup)
        return []
    fields, rows = _read_rows(path)
    kept = [r for r in rows if (s := _step(r)) is None or s <= resume_step]
    dropped = [r for r in rows if (s := _step(r)) is not None and s > resume_step]
    if dropped:
        discarded = path.with_name("metrics.discarded.csv")
        old_fields, old = _read_rows(discarded) if discarded.is_file() else ([], [])
        all_fields = sorted(set(old_fields) | set(fields))
        _write_rows(discarded, all_fields, old + dropped)
        _write_rows(path, fields, kept)
        log.info(
            "resuming at step %d: %d CSV rows logged after it moved to %s",
            resume_step,
            len(dropped),
            discarded,
        )
    return fields


class _ContinuingWriter(ExperimentWriter):
    # Lightning's __init__ deletes an existing metrics.csv: set its fields here instead
    def __init__(self, log_dir: str, resume_step: int | None) -> None:
        self.metrics: list[dict[str, float]] = []
        self.hparams: dict = {}
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        self._fs = get_filesystem(log_dir)
        self._fs.makedirs(log_dir, exist_ok=True)
        # the header of the file being continued: new keys trigger Lightning's header rewrite
        self.metrics_keys = sorted(continue_metrics_csv(log_dir, resume_step))


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that continues ``metrics.csv`` on resume instead of deleting it.

    Args:
        resume_step: the global step of the checkpoint being resumed (rows after it move to
            ``metrics.discarded.csv``), or None for a fresh run (an old log is kept as
            ``metrics.prev<N>.csv``).
        **kwargs: see ``lightning.pytorch.loggers.CSVLogger``.
    """

    def __init__(self, *args, resume_step: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._experiment = _ContinuingWriter(self.log_dir, self.resume_step)
        return cast(ExperimentWriter, self._experiment)  # a _ContinuingWriter


def wandb_run_id(run_dir: str | Path) -> str:
    """The W&B run id of a run folder: read from ``<run_dir>/wandb_run_id`` or created there, so a
    resumed run logs to the same W&B run (with ``resume="allow"``)."""
    path = Path(run_dir) / "wandb_run_id"
    if path.is_file() and (run_id := path.read_text().strip()):
        return run_id
    # created once, atomically: ranks and requeued jobs starting together agree on one id
    return create_once(path, secrets.token_hex(4) + "\n").strip()


WANDB_TAG_MAX = 64  # W&B refuses longer tags
STEP_METRIC = "trainer/global_step"  # the x-axis Lightning's WandbLogger logs with every metric


def merge_tags(*groups: Iterable[Any] | None) -> list[str]:
    """Tags of several lists in order, without duplicates, empty or ``none`` entries, each cut to
    W&B's 64 characters."""
    out: list[str] = []
    for group in groups:
        for tag in group or ():
            text = str(tag).strip()[:WANDB_TAG_MAX] if tag is not None else ""
            if text and text.lower() not in ("none", "null") and text not in out:
                out.append(text)
    return out


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` with the conventions of this project (conf/logger/wandb.yaml).

    Same class name as Lightning's, so code that looks loggers up by name keeps finding it.

    Args:
        tags: the run's tags (``cfg.tags``, set by the experiment).
        extra_tags: more tags (experiment, framework, ablation); merged after ``tags`` by
            :func:`merge_tags`.
        summary_max: metric names or ``fnmatch`` patterns whose W&B summary is their maximum over
            the run instead of the last value (``define_metric(summary="max")``). Patterns are
            matched here, and each key is defined by its own name the first time it is logged:
            W&B's own glob definitions overlap with Lightning's ``*`` and lose to it at random.
        name: the run's display name; empty lets W&B choose one.
        **kwargs: see ``lightning.pytorch.loggers.WandbLogger`` (and ``wandb.init``).
    """

    def __init__(
        self,
        *args: Any,
        tags: Sequence[str] | None = None,
        extra_tags: Sequence[str] | None = None,
        summary_max: Sequence[str] = ("val/dice", "val/dice_*"),
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs["name"] = name or None
        super().__init__(*args, tags=merge_tags(tags, extra_tags), **kwargs)
        if not self._wandb_init.get("anonymous"):  # W&B warns that the setting has no effect
            self._wandb_init.pop("anonymous", None)
        self.summary_max = tuple(summary_max)
        self._defined: set[str] = set()
        self._steps: dict[str, int] = {}

    def define_best_metrics(self, keys: Iterable[str]) -> None:
        """``define_metric(key, summary="max")`` (on Lightning's step axis) for every key of
        ``keys`` that matches :attr:`summary_max` and is not defined yet."""
        new = [
            k
            for k in keys
            if k not in self._defined and any(fnmatchcase(k, p) for p in self.summary_max)
        ]
        if not new:
            return
        run = self.experiment
        if not callable(getattr(run, "define_metric", None)):
            return
        for key in new:
            run.define_metric(key, step_metric=STEP_METRIC, step_sync=True, summary="max")
            self._defined.add(key)

    def logged_step(self, key: str) -> int | None:
        """The step (``trainer/global_step`` in W&B) ``key`` was last logged at by this logger."""
        return self._steps.get(key)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        prefix = f"{self._prefix}{self.LOGGER_JOIN_CHAR}" if self._prefix else ""
        self.define_best_metrics(prefix + k for k in metrics)
        super().log_metrics(metrics, step)
        if step is not None:
            self._steps.update(dict.fromkeys(metrics, int(step)))
