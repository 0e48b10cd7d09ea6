"""eval.py / predict.py: a tiny run trained once per module, evaluated in both protocols and used to
segment a raw phantom scan; the inversion of the preprocessing on synthetic volumes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import compose_cfg, tiny_train_overrides
from scdl.data.layouts import RawCase
from scdl.data.prepare import PreprocessProtocol, preprocess_case
from scdl.inference.checkpoint import resolve_classes
from scdl.inference.native_grid import labels_to_original_grid
from scdl.inference.predict import list_inputs, nifti_stem
from scdl.runs import find_run_dir, resolve_checkpoint

NUM_CLASSES = 14  # phantom: background + 13 Synapse organs


@pytest.fixture(scope="module")
def trained_run(phantom_cache, tmp_path_factory) -> dict:
    """A 4-step mean-teacher run on the tiny phantom, laid out as ``src/train.py`` leaves it
    (``.hydra/config.yaml`` written by hand: Hydra's job runner is not involved here)."""
    from scdl.training import train

    tmp = tmp_path_factory.mktemp("eval_run")
    run_dir = tmp / "run"
    overrides = [
        *tiny_train_overrides(phantom_cache, tmp),
        "data.module.iters_per_epoch=4",  # one validation in the 4 steps
    ]
    cfg = compose_cfg(overrides, output_dir=run_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    metrics = train(cfg)
    return {"run_dir": run_dir, "metrics": metrics, "tmp": tmp}


def _eval_cfg(run: dict, *overrides: str):
    return compose_cfg(
        [
            f"ckpt_path={run['metrics']['best_ckpt']}",
            f"paths.log_dir={run['tmp']}/logs",
            "logger=csv",
            "progress=false",
            *overrides,
        ],
        config_name="eval",
    )


def _check_summary_files(summary: dict, out_dir: Path, protocol: str, n_cases: int) -> None:
    names = summary["classes"]
    assert len(names) == NUM_CLASSES - 1 and names[0] == "spleen"
    assert summary["protocol"] == protocol and summary["num_cases"] == n_cases
    on_disk = json.loads((out_dir / "metrics.json").read_text())
    assert on_disk["classes"] == names and len(on_disk["per_case"]) == n_cases
    rows = list(csv.DictReader((out_dir / "metrics.csv").open()))
    assert [r["class"] for r in rows] == [*names, "mean"]
    per_case = list(csv.DictReader((out_dir / "metrics_per_case.csv").open()))
    assert len(per_case) == n_cases * len(names)
    assert {r["case"] for r in per_case} == {c["case"] for c in summary["per_case"]}


def _check_ranges(summary: dict, max_distance: float) -> None:
    for row in summary["per_case"]:
        for values in row["values"].values():
            for metric in ("dice", "nsd"):
                assert values[metric] is None or 0.0 <= values[metric] <= 1.0
            for metric in ("asd", "hd95"):
                assert values[metric] is None or 0.0 <= values[metric] <= max_distance + 1e-6


def test_eval_standard_matches_training_test_dice(trained_run):
    from scdl.evaluation.evaluate import evaluate

    run_dir = trained_run["run_dir"]
    summary = evaluate(_eval_cfg(trained_run, "protocol=standard", "split=test"))
    out_dir = run_dir / "eval" / "test_standard"
    assert Path(summary["files"]["json"]) == out_dir / "metrics.json"
    _check_summary_files(summary, out_dir, "standard", n_cases=1)
    shape_mm = np.array([96, 96, 64]) * np.array([1.5, 1.5, 2.0])
    _check_ranges(summary, float(np.sqrt((shape_mm**2).sum())) * 1.2)
    # same weights, split, window and Dice rule (every organ is present in every phantom case, so
    # the standard rules equal the training test's 'skip' rule)
    # one results schema: the training test wrote test_metrics.json as eval.py writes metrics.json
    train_test = json.loads((run_dir / "test_metrics.json").read_text())
    assert train_test["classes"] == summary["classes"]
    assert [c["case"] for c in summary["per_case"]] == [c["case"] for c in train_test["per_case"]]
    assert summary["overall"]["dice"]["mean"] == pytest.approx(
        trained_run["metrics"]["test/dice"], abs=1e-6
    )
    per_class = [summary["per_class"][n]["dice"]["mean"] for n in summary["classes"]]
    assert per_class == pytest.approx(
        [train_test["per_class"][n]["dice"]["mean"] for n in summary["classes"]], abs=1e-6
    )
    # the trained sliding window (debug=fast: 32^3, no overlap, 4 windows per batch) is reused
    assert summary["inference"] == {
        "roi_size": [32, 32, 32],
        "overlap": 0.0,
        "mode": "gaussian",
        "sw_batch_size": 4,
        "average": "probs",
    }


def test_eval_paper_protocol_with_predictions(trained_run):
    from scdl.evaluation.evaluate import evaluate

    run_dir = trained_run["run_dir"]
    summary = evaluate(
        _eval_cfg(
            trained_run,
            f"ckpt_path={run_dir}",  # a run folder resolves to its best checkpoint
            "protocol=paper",
            "save_predictions=true",
            "inference.overlap=0",
            "inference.mode=constant",
        )
    )
    out_dir = run_dir / "eval" / "test_paper"
    _check_summary_files(summary, out_dir, "paper", n_cases=1)
    _check_ranges(summary, max_distance=math.dist((0, 0, 0), (160, 160, 80)))
    assert summary["metric_settings"]["target_shape"] == [160, 160, 80]
    assert summary["inference"]["overlap"] == 0.0 and summary["inference"]["mode"] == "constant"
    # the prediction lands on the grid of the source scan
    case = summary["per_case"][0]["case"]
    meta = json.loads(
        (
            Path(OmegaConf.load(run_dir / ".hydra/config.yaml").data.cache_dir) / f"{case}.json"
        ).read_text()
    )
    pred = nib.load(out_dir / "predictions" / f"{case}.nii.gz")
    src = nib.load(meta["source_image"])
    assert pred.shape == src.shape and np.allclose(pred.affine, src.affine, atol=1e-5)
    data = np.asarray(pred.dataobj)
    assert data.dtype == np.uint8 and data.max() < NUM_CLASSES


def test_predict_writes_label_maps_on_the_input_grid(trained_run, phantom_raw, tmp_path):
    from scdl.inference.predict import predict

    image = sorted((phantom_raw / "imagesTr").glob("*_0000.nii.gz"))[0]
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / image.name).symlink_to(image)
    cfg = compose_cfg(
        [
            f"ckpt_path={trained_run['metrics']['best_ckpt']}",
            f"input={folder}",
            f"output={tmp_path / 'pred'}",
            f"paths.log_dir={tmp_path}/logs",
            "progress=false",
            "inference.overlap=0",
        ],
        config_name="predict",
    )
    written = predict(cfg)
    assert written == [tmp_path / "pred" / f"{nifti_stem(image)}.nii.gz"]
    src, out = nib.load(image), nib.load(written[0])
    assert out.shape == src.shape and np.allclose(out.affine, src.affine, atol=1e-6)
    data = np.asarray(out.dataobj)
    assert data.dtype == np.uint8 and 0 <= data.min() and data.max() < NUM_CLASSES
    assert out.header.get_sform(coded=True)[1] == src.header.get_sform(coded=True)[1]


def test_checkpoint_helpers(trained_run, tmp_path):
    run_dir = trained_run["run_dir"]
    best = Path(trained_run["metrics"]["best_ckpt"])
    assert resolve_checkpoint(run_dir) == best.resolve()
    assert find_run_dir(best) == run_dir.resolve()
    stray = tmp_path / "x.ckpt"
    stray.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        find_run_dir(stray)
    # the checkpoint's classes must match the data set's
    (tmp_path / "index.json").write_text(json.dumps({"class_names": ["bg", "a", "b"]}))
    cfg = OmegaConf.create({"data": {"cache_dir": str(tmp_path), "num_classes": None}})
    with pytest.raises(ValueError, match="3"):
        resolve_classes(cfg, {"num_classes": NUM_CLASSES})
    assert resolve_classes(cfg, {}) == (3, ["bg", "a", "b"])


def test_list_inputs_and_names(tmp_path):
    a = tmp_path / "case_a_0000.nii.gz"
    b = tmp_path / "case_b.nii"
    for p in (a, b, tmp_path / "notes.txt"):
        p.write_bytes(b"")
    assert list_inputs(tmp_path) == [a, b]
    assert list_inputs(a) == [a]
    assert [nifti_stem(p) for p in (a, b)] == ["case_a", "case_b"]
    with pytest.raises(FileNotFoundError):
        list_inputs(tmp_path / "missing")


# ----------------------------------------------------------------------------------------------
# Inversion of the preprocessing on a synthetic case
# ----------------------------------------------------------------------------------------------


def _ellipsoid_labels(shape: tuple[int, ...], affine: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Labels of two world-space ellipsoids (mm) sampled at the voxel centres of a grid."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    rel = ijk @ affine[:3, :3].T + affine[:3, 3] - center
    label = np.zeros(shape, np.uint8)
    label[((rel / [18.0, 14.0, 16.0]) ** 2).sum(-1) <= 1] = 1
    label[(((rel - [8.0, 4.0, 0.0]) / [9.0, 7.0, 11.0]) ** 2).sum(-1) <= 1] = 2
    return label


def _synthetic_case(
    tmp_path: Path, rotate: bool
) -> tuple[RawCase, np.ndarray, np.ndarray, np.ndarray]:
    """Two ellipsoids on an anisotropic LPS-stored grid (optionally oblique); image = 100 x label.

    Returns the raw case, its label, its affine and the world centre of the ellipsoids."""
    shape = (60, 52, 18)
    spacing = np.array([0.9, 1.1, 3.0])
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    if rotate:  # 10 degrees about z: an oblique acquisition
        t = np.deg2rad(10.0)
        rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
        affine[:3, :3] = rot @ affine[:3, :3]
    affine[:3, 3] = -affine[:3, :3] @ (np.array(shape) / 2) + np.array([5.0, -3.0, 12.0])
    center = affine[:3, :3] @ (np.array(shape) / 2) + affine[:3, 3]
    label = _ellipsoid_labels(shape, affine, center)
    image = (label.astype(np.int16) * 100) - 50
    img_path, lab_path = tmp_path / "syn_0000.nii.gz", tmp_path / "syn.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), img_path)
    nib.save(nib.Nifti1Image(label, affine), lab_path)
    return RawCase("syn", img_path, lab_path), label, affine, center


def _dice(a: np.ndarray, b: np.ndarray, c: int) -> float:
    p, g = a == c, b == c
    return 2.0 * np.logical_and(p, g).sum() / (p.sum() + g.sum())


@pytest.mark.parametrize(
    ("spacing", "resize", "rotate", "min_dice"),
    [
        (None, None, False, 1.0),  # reorientation only: a permutation/flip, exactly invertible
        ((1.5, 1.5, 2.0), None, False, 0.9),
        ((1.5, 1.5, 2.0), None, True, 0.9),
        # labels resized with nearest-exact: no half-voxel shift (legacy nearest floors indices)
        ((1.5, 1.5, 2.0), (40, 40, 24), False, 0.9),
    ],
)
def test_preprocessed_labels_return_to_the_original_grid(
    tmp_path, spacing, resize, rotate, min_dice
):
    """A label volume pushed through the MONAI preprocessing and back."""
    case, label, affine, _ = _synthetic_case(tmp_path, rotate)
    protocol = PreprocessProtocol(name="t", spacing=spacing, resize=resize, clip=(-125.0, 275.0))
    _, cached, meta = preprocess_case(case, protocol)
    back = labels_to_original_grid(cached, meta)
    assert back.shape == label.shape and back.dtype == cached.dtype
    assert np.allclose(meta["original_affine"], affine, atol=1e-5)
    for c in (1, 2):
        assert _dice(back, label, c) >= min_dice - 1e-12, c
    if min_dice == 1.0:
        np.testing.assert_array_equal(back, label)


@pytest.mark.parametrize(("resize", "rotate"), [(None, True), ((40, 40, 24), False)])
def test_inversion_of_exact_cache_labels(tmp_path, resize, rotate):
    """Labels drawn exactly on the cache grid (from the cache affine) map back onto the source grid:
    checks the inversion alone, independent of how the preprocessing resamples labels."""
    case, label, affine, center = _synthetic_case(tmp_path, rotate)
    protocol = PreprocessProtocol(
        name="t", spacing=(1.5, 1.5, 2.0), resize=resize, clip=(-125.0, 275.0)
    )
    _, _, meta = preprocess_case(case, protocol)
    cached = _ellipsoid_labels(tuple(meta["shape"]), np.asarray(meta["affine"]), center)
    back = labels_to_original_grid(cached, meta)
    for c in (1, 2):
        assert _dice(back, label, c) >= 0.9, c


def test_a_lone_checkpoint_evaluates_and_predicts_from_another_folder(
    trained_run, phantom_raw, tmp_path
):
    """A checkpoint copied out of its run folder carries its config, classes and split."""
    import shutil

    from scdl.evaluation.evaluate import evaluate
    from scdl.inference.predict import predict

    lone = tmp_path / "elsewhere" / "model.ckpt"
    lone.parent.mkdir()
    shutil.copy(trained_run["metrics"]["best_ckpt"], lone)
    summary = evaluate(
        compose_cfg(
            [
                f"ckpt_path={lone}",
                f"paths.log_dir={tmp_path}/logs",
                "logger=csv",
                "progress=false",
                "protocol=standard",
                "split=test",
            ],
            config_name="eval",
        )
    )
    assert summary["overall"]["dice"]["mean"] == pytest.approx(
        trained_run["metrics"]["test/dice"], abs=1e-6
    )
    assert (lone.parent / "split.json").is_file()  # the embedded split, written beside it
    image = sorted((phantom_raw / "imagesTr").glob("*_0000.nii.gz"))[0]
    written = predict(
        compose_cfg(
            [
                f"ckpt_path={lone}",
                f"input={image}",
                f"output={tmp_path / 'pred'}",
                f"paths.log_dir={tmp_path}/logs",
                "progress=false",
                "inference.overlap=0",
            ],
            config_name="predict",
        )
    )
    assert nib.load(written[0]).shape == nib.load(image).shape


def test_eval_of_a_run_trained_without_wandb_opens_no_wandb_run(trained_run, monkeypatch, tmp_path):
    """eval.py's default logger is W&B, but a run trained with logger=csv gets no W&B eval run."""
    from scdl.evaluation.evaluate import evaluate

    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "eval_out"
    cfg = compose_cfg(
        [
            f"ckpt_path={trained_run['metrics']['best_ckpt']}",
            f"paths.log_dir={trained_run['tmp']}/logs",
            "logger=wandb",
            "progress=false",
            "max_cases=1",
            f"output_dir={out}",
        ],
        config_name="eval",
    )
    summary = evaluate(cfg)
    assert "wandb" not in summary
    assert not list(out.rglob("offline-run-*")) and not (out / "wandb").exists()
