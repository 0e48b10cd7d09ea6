"""W&B dashboards: run names / groups / tags, best-value summaries, per-class Dice table and bar
chart, segmentation overlays and the SCDL proxy figure, all in the offline run that ``wandb sync``
uploads (checked with the test-only log reader ``tests/wandb_log.py``); and the matplotlib
rendering of those panels from the run folder's plain files (``scdl.reporting.dashboard``)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT, compose_cfg, tiny_train_overrides
from scdl.callbacks.wandb_media import OverlaySlice, choose_overlay_slices
from scdl.loggers import merge_tags
from scdl.reporting.dashboard import dashboard_sources, main
from scdl.runs import load_overlays, save_overlays
from scdl.utils.display import slice_class_counts
from wandb_log import iter_wandb_records, read_wandb_run

ROOT = REPO_ROOT


# --- fast -----------------------------------------------------------------------------------------


def _label() -> np.ndarray:
    """(X, Y, Z) = (6, 6, 8): class 1 large everywhere, class 2 mid-sized (most at z=3), class 3
    tiny (most at z=6)."""
    label = np.zeros((6, 6, 8), dtype=np.int64)
    label[:3] = 1  # 18 voxels in every slice
    label[3:6, 0:2, 2:5] = 2  # 6 voxels in z = 2, 3, 4
    label[3:6, 2, 3] = 2  # z = 3: 9 voxels
    label[5, 5, 6] = label[4, 5, 6] = label[3, 5, 6] = 3  # z = 6: 3 voxels
    label[5, 4, 1] = 3  # z = 1: 1 voxel
    return label


def test_slice_class_counts():
    counts = slice_class_counts(_label(), num_classes=4)
    assert counts.shape == (8, 4)
    assert counts[:, 1].tolist() == [18] * 8
    assert counts[:, 2].tolist() == [0, 0, 6, 9, 6, 0, 0, 0]
    assert counts[:, 3].tolist() == [0, 1, 0, 0, 0, 0, 3, 0]
    assert counts.sum() == _label().size


def test_overlay_slices_show_the_smallest_classes():
    label = _label()
    # smallest class first, each at the slice holding most of it
    assert choose_overlay_slices([label], num_slices=2) == [
        OverlaySlice(0, 6, 3),
        OverlaySlice(0, 3, 2),
    ]
    # class 1 (18 voxels in every slice) is already shown by z=6: no third slice for it ...
    assert choose_overlay_slices([label], num_slices=5) == [
        OverlaySlice(0, 6, 3),
        OverlaySlice(0, 3, 2),
    ]
    # ... unless only a chosen best slice counts as showing a class: ties -> lowest slice
    assert choose_overlay_slices([label], num_slices=5, shown_fraction=1.01)[-1] == OverlaySlice(
        0, 0, 1
    )
    # the ranking may come from other counts (e.g. every validation label)
    ranked = choose_overlay_slices([label], num_slices=2, class_counts=np.array([0, 1, 100, 50]))
    assert ranked == [OverlaySlice(0, 0, 1), OverlaySlice(0, 6, 3)]
    assert choose_overlay_slices([label], num_slices=0) == []
    assert choose_overlay_slices([np.zeros((4, 4, 4), dtype=np.int64)]) == []  # background only


def test_overlay_slices_across_volumes_and_shared_slices():
    first = _label()
    second = np.zeros_like(first)
    second[0:5, 0, 2] = 3  # 5 voxels of class 3 in one slice: more than the first volume's 3
    second[0:4, 1, 2] = 2  # class 2 here too, but its best slice stays in the first volume (9)
    assert choose_overlay_slices([first, second], num_slices=2) == [
        OverlaySlice(1, 2, 3),
        OverlaySlice(0, 3, 2),
    ]
    # a class already shown by a chosen slice is skipped
    shared = np.zeros((4, 4, 5), dtype=np.int64)
    shared[0, 0, 2] = 3
    shared[1:3, 0, 2] = 2
    shared[1:4, 1:4, 2] = 1
    shared[0:2, 1:3, 4] = 1
    assert choose_overlay_slices([shared], num_slices=3) == [OverlaySlice(0, 2, 3)]
    # another slice axis
    assert choose_overlay_slices([first], num_slices=1, axis=0) == [OverlaySlice(0, 5, 3)]


def test_merge_tags():
    assert merge_tags(
        ["phantom", "scdl"], ["phantom_scdl", "mean_teacher", "none", None, "scdl"]
    ) == [
        "phantom",
        "scdl",
        "phantom_scdl",
        "mean_teacher",
    ]
    assert merge_tags(None, ["x" * 80]) == ["x" * 64]


def test_single_run_name_group_and_tags(tmp_path):
    cfg = compose_cfg(
        ["experiment=phantom_scdl", "logger=wandb", "run_name=r1"], output_dir=tmp_path / "run"
    )
    w = cfg.logger.wandb
    assert w.name == "phantom_scdl/full/r1" and w.group == "phantom_scdl"
    assert list(w.extra_tags) == ["phantom_scdl", "mean_teacher", "full"]
    assert "val/dice" in w.summary_max and w._target_ == "scdl.loggers.WandbLogger"


def _write_log(path: Path, records: list[bytes]) -> None:
    """A ``.wandb``-style LevelDB log (zero CRCs; the reader does not check them)."""
    block, out = 32768, bytearray(b":W&B\xe1\xbe\x00")
    for data in records:
        first = True
        while True:
            left = block - len(out) % block
            if left < 7:
                out += b"\x00" * left
                continue
            chunk, data = data[: left - 7], data[left - 7 :]
            kind = (1 if not data else 2) if first else (4 if not data else 3)
            out += b"\x00" * 4 + len(chunk).to_bytes(2, "little") + bytes([kind]) + chunk
            first = False
            if not data:
                break
    path.write_bytes(bytes(out))


def test_wandb_log_reader_joins_records_across_blocks(tmp_path):
    records = [b"a" * 10, bytes(range(256)) * 300, b"b" * 32740, b"", b"c" * 5]
    _write_log(tmp_path / "run-x.wandb", records)
    assert list(iter_wandb_records(tmp_path / "run-x.wandb")) == records
    (tmp_path / "other.wandb").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a W&B"):
        list(iter_wandb_records(tmp_path / "other.wandb"))


# --- slow: a real 2-job multirun, offline W&B -----------------------------------------------------


def _csv_series(run_dir: Path, key: str) -> list[tuple[int, float]]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


@pytest.mark.slow
def test_multirun_offline_wandb_panels_and_dashboard(phantom_cache, tmp_path):
    overrides = [o for o in tiny_train_overrides(phantom_cache, tmp_path) if o != "logger=csv"]
    # debug=fast: 4 steps, 2 iterations per epoch -> validation at steps 2 and 4
    cmd = [
        sys.executable,
        str(ROOT / "src" / "train.py"),
        "-m",
        "experiment=phantom_scdl",
        *overrides,
        "seed=1,2",
        "sweep_name=t",
        "logger=wandb",
        "test=false",
    ]
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        # keep W&B's staging / cache / settings inside the test folder
        "WANDB_DIR": str(tmp_path / "wandb_home"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_home" / "cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb_home" / "data"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_home" / "config"),
    }
    env.pop("WANDB_API_KEY", None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]

    sweep = tmp_path / "logs" / "debug" / "multiruns" / "t"
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0_phantom_scdl_full_seed1", "1_phantom_scdl_full_seed2"]
    for seed, job in zip((1, 2), jobs, strict=True):
        assert (job / "csv" / "metrics.csv").is_file()
        offline = [d for d in (job / "wandb").glob("offline-run-*") if d.is_dir()]
        assert len(offline) == 1, offline
        run = read_wandb_run(job)

        # name from the job's overrides, group = sweep, tags = experiment + framework + ablation
        assert f"seed={seed}" in run.name and "experiment=phantom_scdl" in run.name
        assert run.group == "t" and run.job_type == "full"
        assert {"phantom", "mean_teacher", "scdl", "phantom_scdl", "full"} <= set(run.tags)
        # the resolved config
        assert run.config["experiment_name"] == "phantom_scdl" and run.config["seed"] == seed
        assert run.config["sweep_name"] == "t" and run.config["data"]["num_classes"] == 14

        # summary val/dice = best, not last; best step recorded
        val = _csv_series(job, "val/dice")
        assert len(val) == 2  # validated at steps 2 and 4
        best_step, best = max(val, key=lambda sv: sv[1])
        assert run.metrics["val/dice"]["summary"] == ["max"]
        assert run.metrics["val/dice_left_adrenal_gland"]["summary"] == ["max"]
        assert run.summary["val/dice"]["max"] == pytest.approx(best, rel=1e-6)
        assert run.summary["val/best_step"] == best_step
        liver = max(v for _, v in _csv_series(job, "val/dice_liver"))
        assert run.summary["val/dice_liver"]["max"] == pytest.approx(liver, rel=1e-6)

        keys = set().union(*run.history)
        assert {"val/dice", "val/dice_liver", "train/loss", "trainer/global_step"} <= keys
        assert {"val/overlays", "val/per_class_dice", "val/per_class_dice_chart_table"} <= keys
        assert "scdl/proxies" in keys

        # per-class table (at the best step) + its bar chart
        row = run.latest("val/per_class_dice")
        assert row["trainer/global_step"] == best_step
        table_path = run.media_path(row, row["val/per_class_dice"]["path"])
        table = json.loads(table_path.read_text())
        assert table["columns"] == ["class", "dice"] and len(table["data"]) == 13
        chart = run.config["_wandb"]["visualize"]["val/per_class_dice_chart"]
        assert chart["panel_config"]["panelDefId"] == "wandb/bar/v0"

        # overlays at every validation, each image with ground-truth and prediction masks
        overlay_rows = [r for r in run.history if "val/overlays" in r]
        assert [r["trainer/global_step"] for r in overlay_rows] == [s for s, _ in val]
        media = overlay_rows[-1]["val/overlays"]
        assert 1 <= media["count"] <= 3 and len(media["filenames"]) == media["count"]
        for name, masks in zip(media["filenames"], media["all_masks"], strict=True):
            assert run.media_path(overlay_rows[-1], name).is_file()
            for kind in ("ground_truth", "prediction"):
                mask = np.asarray(Image.open(run.media_path(overlay_rows[-1], masks[kind]["path"])))
                assert mask.ndim == 2 and mask.max() <= 13
        truth = np.asarray(
            Image.open(
                run.media_path(overlay_rows[-1], media["all_masks"][0]["ground_truth"]["path"])
            )
        )
        assert (truth > 0).any()  # the slice shows a labelled organ
        labels = run.config["_wandb"]["mask/class_labels"]
        assert any(v["value"]["13"] == "left_adrenal_gland" for v in labels.values())

        # the SCDL proxy figure
        proxies = run.latest("scdl/proxies")
        assert run.media_path(proxies, proxies["scdl/proxies"]["filenames"][0]).is_file()
        # the same overlays as plain arrays (what the dashboard draws), one file per validation
        npz = sorted((job / "figures").glob("overlays_step*.npz"))
        assert [int(f.stem.removeprefix("overlays_step")) for f in npz] == [s for s, _ in val]
        planes, names = load_overlays(npz[-1])
        assert len(planes) == media["count"] and names[13] == "left_adrenal_gland"
        assert (planes[0][1] == truth).all()  # the ground truth W&B shows
        files = job / "wandb" / offline[0].name / "files" / "media"
        assert list((files / "images" / "val").glob("overlays_*.png"))
        assert list((files / "images" / "mask" / "val").glob("overlays_*.mask.png"))
        assert list((files / "table" / "val").glob("per_class_dice_*.table.json"))
        assert list((files / "images" / "scdl").glob("proxies_*.png"))

    out = tmp_path / "dashboard.png"
    main([str(jobs[0]), "-o", str(out)])
    assert None not in dashboard_sources(jobs[0]).values()  # every panel has its data
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(out).size == (1600, 1000)


def test_dashboard_from_plain_files(tmp_path):
    """The dashboard reads the CSV log and the figures folder only: no W&B file is needed."""
    from omegaconf import OmegaConf

    run = tmp_path / "run"
    (run / "csv").mkdir(parents=True)
    rows = ["step,train/loss,val/dice,val/dice_liver,val/dice_minority"]
    rows += [f"{s},{1.0 / (s + 1)},,," for s in range(6)]
    rows += ["2,,0.3,0.5,0.1", "5,,0.2,0.4,0.0"]
    (run / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
    (run / ".hydra").mkdir()
    cfg = {"experiment_name": "phantom_scdl", "ablation_name": "full", "tags": ["phantom"]}
    cfg["data"] = {"class_names": None}  # as in a real run: the cache index names the classes
    OmegaConf.save(OmegaConf.create(cfg), run / ".hydra" / "config.yaml")
    out = tmp_path / "d.png"
    main([str(run), "-o", str(out)])  # overlays and proxies missing: empty panels, no error
    assert Image.open(out).size == (1600, 1000)
    assert dashboard_sources(run)["overlays"] is None

    plane = np.zeros((8, 8), np.uint8)
    label = plane.copy()
    label[2:5, 2:5] = 1
    for step in (2, 5):
        save_overlays(
            run / "figures", step, [(plane, label, label, "case z=3 (liver)")], ["bg", "liver"]
        )
    Image.new("RGB", (40, 30)).save(run / "figures" / "proxies_step000005.png")
    main([str(run), "-o", str(out)])
    assert dashboard_sources(run) == {
        "val/dice": "csv/metrics.csv",
        "train losses": "csv/metrics.csv",
        "per-class Dice": "csv/metrics.csv",
        "overlays": "figures/overlays_step000005.npz",
        "proxies": "figures/proxies_step000005.png",
    }
    planes, names = load_overlays(run / "figures" / "overlays_step000005.npz")
    assert names == ["bg", "liver"] and (planes[0][2] == label).all()
