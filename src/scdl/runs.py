"""The run folder: the file format a training run writes, and the one module that reads it.

Training, resume, evaluation and reporting all go through here, so the layout is written once::

    <run>/.hydra/config.yaml                  composed config (Hydra writes it before the job starts)
    <run>/split.json                          the split the run used
    <run>/checkpoints/best-*.ckpt             model selection (best monitored score, recorded inside)
    <run>/checkpoints/last.ckpt               the latest state (what a resume continues)
    <run>/checkpoints/discarded/              checkpoints of a timeline a resume abandoned
    <run>/csv/metrics.csv                     the CSV log (one row per logged step)
    <run>/test_metrics.{json,csv}             the training test (Dice on the cache grid)
    <run>/eval/<split>_<protocol>/metrics.*   src/eval.py results (``test_paper``: the papers' protocol)
    <run>/figures/proxies_step<N>.png         SCDL proxies and token embeddings (ProxyPlotCallback)
    <run>/figures/overlays_step<N>.npz        validation overlays (with W&B): image, truth, prediction
    <run>/finished.json                       trained, tested (and post-evaluated): a sweep skips it
    <run>/provenance.json                     code version, machine, libraries

Light on purpose: reporting reads run folders without torch (checkpoints import it lazily).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from scdl.utils.errors import InputFileError

log = logging.getLogger(__name__)

RUN_CONFIG = Path(".hydra") / "config.yaml"
SPLIT_FILE = "split.json"
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
DISCARDED = "discarded"
METRICS_CSV = Path("csv") / "metrics.csv"
TRAIN_TEST_STEM = "test_metrics"  # <run>/test_metrics.{json,csv}, test_metrics_per_case.csv
LEGACY_TRAIN_TEST_JSON = "test_dice.json"
PAPER_RESULTS = Path("eval") / "test_paper" / "metrics.json"
FINISHED = "finished.json"
FIGURES = "figures"


# ----------------------------------------------------------------------------------------------
# The saved config
# ----------------------------------------------------------------------------------------------


def load_config(run: str | Path) -> DictConfig | None:
    """A run folder's saved config (``.hydra/config.yaml``, ``paths.output_dir`` set to the
    folder: the saved value is Hydra-only), or None when the folder has none."""
    from scdl.utils.config import register_resolvers

    run = Path(run)
    cfg_path = run / RUN_CONFIG
    if not cfg_path.is_file():
        return None
    register_resolvers()
    cfg = cast(DictConfig, OmegaConf.load(cfg_path))  # a saved run config is a mapping
    if "paths" in cfg:
        with open_dict(cfg):  # ${hydra:runtime.output_dir} does not resolve outside Hydra
            cfg.paths.output_dir = str(run)
    return cfg


def resolved_container(node: Any) -> Any:
    """A saved run config (node) as plain containers, resolved: the values the run used. An
    interpolation that no longer resolves outside Hydra (``${hydra:...}``) leaves the whole node
    unresolved, as text (still the same text for the same config)."""
    try:
        return OmegaConf.to_container(node, resolve=True)
    except Exception:  # noqa: BLE001 - any resolver error: fall back to the text
        return OmegaConf.to_container(node, resolve=False)


def read_split(run: str | Path) -> dict | None:
    """The run's ``split.json`` as a dict, or None when the folder has none."""
    path = Path(run) / SPLIT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


# ----------------------------------------------------------------------------------------------
# Finding runs
# ----------------------------------------------------------------------------------------------


def runs_holding(roots: Iterable[str | Path], relative: str | Path) -> list[tuple[Path, Path]]:
    """``(run, file)`` for every file at ``<run>/<relative>`` below ``roots``, sorted by path."""
    relative = Path(relative)
    depth = len(relative.parts)
    found = {p for root in roots for p in Path(root).rglob(str(relative))}
    return [(p.parents[depth - 1], p) for p in sorted(found)]


