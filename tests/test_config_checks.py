"""Fault injection for :mod:`scdl.config_checks`: each bad config fails before anything is built,
with one message naming the key, the bad value and the fix; every shipped experiment passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import CompactHydraException

from conftest import CONF_DIR, REPO_ROOT, compose_cfg
from scdl import command_line
from scdl.command_line import exit_if_missing_hydra_plugins, missing_hydra_plugins
from scdl.config_checks import ConfigError, validate_config

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
ABLATIONS = sorted(p.stem for p in (Path(CONF_DIR) / "ablation").glob("*.yaml"))
FRAMEWORKS = sorted(
    p.stem for p in (Path(CONF_DIR) / "framework").glob("*.yaml") if p.stem != "common"
)


def _cfg(tmp_path, *overrides: str):
    return compose_cfg([*overrides, f"paths.log_dir={tmp_path}"], output_dir=tmp_path)


def _error(tmp_path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(_cfg(tmp_path, *overrides))
    assert isinstance(info.value, ValueError) and isinstance(info.value, CompactHydraException)
    return str(info.value)


# ----------------------------------------------------------------------------------------------
# Every shipped config passes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_passes(experiment, tmp_path):
    validate_config(_cfg(tmp_path, f"experiment={experiment}"))
    validate_config(_cfg(tmp_path, f"experiment={experiment}", "debug=fast"))


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_every_ablation_on_phantom_scdl_passes(ablation, tmp_path):
    validate_config(_cfg(tmp_path, "experiment=phantom_scdl", f"ablation={ablation}"))


def test_default_and_sweep_configs_pass(tmp_path):
    validate_config(_cfg(tmp_path))
    validate_config(_cfg(tmp_path, "sweep=phantom_ablation"))
    validate_config(_cfg(tmp_path, "experiment=phantom_mt", "ablation=baseline"))


# ----------------------------------------------------------------------------------------------
# Bad configs
# ----------------------------------------------------------------------------------------------


def test_ablation_without_scdl_names_the_experiment_and_the_fix(tmp_path):
    msg = _error(tmp_path, "experiment=phantom_mt", "ablation=no_sac")
    assert "ablation=no_sac" in msg and "experiment 'phantom_mt'" in msg
    assert "experiment=phantom_scdl" in msg and "scdl=default" in msg
    # a CPS experiment gets its own SCDL variant and scdl option
    msg = _error(tmp_path, "experiment=phantom_cps", "ablation=no_cdba")
    assert "experiment=phantom_cps_scdl" in msg and "scdl=cps" in msg
    # ablation=full on a plain experiment would silently train without SCDL
    msg = _error(tmp_path, "experiment=phantom_mt", "ablation=full")
    assert "ablation=full" in msg and "scdl is null" in msg


@pytest.mark.parametrize(
    ("override", "key", "hint"),
    [
        ("data.module.patch_size=[48,48]", "data.module.patch_size=[48, 48]", "multiple of 16"),
        ("data.module.patch_size=[48,48,40]", "data.module.patch_size", "VNet halves"),
        ("optimizer.lr=abc", "optimizer.lr='abc'", "a number > 0"),
        ("optimizer.lr=0", "optimizer.lr=0", "a number > 0"),
        ("optimizer.weight_decay=-1", "optimizer.weight_decay=-1", ">= 0"),
        ("optimizer.momentum=fast", "optimizer.momentum='fast'", ">= 0"),
        ("trainer.precision=bf17", "trainer.precision='bf17'", "bf16-mixed"),
        ("trainer.max_steps=0", "trainer.max_steps=0", "positive integer"),
        ("trainer.max_steps=1.5", "trainer.max_steps=1.5", "positive integer"),
        ("data.module.labeled_bs=0", "data.module.labeled_bs=0", "positive integer"),
        ("data.module.unlabeled_bs=-2", "data.module.unlabeled_bs=-2", "integer >= 0"),
        ("framework.inference.roi_size=[40,40,40]", "framework.inference.roi_size", "16"),
        (
            "~framework._target_",
            "framework: has no _target_",
            "framework=" + "|".join(FRAMEWORKS),
        ),
        ("~loss.sup._target_", "loss.sup", "_target_"),
    ],
)
def test_bad_value_names_the_key(override, key, hint, tmp_path):
    msg = _error(tmp_path, override)
    assert msg.startswith("config error: ") and "\n" not in msg  # one problem, one line
    assert key in msg and hint in msg


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("scdl.w_sac=-0.1", "scdl.w_sac=-0.1"),
        ("scdl.w_proxy=abc", "scdl.w_proxy='abc'"),
        ("scdl.token_grid=0", "scdl.token_grid=0"),
        ("scdl.prior_feedback=decoder", "scdl.prior_feedback='decoder'"),
        ("scdl.scdl.p2e_axis=voxel", "scdl.scdl.p2e_axis='voxel'"),
        ("scdl.scdl.tau_e2p=0", "scdl.scdl.tau_e2p=0"),
    ],
)
def test_bad_scdl_value_names_the_key(override, key, tmp_path):
    assert key in _error(tmp_path, "experiment=phantom_scdl", override)


def test_several_problems_are_listed_together(tmp_path):
    msg = _error(tmp_path, "optimizer.lr=abc", "trainer.max_steps=-1")
    assert msg.startswith("config errors (2):")
    assert "optimizer.lr='abc'" in msg and "trainer.max_steps=-1" in msg


def test_auto_precision_is_accepted(tmp_path):
    validate_config(_cfg(tmp_path, "trainer.precision=auto"))
    validate_config(_cfg(tmp_path, "trainer.precision=32"))  # Lightning's int alias
    assert "cpu_precision" in _error(tmp_path, "+trainer.cpu_precision=fp8")


def test_train_refuses_a_bad_config_before_building_anything(tmp_path):
    from scdl.training import train

    with pytest.raises(ConfigError, match="data.module.patch_size"):
        train(_cfg(tmp_path, "data.module.patch_size=[48,48]", "data.cache_dir=/nonexistent"))


# ----------------------------------------------------------------------------------------------
# Hydra launcher / sweeper plugins
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "extra", "package"),
    [
        (["launcher=slurm"], ".[slurm]", "hydra-submitit-launcher"),
        (["-m", "+launcher=slurm", "seed=1,2"], ".[slurm]", "hydra-submitit-launcher"),
        (["launcher=joblib"], ".[joblib]", "hydra-joblib-launcher"),
        (["hydra/launcher=submitit_slurm"], ".[slurm]", "hydra-submitit-launcher"),
        (["hydra/sweeper=optuna"], ".[hpo]", "hydra-optuna-sweeper"),
    ],
)
def test_missing_launcher_plugin_names_the_extra(argv, extra, package, monkeypatch, capsys):
    monkeypatch.setattr(command_line, "plugin_available", lambda module: False)
    (msg,) = missing_hydra_plugins(argv)
    assert f'pip install -e "{extra}"' in msg and package in msg
    with pytest.raises(SystemExit) as info:
        exit_if_missing_hydra_plugins(argv)
    assert info.value.code == 2
    assert f'pip install -e "{extra}"' in capsys.readouterr().err


def test_installed_or_unselected_plugins_pass(monkeypatch):
    monkeypatch.setattr(command_line, "plugin_available", lambda module: True)
    assert missing_hydra_plugins(["launcher=slurm", "hydra/sweeper=optuna"]) == []
    monkeypatch.setattr(command_line, "plugin_available", lambda module: False)
    assert missing_hydra_plugins(["experiment=phantom_mt", "launcher=null", "-m"]) == []
    exit_if_missing_hydra_plugins(["experiment=phantom_scdl", "sweep=phantom_ablation"])


def test_train_script_exits_2_with_the_install_hint():
    if command_line.plugin_available("hydra_plugins.hydra_submitit_launcher"):
        pytest.skip("hydra-submitit-launcher is installed here")
    root = REPO_ROOT
    proc = subprocess.run(
        [sys.executable, str(root / "src" / "train.py"), "launcher=slurm"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
    )
    assert proc.returncode == 2
    assert 'pip install -e ".[slurm]"' in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("seed=-1", "seed=-1: expected an integer in 0..4294967295"),
        ("seed=4294967296", "seed=4294967296: expected an integer in 0..4294967295"),
        (
            "framework.inference.overlap=1.0",
            "framework.inference.overlap=1.0: expected a number in",
        ),
        ("framework.inference.overlap=[0.5,0.5]", "or 3 of them"),
        ("framework.inference.sw_batch_size=0", "framework.inference.sw_batch_size=0"),
    ],
)
def test_seed_and_sliding_window_values_are_checked_at_start(tmp_path, override, expected):
    """seed=-1 failed in numpy during seeding, overlap=1.0 only at the first validation."""
    assert expected in _error(tmp_path, "experiment=phantom_mt", override)


def test_sliding_window_overrides_of_eval_and_predict_are_checked():
    from scdl.inference.sliding_window import SlidingWindowConfig

    with pytest.raises(ConfigError, match=r"overlap=1.0: expected a number in \[0, 1\)"):
        SlidingWindowConfig(overlap=1.0)
    with pytest.raises(ConfigError, match="mode='linear'"):
        SlidingWindowConfig(mode="linear")
    SlidingWindowConfig(overlap=[0.0, 0.66666, 0.83333])  # the papers' test stride


def test_magicnet_cube_patch_is_checked_before_the_model_is_built(tmp_path):
    """GA-MagicNet's cubes go through the VNet alone: a 32^3 patch (10^3 cubes) failed when the
    model was built; with InstanceNorm a 48^3 patch (16^3 cubes, 1^3 bottleneck) failed later."""
    text = _error(tmp_path, "experiment=phantom_magicnet", "data.module.patch_size=[32,32,32]")
    assert "multiples of 48" in text and "data.module.patch_size=[48,48,48]" in text
    text = _error(tmp_path, "experiment=amos_magicnet", "data.module.patch_size=[48,48,48]")
    assert "at least 96" in text and "InstanceNorm" in text and "batchnorm allows 48" in text


def test_a_labeled_ratio_beside_a_split_file_is_refused(tmp_path):
    """data.module.labeled_ratio=0.2 on AMOS trained the 5 % split file's cases in a run named
    amos_cps_5p; a drawn split keeps the file's name only if renamed."""
    text = _error(tmp_path, "experiment=amos_cps", "data.module.labeled_ratio=0.2")
    assert "data.module.labeled_ratio=0.2 would be ignored" in text
    assert "data.labeled=10p|2p|5p|full" in text and "data.module.split_file=null" in text
    drawn = ["experiment=amos_cps", "data.module.split_file=null", "data.module.labeled_ratio=0.2"]
    assert "the run would be named after 5p" in _error(tmp_path, *drawn)
    cfg = _cfg(tmp_path, *drawn, "data.labeled=r20")
    validate_config(cfg)
    assert cfg.experiment_name == "amos_cps_r20"


def test_unquoted_paths_with_spaces_or_non_ascii_are_named_with_the_quoting(tmp_path):
    """Hydra's grammar fails on them with LexerNoViableAltException; the entry points say how to
    quote before Hydra parses the command line."""
    from scdl.command_line import unquoted_values

    msgs = unquoted_values(["data.root=/data/my scans", "data.root=/data/ü", "x=[1, 2]"])
    assert len(msgs) == 2
    assert "\"data.root='/data/my scans'\"" in msgs[0] and "non-ASCII" in msgs[1]
    assert unquoted_values(["data.root='/data/my scans'", "seed=1", "-m"]) == []
    res = subprocess.run(
        [sys.executable, str(REPO_ROOT / "src" / "check_data.py"), "data.root=/a b"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "Write it as \"data.root='/a b'\"" in res.stderr
    assert "Traceback" not in res.stderr and "Lexer" not in res.stderr
