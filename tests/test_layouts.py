"""Ingest of the real-data layouts into the cache: readers, paper / standard / legacy protocols,
label alignment after resampling, idempotence and recovery from an interrupted run."""

from __future__ import annotations

import hashlib
import json
import os

import h5py
import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf

from real_data_fixtures import (
    AMOS_LABELS,
    ORGAN_HU,
    SPACING,
    phantom_volume,
    write_amos22,
    write_amos_npy,
    write_btcv,
    write_nnunet,
    write_synapse_h5,
)
from scdl.data import catalog, prepare
from scdl.data.cache import load_cached_case, read_index
from scdl.data.catalog import DataNotFoundError, ensure_prepared, prepare_from_config, read_raw
from scdl.data.errors import DataCheckError
from scdl.data.layouts import read_amos22, read_amos_npy, read_btcv, read_synapse_h5
from scdl.data.prepare import PreprocessProtocol, case_is_cached, prepare_dataset

AMOS_PAPER = PreprocessProtocol(
    name="paper", orientation="RAS", spacing=None, resize=(160, 160, 80), clip=(-125, 275)
)
SYNAPSE_PAPER = PreprocessProtocol(
    name="paper", spacing=(1.5, 1.5, 2.0), clip=(-125, 275), normalisation="zscore"
)


@pytest.fixture(scope="module")
def amos_root(tmp_path_factory):
    return write_amos22(tmp_path_factory.mktemp("amos")).parent


@pytest.fixture(scope="module")
def btcv_root(tmp_path_factory):
    return write_btcv(tmp_path_factory.mktemp("btcv")).parent


def data_cfg(layout: str, raw_dir, cache_dir, protocol: dict, **extra):
    return OmegaConf.create(
        {
            "name": layout,
            "layout": layout,
            "root": str(raw_dir),
            "raw_dir": str(raw_dir),
            "cache_dir": str(cache_dir),
            "auto_prepare": True,
            "reader": {},
            "protocol": protocol,
            **extra,
        }
    )


def organ_medians(image: np.ndarray, label: np.ndarray, classes) -> list[float]:
    return [float(np.median(image[label == k])) for k in classes]


# --- readers ---------------------------------------------------------------------------------


def test_amos22_reader_lists_cases_classes_and_flags_mri(amos_root, tmp_path):
    raw = read_amos22(amos_root)  # the folder holding amos22/ works as well as amos22/ itself
    assert read_amos22(amos_root / "amos22").cases == raw.cases
    ids = [c.case_id for c in raw.cases]
    assert ids == [f"amos_{i:04d}" for i in (1, 2, 3, 4, 5, 507, 540)]  # imagesTs left out
    assert all(c.label is not None for c in raw.cases)
    assert {c.case_id: c.extra["modality"] for c in raw.cases if c.extra["modality"] == "MRI"} == {
        "amos_0507": "MRI",
        "amos_0540": "MRI",
    }
    assert raw.cases[-1].extra["subset"] == "Va"
    assert raw.num_classes == 16 and raw.class_names[0] == "background"
    assert raw.class_names[2] == "right_kidney" and raw.class_names[15] == "prostate_uterus"
    with_test = read_amos22(amos_root, include_test=True)
    assert with_test.cases[-1].case_id == "amos_0601" and with_test.cases[-1].label is None
    with pytest.raises(FileNotFoundError, match="does not look like"):
        read_amos22(tmp_path)


def test_amos22_validation_without_labels_is_unlabeled_and_train_without_label_fails(tmp_path):
    root = write_amos22(tmp_path, tr=(1, 2), va=(3,), ts=())
    os.remove(root / "labelsVa" / "amos_0003.nii.gz")
    raw = read_amos22(root)
    assert [c.label is None for c in raw.cases] == [False, False, True]
    os.remove(root / "labelsTr" / "amos_0002.nii.gz")
    with pytest.raises(DataCheckError, match="amos_0002.*has no label"):
        read_amos22(root)


def test_btcv_reader_accepts_the_download_at_any_level(btcv_root):
    raw = read_btcv(btcv_root)
    assert [c.case_id for c in raw.cases] == ["0001", "0002", "0003", "0004", "0005", "0006"]
    assert raw.num_classes == 14 and raw.class_names[10] == "portal_splenic_veins"
    for level in (btcv_root / "RawData", btcv_root / "RawData" / "Training"):
        assert [c.case_id for c in read_btcv(level).cases] == [c.case_id for c in raw.cases]
    with_test = read_btcv(btcv_root, include_test=True)
    assert with_test.cases[-1].case_id == "0061" and with_test.cases[-1].label is None


