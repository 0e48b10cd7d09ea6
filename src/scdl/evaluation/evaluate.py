"""Evaluate a trained checkpoint: ``python src/eval.py ckpt_path=<run>/checkpoints/best-....ckpt
[protocol=paper|standard] [split=test|val|all] [save_predictions=true] [data=...]``.

Steps: rebuild the module from the run config (:mod:`scdl.inference.checkpoint`), run
sliding-window inference on every case of the split (preprocessed cache), score each case with
:mod:`scdl.evaluation.protocols` (Dice, ASD, HD95, NSD per foreground class) in the chosen protocol,
then aggregate (mean ± std over cases), print and save ``metrics.{json,csv}`` (+ per-case CSV) in the
one results schema of :mod:`scdl.metrics.results` (``src/eval.py`` then logs them to W&B:
:mod:`scdl.reporting.wandb_runs`). Protocols
(``docs/method.md`` §5):

* ``paper``: prediction and label resized to 160 x 160 x 80 (nearest), distances in voxels of that
  grid, 128 penalty for a class missing on one side, both-empty = Dice 1 / ASD 0, all-empty
  prediction = all 0 — the numbers of the published tables.
* ``standard``: the cache's native spacing, distances in mm (ASD = symmetric ASSD, HD95 and NSD as
  MONAI's metrics compute them), classes absent from both maps excluded (NaN); Dice equals the training ``test/dice`` when every class is present.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
from omegaconf import DictConfig, OmegaConf

from scdl.evaluation.protocols import case_metric_kwargs, check_protocol, compute_case_metrics
from scdl.inference.checkpoint import load_module_from_checkpoint, with_class_mismatch_flag
from scdl.inference.native_grid import labels_to_original_grid, save_label_nifti
from scdl.inference.runtime import select_device
from scdl.inference.segment import segment_volume
from scdl.metrics.results import aggregate_metrics, format_metrics_table, save_metrics
from scdl.runs import SPLIT_FILE, resolve_checkpoint
from scdl.utils.errors import InputError
from scdl.utils.progress import progress_iter

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "labeled", "all")


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------


def select_cases(
    run_cfg: DictConfig,
    run_dir: Path,
    split: str,
    split_file: str | None = None,
    use_run_split: bool = True,
) -> tuple[list[str], str]:
    """Case ids to evaluate and where they came from.

    ``split``: ``test`` / ``val`` / ``labeled`` (a part of the split) or ``all`` (every labeled case
    of the cache). The split is, in order: ``split_file`` (JSON), the run's own ``split.json`` (when
    ``use_run_split``, i.e. the data was not overridden), else the data config's split
    (``data.module.split_file`` or the seeded draw, as training would make it).
    """
    from hydra.utils import instantiate

    from scdl.data.cache import read_index
    from scdl.data.splits import load_split_file

    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "all":
        index = read_index(run_cfg.data.cache_dir)
        return [c["case_id"] for c in index["cases"] if c.get("labeled", True)], "cache index"
    if split_file:
        parts, source = load_split_file(split_file), str(split_file)
    elif use_run_split and (run_dir / SPLIT_FILE).is_file():
        parts, source = load_split_file(run_dir / SPLIT_FILE), str(run_dir / SPLIT_FILE)
    else:
        datamodule = instantiate(run_cfg.data.module, _convert_="all")
        parts, source = datamodule.prepare_split(), "data config"
    ids = list(getattr(parts, split))
    if not ids:
        raise InputError(f"the {split} split of {source} is empty")
    return ids, source


def default_output_dir(run_dir: Path, ckpt: Path, split: str, protocol: str) -> Path:
    """``<run>/eval/<split>_<protocol>`` for the best checkpoint, ``<run>/eval/<ckpt stem>/...``
    for any other (``last.ckpt``, a resumed one) so that evaluations never overwrite each other."""
    base = run_dir / "eval"
    if not ckpt.name.startswith("best"):
        base = base / ckpt.stem
    return base / f"{split}_{protocol}"


# ----------------------------------------------------------------------------------------------
# Entry
# ----------------------------------------------------------------------------------------------


def _data_override(cfg: DictConfig) -> dict | None:
    data = cfg.get("data")
    if not data:
        return None
    # resolved here: its interpolations (${paths.data_dir}, ...) refer to the eval config
    return {"data": OmegaConf.to_container(data, resolve=True)}


def evaluate(cfg: DictConfig) -> dict:
    """Evaluates ``cfg.ckpt_path`` (``conf/eval.yaml``) and returns the summary.

    The summary is :func:`aggregate_metrics`'s dict (``per_class``, ``overall``, ``per_case``,
    ...) plus ``ckpt``, ``run_dir``, ``split``, ``split_source``, ``protocol``, ``inference``,
    ``metric_settings``, ``seconds`` and ``files`` (written paths by kind).
    """
    from scdl.data.cache import load_cached_case
    from scdl.data.catalog import ensure_prepared

    protocol = check_protocol(str(cfg.get("protocol", "standard")))
    split = str(cfg.get("split", "test"))
    ckpt = resolve_checkpoint(cfg.ckpt_path)
    overrides = _data_override(cfg)
    module, run_cfg = load_module_from_checkpoint(
        ckpt, with_class_mismatch_flag(overrides, cfg), inference=cfg.get("inference")
    )
    run_dir = Path(run_cfg.run_dir)
    device = select_device(cfg.get("device", "auto"))
    module.to(device)
    precision = cfg.get("precision") or OmegaConf.select(run_cfg, "trainer.precision")

    cache = ensure_prepared(run_cfg.data)
    case_ids, split_source = select_cases(
        run_cfg, run_dir, split, cfg.get("split_file"), use_run_split=overrides is None
    )
    if cfg.get("max_cases"):
        case_ids = case_ids[: int(cfg.max_cases)]
    out_dir = (
        Path(cfg.output_dir)
        if cfg.get("output_dir")
        else default_output_dir(run_dir, ckpt, split, protocol)
    )
    num_classes = int(run_cfg.data.num_classes)
    class_names = list(run_cfg.data.class_names)
    log.info(
        "evaluating %s on %d %s case(s) (%s), protocol %s -> %s",
        ckpt.name,
        len(case_ids),
        split,
        split_source,
        protocol,
        out_dir,
    )

    t0 = time.perf_counter()
    results = []
    unknown_spacing = 0
    for case_id in progress_iter(case_ids, f"eval {split} ({protocol})", cfg.get("progress", True)):
        case = load_cached_case(cache, case_id, in_memory=True)
        if case.label is None:
            raise InputError(f"case {case_id} has no label: it cannot be evaluated")
        pred = segment_volume(module, case.image, device, precision)
        unknown_spacing += not case.meta.get("spacing_known", True)
        kwargs = case_metric_kwargs(protocol, cfg.get("metrics"), case.meta["spacing"])
        results.append(
            compute_case_metrics(pred, np.asarray(case.label), num_classes, protocol, **kwargs)
        )
        if cfg.get("save_predictions", False):
            native = labels_to_original_grid(pred, case.meta)
            save_label_nifti(
                native,
                out_dir / "predictions" / f"{case_id}.nii.gz",
                np.asarray(case.meta["original_affine"]),
                _reference_image(case.meta),
            )

    if protocol == "standard" and unknown_spacing:
        log.warning(
            "%d case(s) have no physical spacing (array layouts): standard-protocol distances "
            "are in cache voxels, not mm",
            unknown_spacing,
        )
    summary = aggregate_metrics(results, class_names[1:], case_ids, protocol)
    settings = case_metric_kwargs(protocol, cfg.get("metrics"), [1.0, 1.0, 1.0])
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
    if protocol == "standard":
        settings["spacing"] = "cache spacing of each case (mm)"
    summary.update(
        {
            "ckpt": str(ckpt),
            "run_dir": str(run_dir),
            "experiment_name": str(run_cfg.get("experiment_name", "")),
            "split": split,
            "split_source": split_source,
            "inference": _inference_dict(module),
            "metric_settings": settings,
            "precision": None if precision is None else str(precision),
            "seconds": round(time.perf_counter() - t0, 2),
        }
    )
    paths = save_metrics(summary, out_dir)
    summary["files"] = {k: str(v) for k, v in paths.items()}
    title = f"{protocol} metrics, {split} ({len(case_ids)} cases) — {ckpt.name}"
    print(format_metrics_table(summary, use_rich=True, title=title))
    log.info("metrics written to %s", out_dir)
    return summary


def _inference_dict(module: Any) -> dict:
    import dataclasses

    inf = getattr(module, "inference_cfg", None)
    if inf is None or not dataclasses.is_dataclass(inf):
        return {}
    d = dataclasses.asdict(cast(Any, inf))  # an instance: a SlidingWindowConfig
    d["roi_size"] = [int(r) for r in d["roi_size"]]
    return d


def _reference_image(meta: Mapping):
    """The source image (header template for the prediction), when it still exists."""
    import nibabel as nib

    src = meta.get("source_image")
    if src and str(src).endswith((".nii", ".nii.gz")) and Path(src).is_file():
        ref = cast(nib.Nifti1Image, nib.load(src))  # a .nii / .nii.gz file
        if tuple(ref.shape[:3]) == tuple(meta["original_shape"]):
            return ref
    return None