def train_test_results(roots: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """``(run, results file)`` of the training test of every run below ``roots``; the current
    schema's file wins over the legacy ``test_dice.json`` of the same run."""
    found: dict[Path, Path] = {}
    for name in (LEGACY_TRAIN_TEST_JSON, f"{TRAIN_TEST_STEM}.json"):  # the new one wins
        for run, path in runs_holding(roots, name):
            found[run] = path
    return [(run, found[run]) for run in sorted(found)]


def find_training_runs(root: str | Path) -> list[Path]:
    """Training runs anywhere below ``root`` (single runs, multirun jobs, ``debug`` runs of any
    task): folders with a saved training config and a CSV log or test results. Sorted by path."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = []
    for cfg_path in sorted(root.rglob(str(RUN_CONFIG))):
        run = cfg_path.parent.parent
        if not ((run / METRICS_CSV).is_file() or (run / f"{TRAIN_TEST_STEM}.json").is_file()):
            continue
        try:
            cfg = OmegaConf.load(cfg_path)
        except Exception as err:  # noqa: BLE001 - a broken config is reported, not fatal
            log.warning("%s: unreadable (%s), skipped", cfg_path, err)
            continue
        if "framework" in cfg and "experiment_name" in cfg:
            runs.append(run)
    return runs


# ----------------------------------------------------------------------------------------------
# The CSV log
# ----------------------------------------------------------------------------------------------


def read_metrics_csv(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``metrics.csv`` -> ``{key: (steps, values)}`` over the rows where the key has a value."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    series: dict[str, tuple[list, list]] = {}
    for row in rows:
        try:
            step = int(float(row.get("step") or ""))
        except ValueError:
            continue
        for key, text in row.items():
            if key in ("step", "epoch") or text in (None, ""):
                continue
            try:
                value = float(text)
            except ValueError:
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(step)
            values.append(value)
    return {k: (np.asarray(s), np.asarray(v)) for k, (s, v) in series.items()}


def metric_series(run: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The run's CSV log as :func:`read_metrics_csv` series (empty without a log)."""
    path = Path(run) / METRICS_CSV
    return read_metrics_csv(path) if path.is_file() else {}


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


class CheckpointReadError(ValueError, CompactHydraException):
    """A checkpoint file that cannot be read; the message says why (empty, truncated, not a
    checkpoint, pickled objects) and what to do. Hydra prints only the message."""


def read_checkpoint(path: str | Path, mmap: bool = True) -> dict:
    """The checkpoint dict at ``path``, on CPU, loaded weights-only (the checkpoints this project
    writes hold plain values only, and a checkpoint from elsewhere cannot run code when loaded);
    memory-mapped by default (cheap for metadata). Raises :class:`CheckpointReadError` naming the
    file and the cause."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointReadError(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    if size == 0:
        cause = "is empty (0 bytes)"
    elif not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        cause = (
            "is in PyTorch's legacy (non-zip) format or truncated"
            if head[:1] == b"\x80"
            else f"is truncated or not a PyTorch checkpoint ({size} bytes, no zip directory)"
        )
    else:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as err:
            raise CheckpointReadError(
                f"{path} holds pickled Python objects, which are not loaded (weights-only). It "
                "was written by an older scdl version or another tool: re-save its state_dict "
                "with plain values, e.g. torch.save({'state_dict': ckpt['state_dict'], "
                "'hyper_parameters': {...}}, path), after loading it yourself if you trust it."
            ) from err
        except (RuntimeError, EOFError, OSError, ValueError) as err:
            first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
            cause = f"is corrupt ({type(err).__name__}: {first})"
    raise CheckpointReadError(
        f"{path} {cause}: it cannot be loaded. A checkpoint is cut short by an interrupted copy or "
        "download (this project writes its own atomically): copy it again, or use another "
        "checkpoint of the run"
    )


def checkpoint_step(path: str | Path) -> int:
    """The optimiser step a checkpoint holds."""
    return int(read_checkpoint(path).get("global_step", 0))


def checkpoint_score(path: Path) -> tuple[float, str] | None:
    """The monitored score a ``best-*.ckpt`` was saved with, and the mode (``max``/``min``), as the
    checkpoint callback recorded it inside the file (memory-mapped read: cheap)."""
    try:
        states = read_checkpoint(path).get("callbacks") or {}
    except Exception as err:  # noqa: BLE001 - unreadable: skipped with a warning
        log.warning("cannot read %s (%s): skipped", path, err)
        return None
    for key, state in states.items():
        if not isinstance(state, dict) or not state.get("monitor"):
            continue
        # the callback records each kept checkpoint's score by path; this file's own is in there
        scores = {Path(str(k)).name: v for k, v in (state.get("best_k_models") or {}).items()}
        if path.name not in scores:
            continue
        value = float(scores[path.name])
        mode = m.group(1) if (m := re.search(r"'mode': '(\w+)'", key)) else "max"
        return (value, mode) if math.isfinite(value) else None
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder / its ``checkpoints`` folder -> the best checkpoint there.

    Among several ``best-*.ckpt`` the one with the best score recorded inside it wins (not the
    newest file); checkpoints a resumed run set aside in ``checkpoints/discarded/`` are ignored.
    ``last.ckpt`` only when no best exists.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return p.resolve()
    if p.is_dir():
        folder = p / CHECKPOINTS if (p / CHECKPOINTS).is_dir() else p
        candidates = [(f, checkpoint_score(f)) for f in sorted(folder.glob("best*.ckpt"))]
        scored = [(f, s) for f, s in candidates if s is not None]
        if scored:
            sign = -1.0 if scored[0][1][1] == "min" else 1.0
            best = max(scored, key=lambda fs: sign * fs[1][0])[0]
            if len(scored) > 1:
                log.info("best of %d checkpoints by recorded score: %s", len(scored), best.name)
            return best.resolve()
        if (folder / LAST).is_file():
            log.warning("no best-*.ckpt with a recorded score in %s: using last.ckpt", folder)
            return (folder / LAST).resolve()
        raise InputFileError(f"no checkpoint (*.ckpt) in {folder}")
    raise InputFileError(f"checkpoint not found: {p}")


def find_run_dir(ckpt_path: str | Path) -> Path:
    """The run folder of a checkpoint: the nearest parent holding ``.hydra/config.yaml``."""
    ckpt = Path(ckpt_path).resolve()
    for parent in list(ckpt.parents)[:4]:
        if (parent / RUN_CONFIG).is_file():
            return parent
    raise InputFileError(
        f"no {RUN_CONFIG} above {ckpt}: the checkpoint must sit inside its training run folder "
        "(<run>/checkpoints/*.ckpt), whose .hydra/config.yaml describes the model"
    )


# ----------------------------------------------------------------------------------------------
# Finished runs
# ----------------------------------------------------------------------------------------------


def mark_finished(output_dir: Path, metrics: dict) -> Path:
    """Writes ``<run>/finished.json`` (the final metrics, plain floats/strings): a resumed sweep
    skips this run from now on."""
    record = {
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
    }
    path = Path(output_dir) / FINISHED
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
    return path


def finished_record(output_dir: str | Path) -> dict | None:
    """The run's ``finished.json`` record, or None when it has not finished."""
    path = Path(output_dir) / FINISHED
    return json.loads(path.read_text()) if path.is_file() else None


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def save_overlays(
    folder: Path, step: int, planes: Sequence[tuple], class_names: Sequence[str]
) -> Path:
    """Writes ``<folder>/overlays_step<N>.npz``: for each of the K overlays ``image_<k>``,
    ``truth_<k>`` and ``prediction_<k>`` (H, W) uint8 in display orientation (cases may differ in
    size), and ``captions`` (K,), ``class_names``; ``planes`` holds K tuples ``(image, truth,
    prediction, caption)``. Read back by :func:`load_overlays`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"overlays_step{step:06d}.npz"
    arrays: dict[str, Any] = {
        "captions": np.array([p[3] for p in planes]),
        "class_names": np.array(class_names),
    }
    for k, (image, truth, pred, _) in enumerate(planes):
        arrays |= {f"image_{k}": image, f"truth_{k}": truth, f"prediction_{k}": pred}
    np.savez_compressed(path, **arrays)
    return path


def load_overlays(path: Path) -> tuple[list[tuple], list[str]]:
    """The ``(image, truth, prediction, caption)`` overlays and the class names of a file written
    by :func:`save_overlays`."""
    with np.load(path) as f:
        captions = [str(c) for c in f["captions"]]
        planes = [
            (f[f"image_{k}"], f[f"truth_{k}"], f[f"prediction_{k}"], c)
            for k, c in enumerate(captions)
        ]
        return planes, [str(n) for n in f["class_names"]]


def latest_figure(run: str | Path, pattern: str) -> tuple[Path, int] | None:
    """The newest ``<run>/figures/<pattern>`` file by the step in its name (``..._step<N>.*``),
    and that step; None when there is none."""
    found = []
    for path in (Path(run) / FIGURES).glob(pattern):
        m = re.search(r"_step(\d+)\.", path.name)
        if m:
            found.append((int(m.group(1)), path))
    if not found:
        return None
    step, path = max(found)
    return path, step