def test_btcv_reader_accepts_msd_style_repackaging(tmp_path):
    src = write_btcv(tmp_path / "dl", training=(1, 2), testing=())
    msd = tmp_path / "msd"
    (msd / "imagesTr").mkdir(parents=True)
    (msd / "labelsTr").mkdir()
    for i in ("0001", "0002"):
        os.symlink(src / "Training" / "img" / f"img{i}.nii.gz", msd / "imagesTr" / f"img{i}.nii.gz")
        os.symlink(
            src / "Training" / "label" / f"label{i}.nii.gz", msd / "labelsTr" / f"label{i}.nii.gz"
        )
    assert [c.case_id for c in read_btcv(msd).cases] == ["0001", "0002"]


def test_read_raw_gives_a_clear_error_for_missing_or_wrong_folders(tmp_path, amos_root):
    cfg = data_cfg("amos", tmp_path / "nope", tmp_path / "cache", {})
    with pytest.raises(DataNotFoundError, match=r"does not exist.*data.root"):
        read_raw(cfg)
    cfg = data_cfg("btcv", amos_root, tmp_path / "cache", {})  # AMOS folder given as BTCV
    with pytest.raises(DataNotFoundError, match="data.layout=btcv"):
        read_raw(cfg)
    with pytest.raises(ValueError, match="unknown data.layout 'amos23'"):
        read_raw(data_cfg("amos23", amos_root, tmp_path, {}))


# --- paper protocols -------------------------------------------------------------------------


def test_amos_paper_protocol_shape_range_and_aligned_labels(amos_root, tmp_path):
    raw = read_amos22(amos_root)
    cache = prepare_dataset(raw, AMOS_PAPER, tmp_path, progress=False, case_ids=["amos_0507"])
    case = load_cached_case(cache, "amos_0507")
    assert case.image.shape == case.label.shape == (160, 160, 80)  # (x, y, z)
    assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
    assert case.image.min() >= 0.0 and case.image.max() <= 1.0
    assert case.meta["modality"] == "MRI"  # flag travels into the meta and the index
    assert read_index(cache)["cases"][0]["modality"] == "MRI"
    assert nib.aff2axcodes(np.asarray(case.meta["affine"])) == ("R", "A", "S")
    # every organ keeps its own intensity: labels and image are resampled consistently
    expected = [(hu + 125) / 400 for hu in ORGAN_HU[:3]]
    np.testing.assert_allclose(
        organ_medians(case.image, case.label, (1, 2, 3)), expected, atol=0.02
    )
    # and its share of the volume (nearest-neighbour labels, no class lost)
    _, raw_label = phantom_volume((24, 24, 12), 507)
    for k in (1, 2, 3):
        assert abs((case.label == k).mean() - (raw_label == k).mean()) < 0.01


def test_synapse_paper_protocol_spacing_zscore_and_aligned_labels(btcv_root, tmp_path):
    raw = read_btcv(btcv_root)
    cache = prepare_dataset(raw, SYNAPSE_PAPER, tmp_path, progress=False, case_ids=["0002"])
    case = load_cached_case(cache, "0002")
    np.testing.assert_allclose(case.meta["spacing"], [1.5, 1.5, 2.0], atol=1e-4)
    # 24 x 24 x 12 voxels of 1.2 x 1.2 x 2.5 mm -> about 19 x 19 x 15 at 1.5 x 1.5 x 2 mm
    assert all(abs(s - e) <= 1 for s, e in zip(case.image.shape, (19, 19, 15), strict=True))
    assert abs(case.image.mean()) < 1e-3 and abs(case.image.std() - 1) < 1e-2
    # clip [-125, 275] then z-score: organ intensities keep their order, air is clipped to -125
    med = organ_medians(case.image, case.label, (1, 2, 3))
    assert med == sorted(med) and min(med) > np.median(case.image[case.label == 0])
    _, raw_label = phantom_volume((24, 24, 12), 2)
    raw_mm3 = (raw_label == 2).sum() * np.prod(SPACING)
    assert abs((case.label == 2).sum() * 1.5 * 1.5 * 2.0 - raw_mm3) / raw_mm3 < 0.25


# --- legacy arrays ---------------------------------------------------------------------------


