"""Data checks (``scdl.data.checks``, ``src/check_data.py``): one injected fault per test, each
asserting that the message names the case, the file and (where relevant) the key; preprocessing
writes nothing when a case is bad; the cache notices a changed raw file."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import compose_cfg
from real_data_fixtures import SPACING, write_nnunet, write_split
from scdl.data.cache import load_cached_case, read_index
from scdl.data.catalog import check_from_config
from scdl.data.checks import check_cases
from scdl.data.errors import DataCheckError
from scdl.data.layouts import read_nnunet_raw
from scdl.data.prepare import PreprocessProtocol, prepare_dataset

ROOT = Path(__file__).resolve().parents[1]
AFFINE = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
# coarse: tiny arrays, fast MONAI resampling
PROTOCOL = PreprocessProtocol(name="t", spacing=(2.4, 2.4, 5.0))
ZSCORE = PreprocessProtocol(name="z", spacing=(2.4, 2.4, 5.0), clip=None, normalisation="zscore")


def dataset(tmp_path: Path, channel: str = "CT", num_cases: int = 4) -> Path:
    return write_nnunet(tmp_path, num_cases=num_cases, num_test=0, channel=channel)


def image_path(root: Path, case: str) -> Path:
    return root / "imagesTr" / f"{case}_0000.nii.gz"


def label_path(root: Path, case: str) -> Path:
    return root / "labelsTr" / f"{case}.nii.gz"


def save(array: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> None:
    nib.save(nib.Nifti1Image(array, affine), str(path))


def assert_refused(root: Path, tmp_path: Path, *needles: str, **kw) -> str:
    """prepare_dataset raises DataCheckError containing ``needles`` and writes no case."""
    cache = tmp_path / "cache"
    with pytest.raises(DataCheckError) as e:
        prepare_dataset(read_nnunet_raw(root), kw.pop("protocol", PROTOCOL), cache, False, **kw)
    message = str(e.value)
    for needle in needles:
        assert needle in message, (needle, message)
    assert not list(cache.glob("*.npy")) and not (cache / "index.json").exists()
    return message


@pytest.mark.parametrize("keep", [0.5, 0.95])  # header lost / only the end of the data lost
def test_truncated_nifti(tmp_path, keep):
    root = dataset(tmp_path)
    path = label_path(root, "tiny_001")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    assert_refused(root, tmp_path, "tiny_001", str(path), "truncated: the gzip stream ends after")


def test_label_shape_mismatch(tmp_path):
    root = dataset(tmp_path)
    save(np.zeros((20, 24, 12), np.uint8), label_path(root, "tiny_002"))
    message = assert_refused(root, tmp_path, "tiny_002", str(label_path(root, "tiny_002")))
    assert "shape (20, 24, 12) vs image (24, 24, 12)" in message


def test_label_with_a_flipped_axis(tmp_path):
    root = dataset(tmp_path)
    path = label_path(root, "tiny_000")
    lab = nib.load(path)
    flipped = AFFINE.copy()
    flipped[0, 0] *= -1  # x: L -> R in the header only
    save(np.asarray(lab.dataobj), path, flipped)
    assert_refused(root, tmp_path, "tiny_000", str(path), "orientation RPS vs image LPS")


def test_label_with_twice_the_spacing(tmp_path):
    root = dataset(tmp_path)
    path = label_path(root, "tiny_003")
    coarse = np.asarray(nib.load(path).dataobj)[::2, ::2, ::2]
    save(coarse, path, np.diag([-2 * SPACING[0], -2 * SPACING[1], 2 * SPACING[2], 1.0]))
    assert_refused(
        root, tmp_path, "tiny_003", str(path), "shape (12, 12, 6)", "spacing (2.4, 2.4, 5) vs image"
    )


def test_label_value_outside_the_class_map(tmp_path):
    root = dataset(tmp_path)
    path = label_path(root, "tiny_001")
    label = np.asarray(nib.load(path).dataobj).copy()
    label[0, 0, 0] = 7
    save(label, path)
    assert_refused(
        root, tmp_path, "tiny_001", str(path), "label value(s) 7 outside the class map 0..2"
    )


def float_image(root: Path, case: str, bad: dict) -> Path:
    path = image_path(root, case)
    image = np.asarray(nib.load(path).dataobj).astype(np.float32)
    for index, value in bad.items():
        image[index] = value
    save(image, path)
    return path


def test_nan_in_a_zscored_image_error_and_repair(tmp_path, caplog):
    root = dataset(tmp_path, channel="MR")
    path = float_image(root, "tiny_002", {(5, 5, 5): np.nan})
    assert_refused(
        root, tmp_path, "tiny_002", str(path), "1 non-finite voxel(s) (NaN: 1, Inf: 0)",
        "data.nonfinite=repair", protocol=ZSCORE,
    )  # fmt: skip
    # the guard in preprocessing itself, with the checks off
    with pytest.raises(DataCheckError, match="tiny_002"):
        prepare_dataset(read_nnunet_raw(root), ZSCORE, tmp_path / "c2", False, check=False)
    with caplog.at_level(logging.WARNING):
        cache = prepare_dataset(
            read_nnunet_raw(root), ZSCORE, tmp_path / "c3", False, nonfinite="repair"
        )
    assert "tiny_002" in caplog.text and "replaced" in caplog.text
    image = load_cached_case(cache, "tiny_002").image
    assert np.isfinite(image).all() and abs(image.mean()) < 1e-3


def test_nan_and_inf_in_a_ct_image(tmp_path):
    root = dataset(tmp_path)
    path = float_image(root, "tiny_000", {(3, 3, 3): np.nan, (4, 4, 4): np.inf})
    assert_refused(root, tmp_path, "tiny_000", str(path), "(NaN: 1, Inf: 1)")


def test_malformed_and_incomplete_dataset_json(tmp_path):
    root = dataset(tmp_path)
    path = root / "dataset.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps(meta)[:-5])
    with pytest.raises(DataCheckError, match="not valid JSON") as e:
        read_nnunet_raw(root)
    assert str(path) in str(e.value)
    del meta["labels"]
    path.write_text(json.dumps(meta))
    with pytest.raises(DataCheckError, match="has no 'labels' key") as e:
        read_nnunet_raw(root)
    assert str(path) in str(e.value)


def copy_case(root: Path, src: str, dst: str) -> None:
    shutil.copy(image_path(root, src), image_path(root, dst))
    shutil.copy(label_path(root, src), label_path(root, dst))


def test_empty_labeled_case_and_duplicate_across_split_parts_refused_by_the_datamodule(tmp_path):
    from scdl.data.datamodule import SemiSupervisedDataModule

    root = dataset(tmp_path, num_cases=5)
    save(np.zeros((24, 24, 12), np.uint8), label_path(root, "tiny_001"))
    copy_case(root, "tiny_000", "tiny_009")  # the same scan under another id
    raw = read_nnunet_raw(root)
    report = check_cases(raw, progress=False)
    assert report.duplicates == [["tiny_000", "tiny_009"]] and not report.errors
    assert {p.check for p in report.warnings} == {"empty label", "duplicate"}
    cache = prepare_dataset(raw, PROTOCOL, tmp_path / "cache", False)
    index = read_index(cache)
    assert index["duplicates"] == [["tiny_000", "tiny_009"]]
    split = write_split(
        tmp_path / "split.json", ["tiny_001", "tiny_000"], ["tiny_002"], ["tiny_003"], ["tiny_009"]
    )
    dm = SemiSupervisedDataModule(str(cache), split_file=str(split))
    with pytest.raises(DataCheckError) as e:
        dm.prepare_split()
    message = str(e.value)
    assert "tiny_001" in message and "all-background label in the 'labeled' part" in message
    assert "'tiny_000' (labeled), 'tiny_009' (test)" in message
    dm = SemiSupervisedDataModule(str(cache), split_file=str(split), check=False)
    assert dm.prepare_split().test == ["tiny_009"]


def check_cfg(root: Path, tmp_path: Path, *overrides: str):
    return compose_cfg(
        [
            "data=nnunet",
            f"data.root={root}",
            f"data.cache_dir={tmp_path}/cache",
            "data/protocol=standard",
            "data.module.num_val=1",
            "data.module.num_test=1",
            "progress=false",
            *overrides,
        ],
        config_name="check_data",
    )


def test_check_data_reports_split_ids_without_files_and_exits_nonzero(tmp_path, capsys):
    from scdl.commands import check_data

    root = dataset(tmp_path)
    assert check_data.run(check_cfg(root, tmp_path)) == 0  # clean
    split = write_split(tmp_path / "s.json", ["tiny_000"], ["tiny_042"], ["tiny_001"], ["tiny_002"])
    cfg = check_cfg(root, tmp_path, f"data.module.split_file={split}")
    report = check_from_config(cfg.data, progress=False)
    [problem] = report.errors
    assert str(problem) == (
        f"tiny_042: {split}: 'unlabeled' lists case 'tiny_042', which has no files in the data set."
        " Fix: add the case's files to the raw data set or remove the id from the split (is "
        "data.root the right data set?)"
    )
    assert check_data.run(cfg) == 1
    out = capsys.readouterr().out
    assert "tiny_042" in out and "split" in out and "FAILED: 1 error(s)" in out
    # the command line: status 1, the message on stdout
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "src" / "check_data.py"), "data=nnunet", f"data.root={root}",
         f"data.module.split_file={split}", "progress=false", f"paths.log_dir={tmp_path}/logs"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "'unlabeled' lists case 'tiny_042'" in proc.stdout


def test_changed_raw_label_is_preprocessed_again(tmp_path):
    root = dataset(tmp_path)
    cache = prepare_dataset(read_nnunet_raw(root), PROTOCOL, tmp_path / "cache", False)
    before = load_cached_case(cache, "tiny_001").label.copy()
    stamp = (cache / "tiny_000_image.npy").stat().st_mtime_ns
    # the user fixes the label: organ 1 relabelled 2
    path = label_path(root, "tiny_001")
    fixed = np.asarray(nib.load(path).dataobj).copy()
    fixed[fixed == 1] = 2
    save(fixed, path)
    # a copy that changes only the mtime of another file is recognised by its hash
    shutil.copy(image_path(root, "tiny_000"), tmp_path / "x.nii.gz")
    shutil.copy(tmp_path / "x.nii.gz", image_path(root, "tiny_000"))
    prepare_dataset(read_nnunet_raw(root), PROTOCOL, cache, False)
    after = load_cached_case(cache, "tiny_001").label
    assert (
        (before == 1).any() and not (after == 1).any() and (after == 2).sum() > (before == 2).sum()
    )
    assert (cache / "tiny_000_image.npy").stat().st_mtime_ns == stamp  # not redone


def test_auto_prepare_in_training_notices_a_changed_raw_label(tmp_path):
    from scdl.data.catalog import ensure_prepared

    root = dataset(tmp_path)
    cfg = check_cfg(root, tmp_path)
    cache = ensure_prepared(cfg.data)
    path = label_path(root, "tiny_002")
    fixed = np.asarray(nib.load(path).dataobj).copy()
    fixed[fixed == 1] = 0
    save(fixed, path)
    ensure_prepared(cfg.data)
    assert not (load_cached_case(cache, "tiny_002").label == 1).any()


def test_gzip_trailer_check_accepts_multi_member_files(tmp_path):
    root = dataset(tmp_path)
    path = image_path(root, "tiny_000")
    data = gzip.decompress(path.read_bytes())
    half = len(data) // 2
    path.write_bytes(gzip.compress(data[:half]) + gzip.compress(data[half:]))
    report = check_cases(read_nnunet_raw(root), progress=False)
    assert not report.problems
