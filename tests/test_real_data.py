"""Real-data configs end to end on tiny fixtures: committed split files, split validation through
the data module, ``experiment=amos_mt|synapse_mt debug=fast`` runs, the generic nnU-Net data set,
and the single clear error when the data is missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import CompactHydraException

from conftest import CONF_DIR, REPO_ROOT, compose_cfg
from real_data_fixtures import write_amos22, write_btcv, write_nnunet, write_split
from scdl.build import build_backbone, setup_data
from scdl.data.catalog import DataNotFoundError
from scdl.data.layouts import amos_modality
from scdl.data.splits import SplitError, SplitFileNotFoundError, load_split_file
from scdl.training import train

SPLITS = Path(CONF_DIR) / "data" / "splits"
# (labeled, unlabeled, val, test) per committed split file (docs/method.md §1.1, §1.2)
SIZES = {
    "amos/2p": (4, 212, 24, 120),
    "amos/5p": (10, 206, 24, 120),
    "amos/10p": (21, 195, 24, 120),
    "amos/full": (216, 0, 24, 120),
    "synapse/10p": (2, 18, 4, 6),
    "synapse/20p": (4, 16, 4, 6),
    "synapse/40p": (8, 12, 4, 6),
    "synapse/dhc_20p": (4, 16, 4, 6),
    "synapse/full": (20, 0, 4, 6),
}
BTCV_LABELED = [f"{i:04d}" for i in (*range(1, 11), *range(21, 41))]


def tiny_overrides(tmp_path: Path) -> list[str]:
    return ["debug=fast", "logger=csv", f"paths.log_dir={tmp_path}/logs", "model.base_filters=4"]


# --- committed split files -------------------------------------------------------------------


def test_every_committed_split_file_loads_is_disjoint_and_has_the_documented_sizes():
    found = {f"{p.parent.name}/{p.stem}": p for p in SPLITS.glob("*/*.json")}
    assert set(found) == set(SIZES)
    for name, path in found.items():
        split = load_split_file(path).validate(name=name)  # disjoint, no duplicates
        assert tuple(split.sizes().values()) == SIZES[name], name
        data = json.loads(path.read_text())
        assert data["source"] and data["description"]
        ids = [i for part in split.to_dict().values() for i in part]
        if name.startswith("synapse/"):
            assert set(ids) <= set(BTCV_LABELED) and len(ids) == 30, name
        else:
            assert all(i.startswith("amos_") and len(i) == 9 for i in ids)
    amos5 = load_split_file(SPLITS / "amos" / "5p.json")
    assert amos5.labeled[:2] == ["amos_0078", "amos_0158"]
    assert sum(amos_modality(i) == "MRI" for i in amos5.labeled) == 3
    assert sum(amos_modality(i) == "MRI" for i in amos5.test) == 20
    syn = load_split_file(SPLITS / "synapse" / "20p.json")
    assert syn.labeled == ["0002", "0023", "0034", "0039"]
    assert syn.test == ["0004", "0007", "0010", "0033", "0035", "0036"]
    dhc = load_split_file(SPLITS / "synapse" / "dhc_20p.json")
    assert dhc.test == ["0008", "0027", "0029", "0033", "0037", "0039"]
    # the labeled / unlabeled parts of every AMOS ratio are the same 216 training cases
    train = set(load_split_file(SPLITS / "amos" / "full.json").labeled)
    for r in ("2p", "5p", "10p"):
        s = load_split_file(SPLITS / "amos" / f"{r}.json")
        assert set(s.labeled) | set(s.unlabeled) == train


@pytest.mark.parametrize("data", ["amos", "synapse"])
def test_labeled_switch_picks_a_committed_split_file(data, tmp_path):
    for name in [k.split("/")[1] for k in SIZES if k.startswith(data)]:
        cfg = compose_cfg([f"experiment={data}_mt", f"data.labeled={name}"], output_dir=tmp_path)
        assert Path(cfg.data.module.split_file) == SPLITS / data / f"{name}.json"
        assert cfg.experiment_name == f"{data}_mt_{name}"


# --- AMOS: MRI exclusion and split validation through the data module ------------------------


@pytest.fixture(scope="module")
def amos_fixture(tmp_path_factory) -> Path:
    """AMOS22 download with 7 cases (2 MRI) of 40 x 40 x 24 voxels, plus a split over them."""
    root = tmp_path_factory.mktemp("amos_root")
    write_amos22(root, shape=(40, 40, 24))
    write_split(
        root / "split.json",
        ["amos_0001", "amos_0507"],
        ["amos_0002", "amos_0003"],
        ["amos_0004"],
        ["amos_0005", "amos_0540"],
    )
    return root


def amos_cfg(root: Path, tmp_path: Path, *extra: str, experiment: str = "amos_mt"):
    return compose_cfg(
        [
            f"experiment={experiment}",
            f"data.root={root}",
            f"data.module.split_file={root / 'split.json'}",
            "data.protocol.resize=[40,40,24]",  # paper: 160 x 160 x 80; small for CPU tests
            *tiny_overrides(tmp_path),
            *extra,
        ],
        output_dir=tmp_path / "run",
    )


def test_amos_mri_cases_are_kept_flagged_and_excludable(amos_fixture, tmp_path):
    dm = setup_data(amos_cfg(amos_fixture, tmp_path))  # prepares the cache on first use
    assert dm.split.labeled == ["amos_0001", "amos_0507"] and dm.num_classes == 16
    cfg = amos_cfg(amos_fixture, tmp_path, "data.module.exclude={modality:MRI}")
    dm = setup_data(cfg)
    assert dm.split.labeled == ["amos_0001"] and dm.split.test == ["amos_0005"]
    assert cfg.data.class_names[15] == "prostate_uterus"


def test_split_errors_through_the_data_module_name_the_cases(amos_fixture, tmp_path):
    bad = write_split(tmp_path / "bad.json", ["amos_0001", "amos_0999"], [], ["amos_0004"], [])
    with pytest.raises(SplitError, match=r"not found.*labeled: \['amos_0999'\]"):
        setup_data(amos_cfg(amos_fixture, tmp_path, f"data.module.split_file={bad}"))
    bad = write_split(tmp_path / "bad.json", ["amos_0001"], ["amos_0004"], ["amos_0004"], [])
    with pytest.raises(SplitError, match=r"'unlabeled' and 'val' share 1 case\(s\)"):
        setup_data(amos_cfg(amos_fixture, tmp_path, f"data.module.split_file={bad}"))
    # the committed 5 % split on a data set that lacks its cases: a short, explicit message
    with pytest.raises(SplitError, match=r"amos/5p.json: 355 case\(s\) not found.*and \d+ more"):
        setup_data(
            amos_cfg(amos_fixture, tmp_path, f"data.module.split_file={SPLITS}/amos/5p.json")
        )
    with pytest.raises(SplitFileNotFoundError, match=r"3p.json.*\['10p', '2p', '5p', 'full'\]"):
        setup_data(
            amos_cfg(amos_fixture, tmp_path, f"data.module.split_file={SPLITS}/amos/3p.json")
        )


# --- experiments run on CPU under debug=fast -------------------------------------------------


def test_amos_mt_debug_fast_runs_to_the_end(amos_fixture, tmp_path):
    metrics = train(amos_cfg(amos_fixture, tmp_path))
    assert 0.0 <= metrics["test/dice"] <= 1.0 and "val/dice_prostate_uterus" in metrics
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["test"] == ["amos_0005", "amos_0540"]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["amos_scdl", "amos_cps_scdl"])
def test_amos_scdl_experiments_debug_fast_run_to_the_end(experiment, amos_fixture, tmp_path):
    cfg = amos_cfg(amos_fixture, tmp_path, experiment=experiment)
    assert cfg.scdl is not None
    metrics = train(cfg)
    assert 0.0 <= metrics["test/dice"] <= 1.0 and "train/scdl_proxy" in metrics


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["synapse_scdl", "synapse_cps_scdl"])
def test_synapse_scdl_experiments_debug_fast_run_to_the_end(experiment, tmp_path):
    root = tmp_path / "synapse"
    write_btcv(root, shape=(40, 40, 24))
    split = write_split(
        tmp_path / "split.json", ["0001", "0002"], ["0003", "0004"], ["0005"], ["0006"]
    )
    cfg = compose_cfg(
        [
            f"experiment={experiment}",
            f"data.root={root}",
            f"data.module.split_file={split}",
            *tiny_overrides(tmp_path),
        ],
        output_dir=tmp_path / "run",
    )
    metrics = train(cfg)
    assert 0.0 <= metrics["test/dice"] <= 1.0 and "train/scdl_proxy" in metrics


def test_synapse_mt_debug_fast_runs_to_the_end(tmp_path):
    root = tmp_path / "synapse"
    write_btcv(root, shape=(40, 40, 24))  # 1.2 x 1.2 x 2.5 mm -> 32 x 32 x 30 at 1.5 x 1.5 x 2
    split = write_split(
        tmp_path / "split.json", ["0001", "0002"], ["0003", "0004"], ["0005"], ["0006"]
    )
    cfg = compose_cfg(
        [
            "experiment=synapse_mt",
            f"data.root={root}",
            f"data.module.split_file={split}",
            *tiny_overrides(tmp_path),
        ],
        output_dir=tmp_path / "run",
    )
    metrics = train(cfg)
    assert 0.0 <= metrics["test/dice"] <= 1.0 and "val/dice_portal_splenic_veins" in metrics
    assert cfg.data.num_classes == 14
    assert (root / "preprocessed" / "paper" / "index.json").is_file()
    # once prepared, the raw download is no longer needed
    shutil.rmtree(root / "RawData")
    assert setup_data(cfg).split.test == ["0006"]


def test_missing_data_root_is_one_clear_error(tmp_path):
    cfg = compose_cfg(
        ["experiment=amos_mt", f"data.root={tmp_path}/absent", *tiny_overrides(tmp_path)],
        output_dir=tmp_path / "run",
    )
    with pytest.raises(DataNotFoundError, match=r"absent/amos22 does not exist.*data.root") as e:
        train(cfg)
    assert isinstance(e.value, CompactHydraException)  # Hydra prints the message, no traceback
    cfg = compose_cfg(["data=nnunet", *tiny_overrides(tmp_path)], output_dir=tmp_path / "run")
    with pytest.raises(DataNotFoundError, match="data.root is not set"):
        train(cfg)


@pytest.mark.slow
def test_train_script_prints_only_the_message_when_data_is_missing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    root = REPO_ROOT
    proc = subprocess.run(
        [
            sys.executable,
            str(root / "src" / "train.py"),
            "experiment=synapse_mt",
            f"data.root={tmp_path}/absent",
            f"paths.log_dir={tmp_path}",
            "logger=csv",
            "debug=fast",
        ],
        capture_output=True,
        text=True,
        env={**env, "WANDB_MODE": "disabled"},
        timeout=300,
    )
    assert proc.returncode != 0
    assert "RawData does not exist" in proc.stderr and "Traceback" not in proc.stderr


# --- any nnU-Net raw data set ----------------------------------------------------------------


def test_nnunet_data_set_reads_classes_and_draws_the_split(tmp_path):
    root = write_nnunet(tmp_path, num_cases=8, num_test=2, shape=(24, 24, 16))
    cfg = compose_cfg(
        [
            "data=nnunet",
            f"data.root={root}",
            "data.module.labeled_ratio=0.5",
            "data.module.num_val=1",
            "data.module.num_test=1",
            "data.module.split_seed=3",
            *tiny_overrides(tmp_path),
        ],
        output_dir=tmp_path / "run",
    )
    dm = setup_data(cfg)
    assert cfg.data.num_classes == 3
    assert list(cfg.data.class_names) == ["background", "left_lobe", "right_lobe"]
    assert len(dm.split.labeled) == 3 and len(dm.split.unlabeled) == 3 + 2  # + imagesTs
    assert {"tiny_008", "tiny_009"} <= set(dm.split.unlabeled)
    model = build_backbone(cfg.model)
    assert model is not None  # num_classes interpolated from the cache index


@pytest.mark.slow
def test_nnunet_data_set_trains(tmp_path):
    root = write_nnunet(tmp_path, num_cases=6, num_test=0, shape=(32, 32, 16))
    cfg = compose_cfg(
        [
            "data=nnunet",
            f"data.root={root}",
            "data.module.num_val=1",
            "data.module.num_test=1",
            "data.module.labeled_ratio=0.5",
            *tiny_overrides(tmp_path),
        ],
        output_dir=tmp_path / "run",
    )
    metrics = train(cfg)
    assert "val/dice_right_lobe" in metrics and 0.0 <= metrics["test/dice"] <= 1.0


@pytest.mark.slow
def test_prepare_data_script_is_idempotent(tmp_path):
    write_amos22(tmp_path, tr=(1, 2), va=(), ts=())
    cmd = [
        sys.executable,
        str(REPO_ROOT / "src" / "prepare_data.py"),
        "data=amos",
        f"data.root={tmp_path}",
        f"paths.log_dir={tmp_path}/logs",
        "data.protocol.resize=[24,24,12]",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    cache = tmp_path / "preprocessed" / "paper"
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")}
    assert len(stamps) == 4
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0 and "prepared amos" in second.stdout
    assert stamps == {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")}