def test_legacy_amos_npy_is_transposed_windowed_and_copied(tmp_path):
    root = write_amos_npy(tmp_path / "npy")
    raw = read_amos_npy(root)
    assert [c.case_id for c in raw.cases] == ["amos_0001", "amos_0002", "amos_0507"]
    assert raw.cases[2].extra["modality"] == "MRI" and raw.num_classes == 16
    legacy = PreprocessProtocol(
        name="legacy", orientation=None, spacing=None, clip=(-125, 275), transpose="auto"
    )
    cache = prepare_dataset(raw, legacy, tmp_path / "cache", progress=False)
    case = load_cached_case(cache, "amos_0002")
    src_image = np.load(root / "amos_0002_image.npy")  # (z, y, x) = (12, 24, 20)
    src_label = np.load(root / "amos_0002_label.npy")
    assert case.image.shape == (20, 24, 12) and case.meta["transpose"] == [2, 1, 0]
    np.testing.assert_allclose(case.image, (np.clip(src_image, -125, 275) + 125).T / 400, atol=1e-6)
    np.testing.assert_array_equal(case.label, src_label.T.astype(np.uint8))
    assert case.meta["spacing_known"] is False and case.meta["original_shape"] == [12, 24, 20]
    # with the paper's 160 x 160 x 80 resize (the published arrays are already that size)
    resized = PreprocessProtocol(**{**legacy.to_dict(), "resize": (160, 160, 80)})
    prepare_dataset(raw, resized, tmp_path / "c2", progress=False, case_ids=["amos_0002"])
    big = load_cached_case(tmp_path / "c2", "amos_0002")
    assert big.label.shape == (160, 160, 80)
    # the meta affines undo transposition and resize: predictions map back onto the source array
    from scdl.inference.native_grid import labels_to_original_grid

    for cached in (case, big):
        back = labels_to_original_grid(cached.label, cached.meta)
        np.testing.assert_array_equal(back, src_label.astype(np.uint8))


def test_legacy_synapse_h5_is_copied_unchanged(tmp_path):
    root = write_synapse_h5(tmp_path / "h5")
    raw = read_synapse_h5(root)
    assert [(c.case_id, c.label is not None) for c in raw.cases] == [
        ("0001", True),
        ("0002", True),
        ("0003", False),
    ]
    legacy = PreprocessProtocol(
        name="legacy",
        orientation=None,
        spacing=None,
        clip=None,
        normalisation="none",
        voxel_spacing=(1.5, 1.5, 2.0),
    )
    cache = prepare_dataset(raw, legacy, tmp_path / "cache", progress=False)
    case = load_cached_case(cache, "0001")
    with h5py.File(root / "0001.h5") as f:
        np.testing.assert_array_equal(case.image, f["image"][()])
        np.testing.assert_array_equal(case.label, f["label"][()])
    assert case.meta["spacing"] == [1.5, 1.5, 2.0] and case.meta["spacing_known"]
    assert load_cached_case(cache, "0003").label is None


def test_array_layouts_refuse_resampling_protocols_and_bad_labels(tmp_path):
    root = write_amos_npy(tmp_path / "npy", ids=(1,))
    paper = {"name": "paper", "orientation": "RAS", "spacing": None, "resize": [160, 160, 80]}
    with pytest.raises(ValueError, match="legacy_amos"):
        prepare_from_config(
            data_cfg("amos_npy", root, tmp_path / "c", {**paper, "clip": [-125, 275]})
        )
    np.save(root / "amos_0001_label.npy", np.full((12, 24, 20), 0.5, np.float32))
    legacy = PreprocessProtocol(name="legacy", orientation=None, spacing=None)
    with pytest.raises(ValueError, match="non-integer"):
        prepare_dataset(read_amos_npy(root), legacy, tmp_path / "c", progress=False)


# --- standard protocol, hashes, idempotence, recovery ----------------------------------------


