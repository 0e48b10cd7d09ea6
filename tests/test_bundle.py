"""MONAI bundle export (``src/export.py``, :mod:`scdl.inference.bundle`): a tiny SCDL phantom run
exported, the bundle run by MONAI's own runner (``python -m monai.bundle run``) with this project
made unimportable, and its label maps compared with ``predict.py``'s voxel by voxel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg, tiny_train_overrides
from scdl.data.layouts import RawCase
from scdl.data.prepare import preprocess_case
from scdl.inference.checkpoint import load_module_from_checkpoint
from scdl.inference.native_grid import source_to_cache_index
from scdl.inference.predict import run_protocol
from scdl.inference.segment import segment_volume

pytest.importorskip("fire", reason="python -m monai.bundle needs fire (the dev extra)")


@pytest.fixture(scope="module")
def exported(phantom_cache, tmp_path_factory) -> dict:
    """A 4-step mean teacher + SCDL run (the prior path changes inference) and its bundle."""
    from scdl.inference.bundle import export_bundle
    from scdl.training import train

    tmp = tmp_path_factory.mktemp("bundle_run")
    run_dir = tmp / "run"
    cfg = compose_cfg(
        [
            "experiment=phantom_scdl",
            *tiny_train_overrides(phantom_cache, tmp),
            "data.module.iters_per_epoch=4",
        ],
        output_dir=run_dir,
    )
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    ckpt = train(cfg)["best_ckpt"]
    export_cfg = compose_cfg(
        [f"ckpt_path={ckpt}", f"output={tmp / 'bundle'}", f"paths.log_dir={tmp}/logs"],
        config_name="export",
    )
    return {"ckpt": ckpt, "bundle": export_bundle(export_cfg), "tmp": tmp}


def run_bundle(bundle: Path, scan: Path, output: Path, cwd: Path) -> subprocess.CompletedProcess:
    """MONAI's bundle runner on ``scan``, in a process where ``import scdl`` fails."""
    stub = cwd / "no_scdl" / "scdl"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "__init__.py").write_text("raise ImportError('the bundle imported scdl')\n")
    env = {**os.environ, "PYTHONPATH": str(stub.parent)}
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(bundle / "configs" / "inference.json"),
        "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--bundle_root", str(bundle), "--input_dir", str(scan), "--output_dir", str(output),
    ]  # fmt: skip
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def source_axes(meta: dict):
    """(source axis i, preprocessed axis j, fractional preprocessed index of every source voxel
    along i); the phantom's grids share their axes (a permutation with flips and scales)."""
    m = source_to_cache_index(meta)
    for i, n in enumerate(meta["original_shape"]):
        j = int(np.abs(m[:3, i]).argmax())
        yield i, j, m[j, i] * np.arange(n) + m[j, 3]


def nearest_half_to_even(labels: np.ndarray, meta: dict) -> np.ndarray:
    """``labels`` (preprocessed grid) looked up at every source voxel with ties rounded to even
    (``grid_sample``'s nearest mode, under MONAI's ``Invertd``), per axis as in
    :func:`labels_to_original_grid` (which rounds ties up)."""
    index: list = [None] * 3
    order = []
    for _, j, coords in source_axes(meta):
        index[j] = np.clip(np.rint(coords), 0, labels.shape[j] - 1).astype(int)
        order.append(j)
    return np.transpose(labels[np.ix_(*index)], order)


