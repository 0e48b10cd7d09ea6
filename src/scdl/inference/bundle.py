"""A trained checkpoint as a MONAI bundle: ``python src/export.py ckpt_path=... output=...``.

The bundle runs with MONAI alone (``python -m monai.bundle run --config_file
configs/inference.json --meta_file configs/metadata.json --input_dir scans/``); nothing of this
project is imported::

    <output>/
      configs/inference.json   the run's preprocessing (the same MONAI steps as
                               :func:`scdl.data.prepare.preprocessing_specs`), sliding-window
                               inference with the trained window, argmax, back onto each scan's
                               own grid (``Invertd``), NIfTI out
      configs/metadata.json    class names, spacing, intensity protocol, the checkpoint, versions
      models/model.ts          one sliding window of the trained framework, TorchScript:
                               (N, 1, *roi) float32 -> (N, C, *roi) class probabilities (or logits
                               when the run averages logits), the SCDL prior path included
      models/model.onnx        (onnx=true) the same window as ONNX, checked with onnxruntime
      docs/README.md           how to run it

Labels agree with ``predict.py`` but for the resampling back to the scan's grid: ``predict.py``
looks each source voxel up in the preprocessed grid per axis (edge voxels clamped), MONAI's
``Invertd`` resamples with ``grid_sample`` (nearest); the two differ only on voxels whose centre
falls half-way between two preprocessed voxels (tests/test_bundle.py states the measured figure).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from scdl.inference.checkpoint import load_module_from_checkpoint
from scdl.inference.predict import run_protocol
from scdl.inference.sliding_window import SlidingWindowConfig
from scdl.runs import checkpoint_step, resolve_checkpoint
from scdl.utils.errors import InputError

if TYPE_CHECKING:
    from scdl.frameworks.base import SemiSupervisedModule

log = logging.getLogger(__name__)

MODEL_FILE = "models/model.ts"
ONNX_FILE = "models/model.onnx"


class InferenceWindow(nn.Module):
    """One sliding window of a trained framework (its ``segment``: the plug-in's inference path,
    CPS's average of two networks) as a plain module: (N, 1, X, Y, Z) -> (N, C, X, Y, Z) float32
    class probabilities (``probabilities``, the runs' default ``inference.average=probs``) or
    logits."""

    def __init__(self, framework: SemiSupervisedModule, probabilities: bool) -> None:
        super().__init__()
        self.framework = framework
        self.probabilities = probabilities

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.framework.segment(x).float()
        return logits.softmax(dim=1) if self.probabilities else logits


def _eager_window(
    module: SemiSupervisedModule, window: SlidingWindowConfig, *batch_sizes: int
) -> tuple[InferenceWindow, list[torch.Tensor]]:
    """The window to export (CPU, float32, eval mode) and random inputs (N, 1, *roi) of the given
    batch sizes (seed 0)."""
    wrapper = InferenceWindow(module, window.average == "probs").eval().float().cpu()
    roi = tuple(int(r) for r in window.roi_size)
    generator = torch.Generator().manual_seed(0)
    return wrapper, [torch.rand((n, 1, *roi), generator=generator) for n in batch_sizes]


def script_window(
    module: SemiSupervisedModule, window: SlidingWindowConfig
) -> torch.jit.ScriptModule:
    """The trained framework's window traced to TorchScript on CPU in float32 and frozen (the
    parameters it does not use, an EMA teacher's, are dropped). Checked against the eager module
    on a second random batch of another size before it is returned."""
    wrapper, (example, check) = _eager_window(module, window, 1, 2)
    channels_last = getattr(module, "channels_last", False)
    module.channels_last = False  # a layout choice of training, not part of the model
    # Lightning's own to_torchscript flag: its ``trainer`` property returns None instead of raising
    # when tracing walks the module's attributes
    module._jit_is_scripting = True
    try:
        with torch.no_grad():
            traced = torch.jit.trace(wrapper, example, check_trace=False)
            frozen = torch.jit.freeze(traced, optimize_numerics=False)
            expected, got = wrapper(check), frozen(check)
    finally:
        module.channels_last, module._jit_is_scripting = channels_last, False
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-5, rtol=1e-4):
        raise RuntimeError(
            f"the TorchScript window differs from the eager module (max |diff| "
            f"{(got - expected).abs().max().item():.3g}): its inference has shape-dependent or "
            "random steps that tracing cannot keep; export is not possible for this framework"
        )
    return frozen


def onnx_window(module: SemiSupervisedModule, window: SlidingWindowConfig, path: Path) -> float:
    """Writes the same window as ONNX (torch's dynamo exporter, the batch axis dynamic) and runs it
    with onnxruntime on a random batch of 3 against the eager module; returns the largest absolute
    difference (float32 kernels differ in summation order: ~1e-5 in probabilities)."""
    try:
        import onnxruntime
        import onnxscript  # noqa: F401 - the exporter needs it
    except ImportError as err:
        raise InputError(
            f"onnx=true needs {err.name}: pip install 'scdl[export]' (onnx, onnxscript, "
            "onnxruntime)"
        ) from err
    wrapper, (example, check) = _eager_window(module, window, 2, 3)
    with torch.no_grad():
        expected = wrapper(check).numpy().copy()
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        wrapper,
        (example,),
        str(path),
        dynamo=True,
        input_names=["image"],
        output_names=["pred"],
        dynamic_shapes=({0: batch},),
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"image": check.numpy()})
    return float(abs(got - expected).max())


def _specs_to_config(specs: list[tuple[str, dict]]) -> list[dict[str, Any]]:
    return [{"_target_": name, **kwargs} for name, kwargs in specs]


def inference_config(run_cfg: DictConfig, window: SlidingWindowConfig) -> dict[str, Any]:
    """``configs/inference.json``: MONAI's bundle runner executes ``run`` over every NIfTI of
    ``input_dir`` (a folder, or one file) into ``output_dir``."""
    from scdl.data.prepare import preprocessing_specs

    protocol = run_protocol(run_cfg)
    preprocessing = _specs_to_config(preprocessing_specs(protocol, labeled=False))
    overlap = window.overlap if isinstance(window.overlap, int | float) else list(window.overlap)
    return {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "input_dir": "$os.path.join(@bundle_root, 'sample')",
        "output_dir": "$os.path.join(@bundle_root, 'eval')",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": f"$torch.jit.load(os.path.join(@bundle_root, '{MODEL_FILE}'))",
        "network": "$@network_def.to(@device).eval()",
        "datalist": (
            "$[{'image': f} for f in sorted(glob.glob(os.path.join(@input_dir, '*.nii*')))] "
            "if os.path.isdir(@input_dir) else [{'image': @input_dir}]"
        ),
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": [int(r) for r in window.roi_size],
            "sw_batch_size": int(window.sw_batch_size),
            "overlap": overlap,
            "mode": window.mode,
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": True,
                    "to_tensor": True,
                },
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_postfix": "seg",
                    "output_dtype": "$numpy.uint8",
                    "resample": False,
                    "separate_folder": False,
                    "print_log": True,
                },
            ],
        },
        "segment": (
            "$lambda d: @postprocessing(dict(d, pred=@inferer("
            "d['image'][None].to(@device), @network)[0].cpu()))"
        ),
        "run": ["$torch.set_grad_enabled(False)", "$[@segment(d) for d in @dataset]"],
    }


def metadata(run_cfg: DictConfig, window: SlidingWindowConfig, ckpt: Path, step: Any) -> dict:
    """``configs/metadata.json``: MONAI's fields (versions, input / output format with the class
    of every output channel) plus ``scdl``: the checkpoint, framework, protocol, training
    precision."""
    import monai
    import numpy

    protocol = run_protocol(run_cfg)
    names = [str(n) for n in run_cfg.data.class_names]
    roi = [int(r) for r in window.roi_size]
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
        "0.8.1/meta_schema_20220324.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported from {ckpt.name} (step {step})"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"nibabel": _version("nibabel")},
        "task": f"{len(names) - 1}-organ segmentation ({run_cfg.get('method_name', '')})",
        "description": (
            f"{run_cfg.get('experiment_name', '?')} trained with scdl; one sliding window of the "
            "trained network as TorchScript"
        ),
        "authors": "scdl",
        "copyright": "see the training data's licence",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": roi,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": len(names),
                    "spatial_shape": roi,
                    "dtype": "float32",
                    "value_range": [0, 1] if window.average == "probs" else [],
                    "is_patch_data": True,
                    "channel_def": {str(i): n for i, n in enumerate(names)},
                }
            },
        },
        "scdl": {
            "checkpoint": str(ckpt),
            "global_step": step,
            "experiment": run_cfg.get("experiment_name"),
            "framework": run_cfg.framework._target_,
            "class_names": names,
            "protocol": protocol.to_dict(),
            "spacing": list(protocol.spacing) if protocol.spacing else None,
            "sliding_window": {
                "roi_size": roi,
                "overlap": window.overlap,
                "mode": window.mode,
                "average": window.average,
            },
            "trained_precision": OmegaConf.select(run_cfg, "trainer.precision"),
            "exported_precision": "32-true",
        },
    }


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


README = """# {experiment}: a MONAI bundle exported by scdl

Segments abdominal CT ({classes} classes: {names}) with the network trained in
`{ckpt}` (step {step}). Runs with MONAI, PyTorch and nibabel only:

```bash
python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\
    --bundle_root . --input_dir <a .nii.gz file or a folder of them> --output_dir <folder>
```

Each scan is reoriented to {orientation}, resampled to {spacing} mm and normalised as in training
(`configs/inference.json`, `preprocessing`), segmented by sliding windows of {roi} voxels (overlap
{overlap}, {mode} blending), and the label map (uint8) is written on the scan's own grid as
`<name>_seg.nii.gz`. `models/model.ts` is one window: (N, 1, {roi_x}) float32 ->
(N, {classes}, {roi_x}) {output}.
"""


def export_bundle(cfg: DictConfig) -> Path:
    """Writes the bundle of ``cfg.ckpt_path`` into ``cfg.output``; returns the folder.

    Config keys (``conf/export.yaml``): ``ckpt_path`` (a checkpoint or run folder), ``output``,
    ``inference`` (sliding-window settings overriding the trained ones), ``overwrite``, ``onnx``
    (also ``models/model.onnx``).
    """
    from scdl.data.layouts import ARRAY_LAYOUTS

    ckpt = resolve_checkpoint(cfg.ckpt_path)
    out = Path(cfg.output).expanduser()
    if out.exists() and any(out.iterdir()) and not cfg.get("overwrite", False):
        raise InputError(f"output={out} exists and is not empty: choose another or overwrite=true")
    module, run_cfg = load_module_from_checkpoint(ckpt, inference=cfg.get("inference"))
    if str(run_cfg.data.get("layout")) in ARRAY_LAYOUTS:
        raise InputError(
            f"the run trained on preprocessed arrays (data.layout={run_cfg.data.layout}) without "
            "orientation or spacing: a bundle that reads NIfTI cannot reproduce that frame"
        )
    window: SlidingWindowConfig = module.inference_cfg
    step = checkpoint_step(ckpt)
    scripted = script_window(module, window)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    (out / "docs").mkdir(exist_ok=True)
    torch.jit.save(scripted, str(out / MODEL_FILE))
    onnx_diff = onnx_window(module, window, out / ONNX_FILE) if cfg.get("onnx", False) else None
    config = inference_config(run_cfg, window)
    (out / "configs" / "inference.json").write_text(json.dumps(config, indent=2) + "\n")
    meta = metadata(run_cfg, window, ckpt, step)
    if onnx_diff is not None:
        meta["scdl"]["onnx"] = {"file": ONNX_FILE, "max_abs_diff_vs_torch": onnx_diff}
    (out / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    protocol = meta["scdl"]["protocol"]
    roi = meta["scdl"]["sliding_window"]["roi_size"]
    (out / "docs" / "README.md").write_text(
        README.format(
            experiment=run_cfg.get("experiment_name", "model"),
            classes=len(meta["scdl"]["class_names"]),
            names=", ".join(meta["scdl"]["class_names"]),
            ckpt=ckpt,
            step=step,
            orientation=protocol.get("orientation") or "its stored orientation",
            spacing=protocol.get("spacing") or "its own spacing",
            roi=roi,
            roi_x=", ".join(str(r) for r in roi),
            overlap=window.overlap,
            mode=window.mode,
            output="class probabilities" if window.average == "probs" else "logits",
        )
    )
    log.info("wrote the MONAI bundle of %s to %s", ckpt, out)
    return out