def test_standard_protocol_resolves_median_spacing_and_ct_statistics_once(tmp_path, monkeypatch):
    spacings = [(0.8, 0.8, 3.0), (1.0, 1.0, 2.0), (0.9, 0.9, 2.5)]
    root = write_nnunet(tmp_path, num_cases=3, num_test=1, spacings=spacings)
    standard = {"name": "standard", "spacing": "median", "clip": None, "normalisation": "auto"}
    cfg = data_cfg("nnunet", root, tmp_path / "cache", standard)
    cache = prepare_from_config(cfg, progress=False)
    index = read_index(cache)
    protocol = index["protocol"]
    assert protocol["spacing"] == [0.9, 0.9, 2.5] and protocol["normalisation"] == "ct"
    lo, hi, mean, std = protocol["intensity_stats"]  # foreground = organs of 60 / 120 HU
    assert lo == pytest.approx(60) and hi == pytest.approx(120) and 60 < mean < 120 and std > 0
    assert index["class_names"] == ["background", "left_lobe", "right_lobe"]
    assert [c["labeled"] for c in index["cases"]] == [True, True, True, False]  # imagesTs
    case = load_cached_case(cache, "tiny_000")
    np.testing.assert_allclose(case.meta["spacing"], [0.9, 0.9, 2.5], atol=1e-4)
    assert case.image.min() == pytest.approx((lo - mean) / std, abs=1e-4)  # clipped, z-scored
    assert (tmp_path / "cache" / "plan.json").is_file()

    # re-run: nothing recomputed (neither statistics nor cases) and the cache is trusted as is
    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(catalog, "foreground_intensity_stats", boom)
    monkeypatch.setattr(prepare, "preprocess_case", boom)
    prepare_from_config(cfg, progress=False)
    assert ensure_prepared(cfg) == cache

    mri = write_nnunet(tmp_path / "mri", num_cases=2, num_test=0, channel="MRI")
    cfg = data_cfg("nnunet", mri, tmp_path / "mri_cache", standard)
    monkeypatch.undo()
    assert (
        read_index(prepare_from_config(cfg, progress=False))["protocol"]["normalisation"]
        == "zscore"
    )


def test_new_protocol_fields_keep_old_hashes():
    p = PreprocessProtocol(name="phantom")
    old_fields = ("name", "orientation", "spacing", "resize", "clip", "normalisation")
    old = json.dumps({k: getattr(p, k) for k in old_fields}, sort_keys=True, default=list)
    assert p.hash == hashlib.sha1(old.encode()).hexdigest()[:12]  # caches written before stay valid
    assert PreprocessProtocol(name="phantom", transpose="auto").hash != p.hash
    # a config's integers and the code's floats are the same protocol
    assert (
        PreprocessProtocol(name="phantom", clip=(-125, 275), spacing=(1.5, 1.5, 2)).hash == p.hash
    )
    with pytest.raises(ValueError, match="intensity_stats"):
        PreprocessProtocol(normalisation="ct", clip=None)
    with pytest.raises(ValueError, match="permutation"):
        PreprocessProtocol(transpose=(0, 0, 1))


def test_prepare_from_config_is_idempotent_and_recovers_from_an_interrupted_run(
    amos_root, tmp_path, monkeypatch
):
    protocol = {"name": "paper", "orientation": "RAS", "spacing": None, "resize": [24, 24, 12]}
    cfg = data_cfg("amos", amos_root, tmp_path / "cache", {**protocol, "clip": [-125, 275]})
    real = prepare.preprocess_case
    done = []

    def dies_on_third(case, p):
        if len(done) == 2:
            raise KeyboardInterrupt  # the run is killed while preprocessing the third case
        done.append(case.case_id)
        return real(case, p)

    monkeypatch.setattr(prepare, "preprocess_case", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        prepare_from_config(cfg, progress=False)
    cache = tmp_path / "cache"
    # half-written third case: arrays and a stale tmp file, but no meta -> not trusted
    (cache / "amos_0003_image.npy").write_bytes(b"partial")
    (cache / ".tmp-999999999-amos_0003_label.npy").write_bytes(b"partial")
    h = PreprocessProtocol(**catalog._protocol_spec(cfg.protocol)).hash
    assert case_is_cached(cache, "amos_0001", h) and not case_is_cached(cache, "amos_0003", h)
    with pytest.raises(DataNotFoundError, match="no prepared cache"):  # no index yet
        ensure_prepared(OmegaConf.merge(cfg, {"auto_prepare": False}))
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.glob("amos_000[12]*")}

    monkeypatch.setattr(prepare, "preprocess_case", real)
    assert ensure_prepared(cfg) == cache  # auto_prepare resumes
    assert stamps == {p.name: p.stat().st_mtime_ns for p in cache.glob("amos_000[12]*")}
    assert not list(cache.glob(".tmp-*"))
    index = read_index(cache)
    assert len(index["cases"]) == 7 and index["layout"] == "amos"
    assert load_cached_case(cache, "amos_0003").image.shape == (24, 24, 12)
    assert AMOS_LABELS["15"] == "prostate/uterus" and index["class_names"][15] == "prostate_uterus"
