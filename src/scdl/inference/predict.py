"""Segment new scans with a trained checkpoint: ``python src/predict.py ckpt_path=... input=...
output=...``.

Every input NIfTI goes through the run's own preprocessing (``data.protocol`` of the run config,
:func:`scdl.data.prepare.preprocess_case`), sliding-window inference and argmax on the preprocessed
grid, then the label map is resampled (nearest neighbour) back onto the grid of the input file and
written with the input's shape and affine (:mod:`scdl.inference.segment`,
:mod:`scdl.inference.native_grid`, shared with ``eval.py``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import cast

import nibabel as nib
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from scdl.inference.checkpoint import load_module_from_checkpoint, with_class_mismatch_flag
from scdl.inference.native_grid import labels_to_original_grid, save_label_nifti
from scdl.inference.runtime import select_device
from scdl.inference.segment import segment_volume
from scdl.runs import resolve_checkpoint
from scdl.utils.errors import InputError, InputFileError
from scdl.utils.files import NIFTI_EXTENSIONS, nifti_case_name, repeated
from scdl.utils.progress import progress_iter

log = logging.getLogger(__name__)


def nifti_stem(path: str | Path) -> str:
    """File name without ``.nii.gz`` / ``.nii`` and without the nnU-Net channel suffix ``_0000``."""
    name = nifti_case_name(path) or Path(path).name
    return name[:-5] if name.endswith("_0000") else name


def list_inputs(source: str | Path) -> list[Path]:
    """One NIfTI file, or every ``*.nii.gz`` / ``*.nii`` directly inside a folder (sorted; hidden
    files such as macOS ``._*`` copies are skipped, other files named in a warning)."""
    src = Path(source).expanduser()
    if src.is_file():
        return [src]
    if src.is_dir():
        visible = [p for p in sorted(src.iterdir()) if not p.name.startswith(".")]
        files = [p for p in visible if p.is_file() and p.name.endswith(NIFTI_EXTENSIONS)]
        skipped = [p.name for p in visible if p not in files]
        if skipped:
            log.warning("%s: not NIfTI, not read: %s", src, ", ".join(skipped[:10]))
        if not files:
            raise InputFileError(f"no .nii.gz / .nii files in {src}")
        stems = [nifti_stem(f) for f in files]
        dup = repeated(stems)
        if dup:
            raise InputError(f"several inputs would write the same output: {dup}")
        return files
    raise InputFileError(f"input not found: {src}")


class PredictOutputError(ValueError, CompactHydraException):
    """An output folder that would overwrite or mix with the input scans."""


def check_output_folder(inputs: list[Path], output: Path) -> None:
    """Refuses an ``output`` folder that holds input scans: label maps would overwrite them (a
    scan without ``_0000`` has the label's name) or mix with them (a second run would read the
    label maps as scans)."""
    out = output.expanduser().resolve()
    inside = [p for p in inputs if p.resolve().parent == out]
    if inside:
        shown = ", ".join(p.name for p in inside[:3]) + (" ..." if len(inside) > 3 else "")
        raise PredictOutputError(
            f"output={output} holds the input scans ({shown}): the label maps would overwrite "
            f"or mix with them. Nothing was written. Choose another folder, e.g. "
            f"output={output.expanduser().resolve().parent / (out.name + '_pred')}"
        )


def run_protocol(run_cfg: DictConfig):
    """The preprocessing protocol the run trained with, fully resolved.

    A protocol may leave values to the data set (``spacing: median``, ``normalisation: auto`` or
    ``ct`` statistics): those resolved values live in the cache index, so the index is read first
    when its ``config_hash`` matches the run's protocol; otherwise the protocol must be complete in
    the config.
    """
    from scdl.data.catalog import cached_protocol, protocol_from_config

    data_cfg = run_cfg.data
    protocol = cached_protocol(data_cfg)
    if protocol is not None:
        return protocol
    try:
        return protocol_from_config(data_cfg.protocol)
    except ValueError as err:
        raise InputError(
            f"{err}. The resolved values are stored in the run's cache index "
            f"({data_cfg.cache_dir}/index.json), which is missing or from another protocol: point "
            "data.cache_dir at the training cache (predict.py ... +data.cache_dir=...) or set "
            "the values in data.protocol"
        ) from err


def predict(cfg: DictConfig) -> list[Path]:
    """Segments ``cfg.input`` (file or folder) into ``cfg.output``; returns the written files.

    Config keys (``conf/predict.yaml``): ``ckpt_path``, ``input``, ``output``, ``data`` (merged
    over the run's data section, e.g. ``+data.cache_dir=...``), ``inference``
    (sliding-window overrides), ``device``, ``precision`` (null: the run's trainer precision),
    ``overwrite``, ``progress``.
    """
    from scdl.data.layouts import ARRAY_LAYOUTS, RawCase
    from scdl.data.prepare import preprocess_case

    inputs = list_inputs(cfg.input)
    out_dir = Path(cfg.output).expanduser()
    check_output_folder(inputs, out_dir)  # before the model is loaded: fail in a second
    ckpt = resolve_checkpoint(cfg.ckpt_path)
    overrides = (
        {"data": OmegaConf.to_container(cfg.data, resolve=True)} if cfg.get("data") else None
    )
    module, run_cfg = load_module_from_checkpoint(
        ckpt, with_class_mismatch_flag(overrides, cfg), inference=cfg.get("inference")
    )
    if str(run_cfg.data.get("layout")) in ARRAY_LAYOUTS:
        raise InputError(
            f"the run trained on preprocessed arrays (data.layout={run_cfg.data.layout}) without "
            "orientation or spacing: NIfTI scans cannot be brought into that frame reliably. "
            "Use eval.py on the array data set, or train on NIfTI data (docs/real-data.md)"
        )
    device = select_device(cfg.get("device", "auto"))
    module.to(device)
    precision = cfg.get("precision") or run_cfg.get("trainer", {}).get("precision")
    protocol = run_protocol(run_cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("predicting %d scan(s) with %s -> %s", len(inputs), ckpt, out_dir)

    written = []
    for path in progress_iter(inputs, "predict", bool(cfg.get("progress", True))):
        target = out_dir / f"{nifti_stem(path)}.nii.gz"
        if target.exists() and not cfg.get("overwrite", True):
            log.info("skipping %s: %s exists", path.name, target)
            written.append(target)
            continue
        t0 = time.perf_counter()
        image, _, meta = preprocess_case(RawCase(nifti_stem(path), path), protocol)
        labels = segment_volume(module, image, device, precision)
        reference = cast(nib.Nifti1Image, nib.load(str(path)))  # a NIfTI input (1 or 2)
        native = labels_to_original_grid(labels, meta)
        if native.shape != reference.shape[:3]:
            raise RuntimeError(f"{path}: prediction {native.shape} vs image {reference.shape}")
        written.append(save_label_nifti(native, target, reference.affine, reference))
        log.info("%s: %s in %.1f s", path.name, target, time.perf_counter() - t0)
    return written
