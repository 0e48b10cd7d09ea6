"""Rebuild a trained module from a Lightning checkpoint and the run's saved Hydra config.

Shared by ``src/eval.py`` (:mod:`scdl.evaluation.evaluate`) and ``src/predict.py``
(:mod:`scdl.inference.predict`). The loader is framework-agnostic: it composes the module exactly as
training did (:func:`scdl.build.build_module` on the run's config), so any framework that
training can build (mean teacher, CPS, SCDL plug-ins, ...) loads here, with ``strict=True``.

A run folder (``paths.output_dir`` of ``src/train.py``) looks like::

    <run>/.hydra/config.yaml          composed config (Hydra writes it before the job starts)
    <run>/checkpoints/best-*.ckpt     model selection (highest val/dice)
    <run>/checkpoints/last.ckpt
    <run>/split.json                  the split the run used
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from scdl.data.labels import clean_class_name
from scdl.runs import (
    CHECKPOINTS,
    RUN_CONFIG,
    SPLIT_FILE,
    find_run_dir,
    read_checkpoint,
    resolve_checkpoint,
)
from scdl.utils.config import register_resolvers
from scdl.utils.errors import ConfigError, InputError, InputFileError

if TYPE_CHECKING:  # lightning is slow to import; only the loader needs it, via build_module
    from scdl.frameworks.base import SemiSupervisedModule
    from scdl.inference.sliding_window import SlidingWindowConfig

log = logging.getLogger(__name__)


def _embedded_run_config(ckpt_path: str | Path) -> tuple[DictConfig, Path]:
    from scdl.data.splits import Split, save_split_file

    ckpt = Path(ckpt_path).resolve()
    embedded = read_checkpoint(ckpt).get("run_config")
    if not embedded:
        raise InputFileError(
            f"{ckpt} carries no run config (written before checkpoints were self-contained) and "
            f"no {RUN_CONFIG} is above it: keep it inside its run folder (<run>/checkpoints/)"
        )
    embedded = dict(embedded)
    split = embedded.pop("split", None)
    run_dir = ckpt.parent.parent if ckpt.parent.name == CHECKPOINTS else ckpt.parent
    if split and not (run_dir / SPLIT_FILE).is_file():
        save_split_file(Split(**split), run_dir / SPLIT_FILE)
    log.info("config from the checkpoint itself (no %s above %s)", RUN_CONFIG, ckpt)
    return OmegaConf.create(embedded), run_dir


def _apply_overrides(cfg: DictConfig, overrides: Mapping | DictConfig | Sequence[str] | None):
    if not overrides:
        return cfg
    if isinstance(overrides, Sequence | ListConfig) and not isinstance(overrides, str):
        extra = OmegaConf.from_dotlist([str(o) for o in overrides])
    else:
        extra = OmegaConf.create(
            cast(
                dict,
                OmegaConf.to_container(overrides)
                if isinstance(overrides, DictConfig)
                else overrides,
            )
        )
    return OmegaConf.merge(cfg, extra)


def _pin_inference(cfg: DictConfig) -> None:
    """Resolves ``framework.inference`` in place. Its window follows the training patch
    (``${data.module.patch_size}``): pinning it before overrides keeps the trained window when the
    data section is replaced (another data set may train with another patch)."""
    node = OmegaConf.select(cfg, "framework.inference")
    if not isinstance(node, DictConfig):
        return
    try:
        resolved = OmegaConf.to_container(node, resolve=True)
    except Exception as err:  # noqa: BLE001 - leave it unresolved; overrides may fix it
        log.debug("framework.inference not resolvable yet: %s", err)
        return
    with open_dict(cfg):
        cfg.framework.inference = resolved


def load_run_config(
    ckpt_path: str | Path, overrides: Mapping | DictConfig | Sequence[str] | None = None
) -> tuple[DictConfig, Path]:
    """The training config of the run that wrote ``ckpt_path``, with ``overrides`` merged in.

    The config comes from the run folder's ``.hydra/config.yaml`` when the checkpoint sits in its
    run folder, else from the resolved config embedded in the checkpoint (``run_config``, written
    by training): a checkpoint copied anywhere is enough. For a lone checkpoint the "run folder" is
    the folder holding it (its parent when that is named ``checkpoints``); the split embedded in
    the checkpoint is written there as ``split.json`` if missing.

    Args:
        ckpt_path: a ``.ckpt`` file.
        overrides: a (nested) mapping merged over the run config, e.g. ``{"data": {...}}``, or
            dot-list strings (``["data.cache_dir=/x"]``).

    Returns ``(cfg, run_dir)``. ``paths.output_dir`` points at the run folder (the saved value is
    the Hydra-only ``${hydra:runtime.output_dir}``) and ``run_name`` is the folder name.
    """
    register_resolvers()
    try:
        run_dir = find_run_dir(ckpt_path)
        cfg = cast(DictConfig, OmegaConf.load(run_dir / RUN_CONFIG))  # a run config is a mapping
    except FileNotFoundError:
        cfg, run_dir = _embedded_run_config(ckpt_path)
    _pin_inference(cfg)
    cfg = _apply_overrides(cfg, overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        # the saved run_name is often ${now:...}, which would resolve to the current time
        if (
            "run_name" not in cfg
            or OmegaConf.is_interpolation(cfg, "run_name")
            or cfg.run_name is None
        ):
            cfg.run_name = run_dir.name
    return cfg, run_dir


def _index_classes(data_cfg: DictConfig) -> list[str] | None:
    from scdl.data.cache import read_index

    try:
        return list(read_index(data_cfg.cache_dir)["class_names"])
    except Exception:  # noqa: BLE001 - no cache, no class names, or an unresolvable cache path
        return None


def class_map_table(ckpt_names: Sequence[str], data_names: Sequence[str], data_label: str) -> str:
    """Side-by-side class lists, one line per index, ``<-`` where the two differ."""
    rows = [("idx", "checkpoint", data_label, "")]
    for i in range(max(len(ckpt_names), len(data_names))):
        a = str(ckpt_names[i]) if i < len(ckpt_names) else "-"
        b = str(data_names[i]) if i < len(data_names) else "-"
        same = clean_class_name(a) == clean_class_name(b)
        rows.append((str(i), a, b, "" if same else "<- differs"))
    w0, w1, w2 = (max(len(r[k]) for r in rows) for k in range(3))
    return "\n".join(f"  {r[0]:>{w0}}  {r[1]:<{w1}}  {r[2]:<{w2}}  {r[3]}".rstrip() for r in rows)


def _class_error(message: str) -> Exception:

    return ConfigError(message)


def with_class_mismatch_flag(overrides: Mapping | None, entry_cfg: Mapping) -> Mapping | None:
    """``overrides`` for :func:`load_module_from_checkpoint` carrying ``allow_class_mismatch=true``
    of an ``eval.py`` / ``predict.py`` config into the run config read by :func:`resolve_classes`
    (unchanged when the flag is off)."""
    if not entry_cfg.get("allow_class_mismatch", False):
        return overrides
    return {**(dict(overrides) if overrides else {}), "allow_class_mismatch": True}


def resolve_classes(
    cfg: DictConfig, hparams: Mapping[str, Any] | None, allow_mismatch: bool | None = None
) -> tuple[int, list[str]]:
    """Number of classes and class names for the module.

    Sources, in order: the checkpoint hyper-parameters (``num_classes`` / ``class_names``, what the
    weights were trained for), the cache index of ``cfg.data`` (what the data set has), the config.
    When both checkpoint and cache are known they must agree: the same number of classes (evaluating
    a 14-class model on a 16-class data set is an error, not a silent mismatch), and the same names
    in the same order, compared as cleaned names (:func:`scdl.data.labels.clean_class_name`: case,
    spaces and punctuation ignored; a data set whose spleen and liver ids are swapped would be
    scored against the wrong organs). ``allow_mismatch`` (default:
    ``cfg.allow_class_mismatch``, set by ``allow_class_mismatch=true`` of ``eval.py`` /
    ``predict.py``) accepts different names / order with a warning; the checkpoint's names are used.
    """
    hp = dict(hparams or {})
    hp_n = hp.get("num_classes")
    hp_names = list(hp["class_names"]) if hp.get("class_names") else None
    index_names = _index_classes(cfg.data) if "data" in cfg else None
    cfg_n = cfg.data.get("num_classes") if "data" in cfg else None
    cfg_names = cfg.data.get("class_names") if "data" in cfg else None
    if allow_mismatch is None:
        allow_mismatch = bool(cfg.get("allow_class_mismatch", False))

    n = hp_n or (len(hp_names) if hp_names else None)
    if n is None and index_names:
        n = len(index_names)
    if n is None and cfg_n is not None:
        n = int(cfg_n)
    if n is None:
        raise InputError(
            "cannot tell the number of classes: the checkpoint has no num_classes hyper-parameter "
            f"and the cache {cfg.data.get('cache_dir') if 'data' in cfg else '?'} has no index; "
            "set data.num_classes"
        )
    n = int(n)
    data_label, data_source = "data set", "data set"
    if index_names is not None:
        data_source = f"data set at {cfg.data.cache_dir}"
    if index_names is not None and len(index_names) != n:
        table = f"\n{class_map_table(hp_names, index_names, data_label)}" if hp_names else ""
        raise _class_error(
            f"the checkpoint predicts {n} classes but the data set at {cfg.data.cache_dir} has "
            f"{len(index_names)} ({index_names}){table}"
        )
    data_names = index_names
    if data_names is None and cfg_names:  # no cache index: the data config's names, if any
        data_names = [str(x) for x in cfg_names]
        data_label = data_source = "data.class_names"
    if hp_names and data_names and len(hp_names) == len(data_names):
        differ = [
            i
            for i, (a, b) in enumerate(zip(hp_names, data_names, strict=True))
            if clean_class_name(a) != clean_class_name(b)
        ]
        if differ:
            table = class_map_table(hp_names, data_names, data_label)
            if not allow_mismatch:
                raise _class_error(
                    f"the class map of the checkpoint and of the {data_source} differ at index "
                    f"{', '.join(map(str, differ))} (names or order): the scores would compare "
                    f"the wrong organs.\n{table}\nEvaluate on the data the run was trained with, "
                    "or pass allow_class_mismatch=true to go on with the checkpoint's names."
                )
            log.warning(
                "class map of the checkpoint and the %s differ (allow_class_mismatch=true: "
                "using the checkpoint's names):\n%s",
                data_source,
                table,
            )
    names = hp_names or index_names or (list(cfg_names) if cfg_names else None)
    if names is None or len(names) != n:
        names = [f"class{i}" for i in range(n)]
    return n, [str(x) for x in names]


def apply_inference_overrides(module: SemiSupervisedModule, inference: Mapping | None) -> None:
    """Sets the non-null entries of ``inference`` (``roi_size``, ``overlap``, ``mode``,
    ``sw_batch_size``, ``average``) on ``module.inference_cfg`` (a :class:`SlidingWindowConfig`)."""
    if not inference:
        return
    values = (
        cast(dict, OmegaConf.to_container(inference, resolve=True))
        if isinstance(inference, DictConfig)
        else dict(inference)
    )
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return
    current = getattr(module, "inference_cfg", None)
    if current is None or not dataclasses.is_dataclass(current):
        raise TypeError(f"{type(module).__name__} has no inference_cfg to override")
    known = {f.name for f in dataclasses.fields(current)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown inference settings {unknown}; known: {sorted(known)}")
    if "overlap" in values:
        values["overlap"] = float(values["overlap"])
    if "roi_size" in values:
        values["roi_size"] = tuple(int(r) for r in values["roi_size"])
    module.inference_cfg = dataclasses.replace(cast("SlidingWindowConfig", current), **values)


def load_module_from_checkpoint(
    ckpt_path: str | Path,
    overrides: Mapping | DictConfig | Sequence[str] | None = None,
    inference: Mapping | DictConfig | None = None,
) -> tuple[SemiSupervisedModule, DictConfig]:
    """Rebuilds the run's LightningModule and loads the checkpoint weights (``strict=True``).

    Args:
        ckpt_path: a checkpoint file or a run folder (see :func:`resolve_checkpoint`).
        overrides: merged over the run config before the module is built (see
            :func:`load_run_config`); typically a ``data`` section to evaluate on other data.
        inference: sliding-window settings overriding the trained ones (null entries ignored).

    Returns ``(module in eval mode on CPU, cfg)``; ``cfg.data.num_classes`` / ``class_names`` are
    filled and ``cfg.ckpt_path`` / ``cfg.run_dir`` record where the weights came from.
    """
    from scdl.build import build_module

    ckpt_path = resolve_checkpoint(ckpt_path)
    cfg, run_dir = load_run_config(ckpt_path, overrides)
    ckpt = read_checkpoint(ckpt_path)
    if "state_dict" not in ckpt:
        raise InputError(f"{ckpt_path} is not a Lightning checkpoint (no 'state_dict')")
    num_classes, class_names = resolve_classes(cfg, ckpt.get("hyper_parameters"))
    with open_dict(cfg):
        cfg.data.num_classes = num_classes
        cfg.data.class_names = class_names
        cfg.ckpt_path = str(ckpt_path)
        cfg.run_dir = str(run_dir)
    module = build_module(cfg)
    module.load_state_dict(ckpt["state_dict"], strict=True)
    apply_inference_overrides(module, inference)
    module.eval()
    log.info(
        "loaded %s (%s, %d classes, step %s) from %s",
        type(module).__name__,
        cfg.get("experiment_name", "?"),
        num_classes,
        ckpt.get("global_step", "?"),
        ckpt_path,
    )
    return module, cfg