def test_the_bundle_runs_without_scdl_and_agrees_with_predict(exported, phantom_raw, tmp_path):
    from scdl.inference.predict import predict

    scan = sorted((phantom_raw / "imagesTr").glob("*_0000.nii.gz"))[0]
    proc = run_bundle(exported["bundle"], scan, tmp_path / "bundle_out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [written] = sorted((tmp_path / "bundle_out").glob("*.nii.gz"))
    cfg = compose_cfg(
        [
            f"ckpt_path={exported['ckpt']}",
            f"input={scan}",
            f"output={tmp_path / 'pred'}",
            f"paths.log_dir={tmp_path}/logs",
            "progress=false",
        ],
        config_name="predict",
    )
    [predicted] = predict(cfg)
    ours, theirs = nib.load(predicted), nib.load(written)
    assert np.allclose(ours.affine, theirs.affine, atol=1e-5)
    a, b = np.asarray(ours.dataobj), np.asarray(theirs.dataobj).squeeze()
    assert a.shape == b.shape == nib.load(scan).shape
    assert b.dtype == np.uint8 and len(np.unique(a)) > 1

    # the labels on the preprocessed grid, as predict.py computes them
    module, run_cfg = load_module_from_checkpoint(exported["ckpt"])
    image, _, meta = preprocess_case(RawCase("case", scan), run_protocol(run_cfg))
    on_grid = segment_volume(module, image, torch.device("cpu"), run_cfg.trainer.precision)
    # The bundle is exact up to the rounding of ties: each of its voxels is the preprocessed label
    # nearest to it with ties to even (MONAI), predict.py's with ties up. The phantom's z spacing
    # 2.5 -> 2 mm puts every other source slice exactly half-way between two preprocessed ones.
    np.testing.assert_array_equal(b, nearest_half_to_even(on_grid, meta))
    tie = np.zeros(a.shape, bool)
    for i, _, coords in source_axes(meta):
        shape = [1, 1, 1]
        shape[i] = -1
        tie |= np.isclose(np.abs(coords) % 1, 0.5).reshape(shape)
    assert (a[~tie] == b[~tie]).all(), "outside the ties the two must agree exactly"
    print(f"differ on {(a != b).mean():.2%} of voxels, all at ties ({tie.mean():.2%} are)")


def test_the_bundle_states_what_a_user_needs(exported):
    bundle = exported["bundle"]
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    names = meta["scdl"]["class_names"]
    assert names[0] == "background" and len(names) == 14
    channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert channels == {str(i): n for i, n in enumerate(names)}
    assert meta["scdl"]["spacing"] == [1.5, 1.5, 2.0]
    assert meta["scdl"]["protocol"]["normalisation"] == "window"
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    targets = [t["_target_"] for t in config["preprocessing"]["transforms"]]
    assert targets[:5] == [
        "LoadImaged",
        "EnsureChannelFirstd",
        "EnsureTyped",
        "Orientationd",
        "Spacingd",
    ]
    assert "monai.bundle run" in (bundle / "docs" / "README.md").read_text()


def test_the_scripted_window_equals_the_framework(exported):
    """TorchScript of one window = the eager framework's ``segment`` + softmax, SCDL prior path
    included, for a batch size other than the traced one."""
    module, _ = load_module_from_checkpoint(exported["ckpt"])
    assert module.plugin is not None and module.plugin.changes_inference
    scripted = torch.jit.load(str(exported["bundle"] / "models" / "model.ts"))
    x = torch.rand(3, 1, *module.inference_cfg.roi_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module.segment(x).float().softmax(dim=1)
        got = scripted(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_export_refuses_a_folder_that_holds_files(exported, tmp_path):
    from scdl.inference.bundle import export_bundle
    from scdl.utils.errors import InputError

    (tmp_path / "keep.txt").write_text("x")
    cfg = compose_cfg(
        [f"ckpt_path={exported['ckpt']}", f"output={tmp_path}", f"paths.log_dir={tmp_path}/logs"],
        config_name="export",
    )
    with pytest.raises(InputError, match="not empty"):
        export_bundle(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


@pytest.mark.slow
def test_onnx_window_matches_the_framework_in_onnxruntime(exported, tmp_path):
    """``onnx=true``: the window also as ONNX (dynamo exporter), run by onnxruntime at a batch size
    other than the exported one, within 1e-4 of the framework's probabilities."""
    pytest.importorskip("onnxscript", reason="the export extra")
    onnxruntime = pytest.importorskip("onnxruntime", reason="the export extra")
    from scdl.inference.bundle import export_bundle

    cfg = compose_cfg(
        [
            f"ckpt_path={exported['ckpt']}",
            f"output={tmp_path / 'bundle'}",
            f"paths.log_dir={tmp_path}/logs",
            "onnx=true",
        ],
        config_name="export",
    )
    bundle = export_bundle(cfg)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["scdl"]["onnx"]["max_abs_diff_vs_torch"] < 1e-4
    module, _ = load_module_from_checkpoint(exported["ckpt"])
    x = torch.rand(4, 1, *module.inference_cfg.roi_size, generator=torch.Generator().manual_seed(2))
    session = onnxruntime.InferenceSession(str(bundle / "models" / "model.onnx"))
    (got,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = module.segment(x).float().softmax(dim=1).numpy()
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4
