"""From a ``data`` config to a ready cache: read the raw layout, generate the phantom if asked,
resolve the protocol's data-dependent values, preprocess once. Used by ``src/prepare_data.py`` and
by ``train`` itself (``data.auto_prepare``).

``data.layout`` picks the reader (:data:`READERS`, or the dotted path of any function
``(raw_dir, **options) -> RawDataset``, e.g. ``my_project.layouts.read_my_data``); ``data.reader``
holds its keyword options (e.g. ``{include_test: true}``). A protocol may leave values to the data set: ``spacing: median`` (nnU-Net
target spacing from the NIfTI headers), ``normalisation: auto`` (``ct`` for a CT channel, else
``zscore``) and ``normalisation: ct`` with ``intensity_stats: null`` (foreground percentiles, mean and
std of the labeled cases). They are resolved once, saved in ``<cache>/plan.json`` (so an interrupted
run does not recompute them) and in ``index.json``, whose ``config_hash`` is the hash of the
unresolved config: a later run with the same config trusts the cache without reading raw data.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import cast

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from scdl.data.cache import read_index
from scdl.data.checks import CheckReport, check_cases, check_split, dataset_json_problems
from scdl.data.errors import ERROR, DataCheckError, Problem
from scdl.data.layouts import (
    ARRAY_LAYOUTS,
    RawDataset,
    read_amos22,
    read_amos_npy,
    read_btcv,
    read_nnunet_raw,
    read_synapse_h5,
)
from scdl.data.planning import foreground_intensity_stats, median_spacing
from scdl.data.prepare import (
    PreprocessProtocol,
    _write_json_atomic,
    case_is_cached,
    prepare_dataset,
)
from scdl.data.splits import SplitError, SplitFileNotFoundError, is_excluded, resolve_split
from scdl.utils.errors import InputError
from scdl.utils.parallel import resolve_workers

READERS: dict[str, Callable[..., RawDataset]] = {
    "nnunet": read_nnunet_raw,
    "phantom": read_nnunet_raw,
    "amos": read_amos22,
    "btcv": read_btcv,
    "amos_npy": read_amos_npy,
    "synapse_h5": read_synapse_h5,
}
log = logging.getLogger(__name__)
_TUPLE_KEYS = ("spacing", "resize", "clip", "voxel_spacing", "intensity_stats", "transpose")
DOCS = "docs/real-data.md"


class DataNotFoundError(FileNotFoundError, CompactHydraException):
    """Raw data or cache missing or unrecognised. Under Hydra only the message is printed."""


def _protocol_spec(cfg: DictConfig | dict) -> dict:
    """The protocol config as a plain dict (lists as tuples), possibly with unresolved values."""
    d = (
        cast(dict, OmegaConf.to_container(cfg, resolve=True))
        if isinstance(cfg, DictConfig)
        else dict(cfg)
    )
    d.pop("_target_", None)
    for key in _TUPLE_KEYS:
        if isinstance(d.get(key), list):
            d[key] = tuple(d[key])
    return d


def needs_data(spec: dict) -> bool:
    """True when the protocol has values that depend on the data set (see module docstring)."""
    return (
        spec.get("spacing") == "median"
        or spec.get("normalisation") == "auto"
        or (spec.get("normalisation") == "ct" and spec.get("intensity_stats") is None)
    )


def spec_hash(spec: dict) -> str:
    """Hash of a protocol config: the protocol hash when nothing is left to the data set (so
    caches written before ``config_hash`` existed stay valid), else a hash of the config itself."""
    if not needs_data(spec):
        return PreprocessProtocol(**spec).hash
    blob = json.dumps({"unresolved": spec}, sort_keys=True, default=list).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def resolve_spec(spec: dict, raw: RawDataset, progress: bool = True) -> dict:
    """Fills ``spacing: median``, ``normalisation: auto`` and missing ``ct`` statistics from ``raw``.

    Only training cases count: those a reader marks ``extra["subset"]`` other than ``"Tr"`` (AMOS
    ``imagesVa`` = the benchmark's test set, ``imagesTs``) are left out.
    """
    spec = dict(spec)
    train_cases = [c for c in raw.cases if c.extra.get("subset", "Tr") == "Tr"]
    raw = RawDataset(raw.name, train_cases, raw.class_names, raw.meta)
    if spec.get("spacing") == "median":
        spec["spacing"] = median_spacing(raw, spec.get("orientation", "RAS"))
    if spec.get("normalisation") == "auto":
        is_ct = str(raw.meta.get("channel", "CT")).upper() == "CT"
        spec["normalisation"] = "ct" if is_ct else "zscore"
    if spec.get("normalisation") == "ct" and spec.get("intensity_stats") is None:
        spec["clip"] = None  # ct takes its window from the statistics
        spec["intensity_stats"] = foreground_intensity_stats(raw, progress=progress)
    return spec


def protocol_from_config(
    cfg: DictConfig | dict, raw: RawDataset | None = None, progress: bool = True
) -> PreprocessProtocol:
    """The :class:`PreprocessProtocol` of a ``data.protocol`` config; data-dependent values are
    resolved from ``raw`` (required then)."""
    spec = _protocol_spec(cfg)
    if needs_data(spec):
        if raw is None:
            raise InputError(
                f"protocol {spec.get('name')!r} leaves values to the data set (spacing: median, "
                "normalisation: auto or ct statistics): pass the raw data set"
            )
        spec = resolve_spec(spec, raw, progress)
    return PreprocessProtocol(**spec)


def _require_root(data_cfg: DictConfig) -> None:
    if OmegaConf.is_missing(data_cfg, "root"):
        raise DataNotFoundError(
            f"data.root is not set: pass data.root=/path/to/the/{data_cfg.name} data set "
            f"(layouts in {DOCS})"
        )


def read_raw(data_cfg: DictConfig) -> RawDataset:
    """Lists the raw data set of ``data_cfg`` (``layout``, ``raw_dir``, ``reader`` options)."""
    _require_root(data_cfg)
    layout = data_cfg.layout
    reader = reader_of(layout)
    raw_dir = Path(data_cfg.raw_dir)
    if layout == "phantom" and not (raw_dir / "dataset.json").is_file():
        from scdl.data.phantom import write_phantom

        write_phantom(raw_dir, int(data_cfg.phantom.num_cases), int(data_cfg.phantom.seed))
    if not raw_dir.exists():
        raise DataNotFoundError(
            f"{data_cfg.name}: raw data folder {raw_dir} does not exist (and no prepared cache at "
            f"{data_cfg.get('cache_dir')}). Download the data set as described in {DOCS} and set "
            f"data.root (or data.raw_dir, or the SCDL_DATA_DIR environment variable) to it."
        )
    options = data_cfg.get("reader")
    options = cast(dict, OmegaConf.to_container(options, resolve=True)) if options else {}
    try:
        return reader(raw_dir, **options)
    except FileNotFoundError as e:
        raise DataNotFoundError(
            f"{data_cfg.name}: {e} (data.layout={layout}; expected layouts in {DOCS})"
        ) from e


def reader_of(layout: str) -> Callable[..., RawDataset]:
    """The raw-data reader of ``data.layout``: a name of :data:`READERS` or a dotted import path."""
    if layout in READERS:
        return READERS[layout]
    if "." in layout:
        from hydra.utils import get_method

        try:
            return get_method(layout)
        except Exception as err:  # noqa: BLE001 - name the key and what was tried
            raise InputError(f"data.layout={layout!r}: cannot import that reader ({err})") from err
    raise InputError(
        f"unknown data.layout {layout!r}; known: {sorted(READERS)}, or the dotted path of a reader "
        "function (raw_dir, **options) -> RawDataset"
    )


def _check_layout_protocol(layout: str, spec: dict) -> None:
    if layout in ARRAY_LAYOUTS and (spec.get("orientation") or spec.get("spacing")):
        raise InputError(
            f"data.layout={layout} holds preprocessed arrays without an affine, but protocol "
            f"{spec.get('name')!r} reorients/resamples (orientation={spec.get('orientation')}, "
            f"spacing={spec.get('spacing')}). Use the copying protocol: data/protocol=legacy_amos "
            "or data/protocol=legacy_synapse (see docs/real-data.md)"
        )


def _resolved_protocol(
    spec: dict, config_hash: str, raw: RawDataset, cache: Path, progress: bool
) -> PreprocessProtocol:
    """Resolves the data-dependent values once per config: reused from ``plan.json``."""
    if not needs_data(spec):
        return PreprocessProtocol(**spec)
    plan_path = cache / "plan.json"
    if plan_path.is_file():
        plan = json.loads(plan_path.read_text())
        if plan.get("config_hash") == config_hash:
            return PreprocessProtocol(**_protocol_spec(plan["protocol"]))
    protocol = PreprocessProtocol(**resolve_spec(spec, raw, progress))
    cache.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(plan_path, {"config_hash": config_hash, "protocol": protocol.to_dict()})
    return protocol


def _plan_reusable(cache: Path, config_hash: str) -> bool:
    try:
        return json.loads((cache / "plan.json").read_text()).get("config_hash") == config_hash
    except (OSError, json.JSONDecodeError):
        return False


def prepare_from_config(data_cfg: DictConfig, progress: bool = True) -> Path:
    """Generates (phantom) and preprocesses the data set of ``data_cfg``; returns the cache folder.

    Idempotent: cases already cached under the same protocol (and unchanged raw files) are skipped,
    so an interrupted run is resumed by running it again. ``data.check`` (default true) validates
    every case before anything is written (all cases when data-set statistics are computed first,
    else those to be written); ``data.nonfinite`` (``error`` | ``repair``) treats NaN / Inf."""
    spec = _protocol_spec(data_cfg.protocol)
    _check_layout_protocol(str(data_cfg.layout), spec)
    raw = read_raw(data_cfg)
    cache = Path(data_cfg.cache_dir)
    config_hash = spec_hash(spec)
    check = bool(data_cfg.get("check", True))
    nonfinite = str(data_cfg.get("nonfinite", "error"))
    spacing = str(data_cfg.get("implausible_spacing", "error"))
    workers = resolve_workers(data_cfg.get("prepare_workers", "auto"))
    if check and needs_data(spec) and not _plan_reusable(cache, config_hash):
        # the statistics read every labeled case: validate them all first
        check_cases(raw, None, nonfinite, progress, spacing, workers).raise_on_errors(
            f"{raw.name}: "
        )
        check = False
    protocol = _resolved_protocol(spec, config_hash, raw, cache, progress)
    extra = {"config_hash": config_hash, "layout": str(data_cfg.layout)}
    return prepare_dataset(
        raw,
        protocol,
        cache,
        progress,
        index_extra=extra,
        check=check,
        nonfinite=nonfinite,
        implausible_spacing=spacing,
        workers=workers,
    )


def _wait_for_rank_zero(data_cfg: DictConfig, wait_s: float, poll_s: float = 5.0) -> Path:
    """Polls until the cache that global rank 0 is preparing is complete (a barrier through the
    file system: no process group exists before the trainer)."""
    import time

    cache = Path(data_cfg.cache_dir)
    log.info("waiting for global rank 0 to prepare %s", cache)
    start = last_note = time.monotonic()
    while time.monotonic() - start < wait_s:
        time.sleep(poll_s)
        _, stale = _cache_state(data_cfg, report=False)
        if not stale:
            log.info("cache %s ready after %.0f s", cache, time.monotonic() - start)
            return cache
        if time.monotonic() - last_note > 300:
            log.info("still waiting for rank 0 to prepare %s", cache)
            last_note = time.monotonic()
    raise DataNotFoundError(
        f"{data_cfg.name}: rank 0 did not finish preparing {cache} within {wait_s:.0f} s. Prepare "
        f"it once before launching the ranks: `python src/prepare_data.py data={data_cfg.name} ...`"
    )


def _read_index_or_none(cache: Path) -> dict | None:
    try:
        return read_index(cache)
    except FileNotFoundError:
        return None


def _written_with(index: dict | None, data_cfg: DictConfig) -> bool:
    """True when the cache index was written with ``data_cfg``'s protocol (caches older than
    ``config_hash`` carry only ``protocol_hash``)."""
    config_hash = spec_hash(_protocol_spec(data_cfg.protocol))
    return index is not None and index.get("config_hash", index.get("protocol_hash")) == config_hash


def cached_protocol(data_cfg: DictConfig) -> PreprocessProtocol | None:
    """The fully resolved protocol stored in the cache index of ``data_cfg``, or None when the
    cache is missing or was written with another protocol."""
    index = _read_index_or_none(Path(data_cfg.cache_dir))
    if index is None or "protocol" not in index or not _written_with(index, data_cfg):
        return None
    return PreprocessProtocol(**_protocol_spec(index["protocol"]))


def changed_raw_cases(data_cfg: DictConfig, index: dict) -> list[str]:
    """Ids of cached cases whose raw files changed since they were preprocessed (size and mtime,
    else content hash); empty when the raw data set is not there (a cache alone is trusted)."""
    raw_dir = Path(data_cfg.raw_dir)
    if not raw_dir.exists() or (
        data_cfg.layout == "phantom" and not (raw_dir / "dataset.json").exists()
    ):
        return []
    try:
        raw = read_raw(data_cfg)
    except FileNotFoundError:
        return []
    except DataCheckError as e:  # the cache was made from a readable state: keep using it
        log.warning("raw data set not readable, using the prepared cache as it is: %s", e)
        return []
    cache = Path(data_cfg.cache_dir)
    cached = {c["case_id"] for c in index.get("cases", [])}
    return [
        c.case_id
        for c in raw.cases
        if c.case_id in cached and not case_is_cached(cache, c.case_id, index["protocol_hash"], c)
    ]


def _cache_state(data_cfg: DictConfig, report: bool = True) -> tuple[dict | None, bool]:
    """The cache index (None if missing) and whether the cache must be (re)written: another
    protocol, or (with ``auto_prepare``) raw files changed since they were preprocessed."""
    index = _read_index_or_none(Path(data_cfg.cache_dir))
    stale = not _written_with(index, data_cfg)
    # not stale: the index exists (_written_with)
    if not stale and data_cfg.get("auto_prepare", False) and "protocol_hash" in cast(dict, index):
        changed = changed_raw_cases(data_cfg, cast(dict, index))
        if changed and report:
            log.warning(
                "%d raw case(s) changed since they were preprocessed (%s): preprocessing them again",
                len(changed),
                ", ".join(changed[:10]) + (" ..." if len(changed) > 10 else ""),
            )
        stale = bool(changed)
    return index, stale


def ensure_prepared(data_cfg: DictConfig, wait_s: float = 12 * 3600.0) -> Path:
    """Prepares the cache when ``data.auto_prepare`` is set and the cache is missing or stale
    (another protocol, or raw files changed since they were preprocessed).

    Only global rank 0 prepares (:func:`scdl.utils.distributed.launch_is_global_zero`: ranks that
    SLURM or torchrun start together would otherwise all write the same cache); the other ranks
    wait up to ``wait_s`` for the cache rank 0 writes."""
    from scdl.utils.distributed import launch_is_global_zero

    _require_root(data_cfg)
    cache = Path(data_cfg.cache_dir)
    index, stale = _cache_state(data_cfg)
    if stale and data_cfg.get("auto_prepare", False):
        if launch_is_global_zero():
            return prepare_from_config(data_cfg)
        return _wait_for_rank_zero(data_cfg, wait_s)
    if index is None:
        raise DataNotFoundError(
            f"{data_cfg.name}: no prepared cache at {cache} (index.json missing). Prepare it with "
            f"`python src/prepare_data.py data={data_cfg.name} data.root=...` or set "
            f"data.auto_prepare=true (see {DOCS})"
        )
    if stale:
        raise RuntimeError(
            f"the cache {cache} was written with another preprocessing protocol; run "
            "`python src/prepare_data.py` with this data config again"
        )
    return cache


# ----------------------------------------------------------------------------------------------
# The data check (src/check_data.py)
# ----------------------------------------------------------------------------------------------


def split_from_config(module_cfg, raw: RawDataset):
    """The split the data module would use (``split_file`` or the drawn one), ``exclude`` applied,
    and where it comes from."""
    exclude = dict(module_cfg.get("exclude") or {})
    kept = [c for c in raw.cases if not is_excluded(c.extra, exclude)]
    split_file = module_cfg.get("split_file")
    split = resolve_split(
        [c.case_id for c in raw.cases],
        [c.case_id for c in kept if c.label is not None],
        [c.case_id for c in kept if c.label is None],
        split_file=split_file,
        labeled_ratio=module_cfg.get("labeled_ratio", 0.2),
        num_labeled=module_cfg.get("num_labeled"),
        num_val=int(module_cfg.get("num_val", 4)),
        num_test=int(module_cfg.get("num_test", 6)),
        seed=int(module_cfg.get("split_seed", 0)),
    )
    if split_file:
        return split, str(split_file)
    return split, "drawn split (data.module.labeled_ratio / num_labeled / split_seed)"


def check_from_config(data_cfg, progress: bool = True) -> CheckReport:
    """Every check on the raw data set of a ``data`` config, the split included."""
    name = str(data_cfg.name)
    try:
        raw = read_raw(data_cfg)
    except DataCheckError as e:  # malformed dataset.json, duplicate ids: nothing more to check
        return CheckReport(name, list(e.problems))
    report = check_cases(
        raw,
        nonfinite=str(data_cfg.get("nonfinite", "error")),
        progress=progress,
        implausible_spacing=str(data_cfg.get("implausible_spacing", "error")),
        workers=resolve_workers(data_cfg.get("prepare_workers", "auto")),
    )
    report.problems[:0] = dataset_json_problems(raw, Path(data_cfg.raw_dir))
    module_cfg = data_cfg.get("module") or {}
    try:
        split, source = split_from_config(module_cfg, raw)
    except (SplitError, SplitFileNotFoundError) as e:
        report.problems.append(
            Problem(
                ERROR,
                "split",
                str(e),
                "fix the split file (data.module.split_file) or the split settings",
                path=module_cfg.get("split_file"),
            )
        )
        return report
    in_split = {i for part in split.to_dict().values() for i in part}
    empty = [i for i, f in report.facts.items() if f.empty_label]
    # the split check reports empty labels with their part: drop the generic warnings for those
    report.problems = [
        p for p in report.problems if not (p.check == "empty label" and p.case_id in in_split)
    ]
    ids = [c.case_id for c in raw.cases]
    report.problems += check_split(split, ids, empty, report.duplicates, source)
    missing = in_split - set(ids)  # reported above
    try:  # overlapping parts, repeated ids, val / test cases without labels
        split.validate(None, [c.case_id for c in raw.labeled] + sorted(missing), name=source)
    except SplitError as e:
        report.problems.append(
            Problem(ERROR, "split", str(e), "fix the split file or the split settings", path=source)
        )
    return report
