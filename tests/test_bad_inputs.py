"""Fault injection: unusual or broken inputs are either used correctly or refused by name.

One test per input the project claims to handle (README / docs/troubleshooting.md): each asserts
that the result is right, or that the error names the file or key and the fix. Fixtures are tiny
nnU-Net / AMOS / BTCV folders written by ``real_data_fixtures``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from real_data_fixtures import write_amos22, write_btcv, write_nnunet
from scdl.data.checks import check_case, check_cases
from scdl.data.errors import DataCheckError
from scdl.data.layouts import RawCase, read_amos22, read_btcv, read_nnunet_raw
from scdl.data.prepare import PreprocessProtocol, prepare_dataset, preprocess_case

SHAPE = (16, 16, 12)


@pytest.fixture
def nnunet(tmp_path) -> Path:
    return write_nnunet(tmp_path, num_cases=4, num_test=1, shape=SHAPE)


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine


def _rewrite(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    nib.save(nib.Nifti1Image(data, _load(path)[1] if affine is None else affine), str(path))


# --- every file under imagesTr / labelsTr / imagesTs is used or reported -----------------------


def test_image_only_as_channel_0001_is_reported_with_the_rename(nnunet):
    (nnunet / "imagesTr/tiny_002_0000.nii.gz").rename(nnunet / "imagesTr/tiny_002_0001.nii.gz")
    with pytest.raises(DataCheckError) as err:
        read_nnunet_raw(nnunet)
    text = str(err.value)
    assert "tiny_002_0001.nii.gz: case 'tiny_002' has channel _0001 but no channel _0000" in text
    assert "rename it to tiny_002_0000.nii.gz" in text
    assert "labelsTr/tiny_002.nii.gz: its image was not read" in text


def test_a_nii_file_in_a_nii_gz_data_set_is_reported(nnunet):
    src = nnunet / "imagesTr/tiny_003_0000.nii.gz"
    nib.save(nib.load(str(src)), str(nnunet / "imagesTr/tiny_003_0000.nii"))
    src.unlink()
    with pytest.raises(DataCheckError, match=r"tiny_003_0000.nii: ends in .nii but dataset.json "):
        read_nnunet_raw(nnunet)


def test_an_orphan_label_is_reported(nnunet):
    (nnunet / "labelsTr/tiny_001.nii.gz").rename(nnunet / "labelsTr/tiny_077.nii.gz")
    with pytest.raises(DataCheckError) as err:
        read_nnunet_raw(nnunet)
    assert "tiny_001_0000.nii.gz: image has no label" in str(err.value)
    assert "tiny_077.nii.gz: label without an image" in str(err.value)


def test_an_extra_channel_file_of_a_single_channel_data_set_is_reported(nnunet):
    src = nnunet / "imagesTr/tiny_000_0000.nii.gz"
    (nnunet / "imagesTr/tiny_000_0001.nii.gz").write_bytes(src.read_bytes())
    with pytest.raises(DataCheckError, match="channel file _0001 of case 'tiny_000'"):
        read_nnunet_raw(nnunet)


def test_system_files_are_ignored_and_macos_files_reported_as_deletable(nnunet):
    (nnunet / "imagesTr/.DS_Store").write_bytes(b"\0")
    (nnunet / "labelsTr/Thumbs.db").write_bytes(b"\0")
    (nnunet / "imagesTr/._tiny_000_0000.nii.gz").write_bytes(b"\0" * 64)
    (nnunet / "imagesTr/notes.txt").write_text("x")
    raw = read_nnunet_raw(nnunet)
    assert len(raw.cases) == 5  # the AppleDouble file is not taken for a case
    found = {(Path(p.path).name, p.severity) for p in raw.problems}
    assert found == {("._tiny_000_0000.nii.gz", "warning"), ("notes.txt", "warning")}
    mac = next(p for p in raw.problems if Path(p.path).name.startswith("._"))
    assert "-name '._*' -delete" in mac.fix and "re-download" not in str(mac)
    report = check_cases(raw, progress=False)  # check_data shows them
    assert {Path(p.path).name for p in report.warnings} >= {"._tiny_000_0000.nii.gz"}


def test_amos_and_btcv_readers_report_orphans_and_other_endings(tmp_path):
    amos = write_amos22(tmp_path / "a", tr=(1, 2), va=(), ts=())
    (amos / "labelsTr/amos_0009.nii.gz").write_bytes(
        (amos / "labelsTr/amos_0001.nii.gz").read_bytes()
    )
    nib.save(
        nib.load(str(amos / "imagesTr/amos_0002.nii.gz")), str(amos / "imagesTr/amos_0003.nii")
    )
    with pytest.raises(DataCheckError) as err:
        read_amos22(amos)
    assert "amos_0009.nii.gz: label without an image" in str(err.value)
    assert "amos_0003.nii: scan-like file" in str(err.value)
    btcv = write_btcv(tmp_path / "b", training=(1, 2), testing=())
    lab = btcv / "Training/label"
    (lab / "label0007.nii.gz").write_bytes((lab / "label0001.nii.gz").read_bytes())
    with pytest.raises(DataCheckError, match=r"img0007.nii.gz is missing"):
        read_btcv(btcv)


# --- one 3D volume per file ---------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["imagesTr", "imagesTs"])
def test_a_two_channel_image_is_refused_by_check_and_preprocessing(nnunet, folder):
    path = sorted((nnunet / folder).glob("*_0000.nii.gz"))[0]
    data, _ = _load(path)
    _rewrite(path, np.stack([data, data], -1))
    raw = read_nnunet_raw(nnunet)
    case = next(c for c in raw.cases if c.image == path)
    problems, _ = check_case(case, raw.num_classes)
    assert [p.check for p in problems] == ["shape"]
    assert "2 channels or time points in one file (shape (16, 16, 12, 2))" in str(problems[0])
    assert str(path) in str(problems[0])
    # what predict.py runs on an input: refused naming the file, never cut to channel 0
    with pytest.raises(DataCheckError, match=r"holds 2 channels in one file"):
        preprocess_case(RawCase(case.case_id, path), PreprocessProtocol())


def test_a_2d_nifti_is_refused_by_the_checker(nnunet):
    for path in (nnunet / "imagesTr/tiny_001_0000.nii.gz", nnunet / "labelsTr/tiny_001.nii.gz"):
        data, _ = _load(path)
        _rewrite(path, np.ascontiguousarray(data[:, :, 6]))
    raw = read_nnunet_raw(nnunet)
    report = check_cases(raw, progress=False)
    shown = [str(p) for p in report.errors]
    assert any("tiny_001_0000.nii.gz: image is 2D (shape (16, 16))" in s for s in shown), shown
    with pytest.raises(DataCheckError, match="tiny_001_0000.nii.gz: image is 2D"):
        prepare_dataset(raw, PreprocessProtocol(), nnunet / "cache", progress=False)


def test_a_label_with_a_trailing_singleton_axis_is_used(nnunet, tmp_path):
    """(X, Y, Z, 1) labels are common from some exporters: accepted everywhere, including the
    CT intensity statistics (an IndexError before)."""
    path = nnunet / "labelsTr/tiny_001.nii.gz"
    data, _ = _load(path)
    _rewrite(path, data[..., None])
    raw = read_nnunet_raw(nnunet)
    assert not check_cases(raw, progress=False).errors
    from scdl.data.cache import load_cached_case
    from scdl.data.planning import foreground_intensity_stats

    stats = foreground_intensity_stats(raw, progress=False)
    protocol = PreprocessProtocol(normalisation="ct", clip=None, intensity_stats=stats)
    cache = prepare_dataset(raw, protocol, tmp_path / "cache", progress=False)
    case = load_cached_case(cache, "tiny_001")
    assert case.label.ndim == 3 and case.label.shape == case.image.shape
    assert set(np.unique(case.label)) == set(np.unique(data))


# --- spacing ------------------------------------------------------------------------------------


def test_an_affine_in_metres_is_an_error_unless_allowed(nnunet):
    for path in (nnunet / "imagesTr/tiny_001_0000.nii.gz", nnunet / "labelsTr/tiny_001.nii.gz"):
        _rewrite(path, _load(path)[0], np.diag([-0.0012, -0.0012, 0.0025, 1.0]))
    raw = read_nnunet_raw(nnunet)
    errors = check_cases(raw, progress=False).errors
    assert [p.check for p in errors] == ["spacing"]
    assert "an affine in metres?" in str(errors[0])
    assert "data.implausible_spacing=warn" in str(errors[0])
    with pytest.raises(DataCheckError, match="tiny_001_0000.nii.gz: implausible voxel size"):
        prepare_dataset(raw, PreprocessProtocol(), nnunet / "cache", progress=False)
    report = check_cases(raw, progress=False, implausible_spacing="warn")
    assert not report.errors and [p.check for p in report.warnings] == ["spacing"]


# --- classes ------------------------------------------------------------------------------------


def _with_labels(root: Path, labels: dict) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = labels
    (root / "dataset.json").write_text(json.dumps(meta, ensure_ascii=False))


def test_class_names_that_clean_alike_are_refused_with_both_names(nnunet):
    _with_labels(nnunet, {"background": 0, "right kidney": 1, "right-kidney": 2, "c": 3})
    with pytest.raises(DataCheckError) as err:
        read_nnunet_raw(nnunet)
    text = str(err.value)
    assert "dataset.json" in text
    assert "'right kidney' (id 1) and 'right-kidney' (id 2) -> 'right_kidney'" in text


def test_non_latin_class_names_stay_readable_and_distinct(nnunet):
    _with_labels(nnunet, {"background": 0, "печень": 1, "肝臓": 2, "Left Lobe": 3})
    assert read_nnunet_raw(nnunet).class_names == ["background", "печень", "肝臓", "left_lobe"]


def test_results_and_modules_refuse_repeated_class_names():
    from scdl.frameworks.base import SemiSupervisedModule
    from scdl.metrics.results import aggregate_metrics

    case = {"dice": np.array([0.5, 0.7])}
    with pytest.raises(ValueError, match="'a' \\(id 0\\) and 'a' \\(id 1\\)"):
        aggregate_metrics([case], ["a", "a"])
    with pytest.raises(ValueError, match="class names that are the same"):
        SemiSupervisedModule(num_classes=2, class_names=["x", "x"])


def test_more_than_255_classes_are_cached_without_wrapping(nnunet, tmp_path):
    _with_labels(nnunet, {"background": 0, **{f"c{i}": i for i in range(1, 300)}})
    path = nnunet / "labelsTr/tiny_001.nii.gz"
    data, _ = _load(path)
    data = data.astype(np.uint16)
    data[data == 1] = 259
    _rewrite(path, data)
    raw = read_nnunet_raw(nnunet)
    cache = prepare_dataset(raw, PreprocessProtocol(), tmp_path / "cache", progress=False)
    label = np.load(cache / "tiny_001_label.npy")
    assert label.dtype == np.uint16 and 259 in label
    assert set(np.unique(label)) == set(np.unique(data))


# --- predict.py output --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["scan_0000.nii.gz", "scan.nii.gz"])
def test_predict_refuses_an_output_folder_holding_its_inputs(tmp_path, name):
    """Checked before the model is loaded (the checkpoint here does not even exist); the scans
    stay untouched."""
    from omegaconf import OmegaConf

    from scdl.inference.predict import PredictOutputError, predict

    folder = tmp_path / "scans"
    folder.mkdir()
    scan = folder / name
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.int16), np.eye(4)), str(scan))
    before = scan.read_bytes()
    for output in (folder, tmp_path / "scans" / "."):
        cfg = OmegaConf.create(
            {"ckpt_path": str(tmp_path / "none.ckpt"), "input": str(folder), "output": str(output)}
        )
        with pytest.raises(PredictOutputError, match=f"holds the input scans \\({name}\\)"):
            predict(cfg)
    assert scan.read_bytes() == before


# --- user errors print their message only -------------------------------------------------------


def _unwritable() -> Path | None:
    """A folder that cannot be created even by root (/sys), or None where it can."""
    probe = Path("/sys/scdl-unwritable")
    try:
        probe.mkdir()
    except OSError:
        return probe
    probe.rmdir()
    return None


def _cli(script: str, *overrides: str, cwd: Path) -> tuple[int, str]:
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "src" / f"{script}.py"), *overrides],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**env, "WANDB_MODE": "disabled"},
        timeout=300,
    )
    return result.returncode, result.stdout + result.stderr


def test_storage_errors_name_the_file_and_the_key_to_change():
    import errno

    from hydra.errors import CompactHydraException
    from omegaconf import OmegaConf

    from scdl.utils.errors import StorageError, config_folders, user_errors

    cfg = OmegaConf.create({"data": {"cache_dir": "/data/ro/cache"}, "paths": {"log_dir": "/l"}})

    @user_errors(config_folders)
    def task(cfg, err):
        raise err

    denied = PermissionError(errno.EACCES, "Permission denied", "/data/ro/cache/a_image.npy")
    with pytest.raises(StorageError) as info:
        task(cfg, denied)
    assert isinstance(info.value, CompactHydraException)
    assert str(info.value) == (
        "/data/ro/cache/a_image.npy: Permission denied. Fix: make it writable, or point the "
        "output at a writable folder: data.cache_dir=<writable folder>"
    )
    full = OSError(errno.ENOSPC, "No space left on device", "/l/train/x.ckpt")
    with pytest.raises(StorageError, match="no space left.*paths.log_dir=<writable folder>"):
        task(cfg, full)
    missing = FileNotFoundError(errno.ENOENT, "No such file", "/x")  # not the environment's
    with pytest.raises(FileNotFoundError) as info:
        task(cfg, missing)
    assert info.value is missing


def test_cli_user_errors_print_no_traceback(nnunet, tmp_path):
    """eval_folder on a missing folder, prepare_data into an unwritable cache, check_data with
    an unwritable log folder (it writes nothing)."""
    rc, out = _cli("eval_folder", f"pred_dir={tmp_path}/nope", f"ref_dir={tmp_path}", cwd=tmp_path)
    assert rc == 1 and "Traceback" not in out and f"not a folder: {tmp_path}/nope" in out
    blocked = _unwritable()
    if blocked is None:
        pytest.skip("no unwritable folder here (/sys is writable)")
    rc, out = _cli(
        "prepare_data",
        "data=nnunet",
        f"data.root={nnunet}",
        f"data.cache_dir={blocked}/cache",
        f"paths.log_dir={tmp_path}/logs",
        cwd=tmp_path,
    )
    assert rc == 1 and "Traceback" not in out, out[-2000:]
    assert f"{blocked}: " in out and "data.cache_dir=<writable folder>" in out
    rc, out = _cli(
        "check_data",
        "data=nnunet",
        f"data.root={nnunet}",
        f"paths.log_dir={blocked}/logs",
        "data.module.num_val=1",
        "data.module.num_test=1",
        "progress=false",
        cwd=tmp_path,
    )
    assert rc == 0 and "passed: 0 error(s)" in out, out[-2000:]
    assert not any(tmp_path.glob("*.log"))


def test_hidden_macos_copies_are_not_taken_for_scans_or_predictions(tmp_path):
    from scdl.evaluation.folder import list_label_maps
    from scdl.inference.predict import list_inputs

    scan = tmp_path / "a_0000.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.int16), np.eye(4)), str(scan))
    (tmp_path / "._a_0000.nii.gz").write_bytes(b"\0" * 64)
    (tmp_path / "notes.txt").write_text("x")
    assert list_inputs(tmp_path) == [scan]
    assert list(list_label_maps(tmp_path)) == ["a_0000"]
