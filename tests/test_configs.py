"""Every experiment composes and instantiates (data module, backbone, losses, framework, trainer)."""

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import open_dict

from conftest import CONF_DIR, compose_cfg
from scdl.build import build_module

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, tmp_path):
    cfg = compose_cfg(
        [f"experiment={experiment}", f"paths.log_dir={tmp_path}"], output_dir=tmp_path
    )
    with open_dict(cfg):  # normally read from the cache index by setup_data
        cfg.data.num_classes = cfg.data.num_classes or 14
        cfg.data.class_names = [f"c{i}" for i in range(cfg.data.num_classes)]
    dm = instantiate(cfg.data.module, _convert_="all")
    assert dm.labeled_bs >= 1
    module = build_module(cfg)
    assert module.num_classes == cfg.data.num_classes
    trainer_cfg = dict(cfg.trainer)
    assert trainer_cfg["max_steps"] > 0
    assert cfg.framework.inference.roi_size == cfg.data.module.patch_size


def test_default_config_composes(tmp_path):
    cfg = compose_cfg([f"paths.log_dir={tmp_path}"], output_dir=tmp_path)
    assert cfg.data.name == "phantom" and cfg.trainer.accelerator == "cpu"
    assert Path(cfg.paths.root_dir, "pyproject.toml").is_file()


@pytest.mark.parametrize(
    ("launcher", "plugin"),
    [
        ("slurm", "hydra_plugins.hydra_submitit_launcher"),
        ("joblib", "hydra_plugins.hydra_joblib_launcher"),
    ],
)
def test_launchers_compose(launcher, plugin, tmp_path):
    pytest.importorskip(plugin)
    cfg = compose_cfg([f"launcher={launcher}", f"paths.log_dir={tmp_path}"], output_dir=tmp_path)
    assert cfg.experiment_name == "default"


def test_sweep_selects_the_experiment_and_ablation_switches_compose(tmp_path):
    cfg = compose_cfg(["sweep=phantom_ablation", f"paths.log_dir={tmp_path}"], output_dir=tmp_path)
    assert cfg.experiment_name == "phantom_scdl" and cfg.scdl.prior_feedback == "head"
    base = ["experiment=phantom_scdl", f"paths.log_dir={tmp_path}"]
    assert compose_cfg([*base, "ablation=baseline"], output_dir=tmp_path).get("scdl") is None
    assert compose_cfg([*base, "ablation=no_sac"], output_dir=tmp_path).scdl.w_sac == 0.0
    no_cdba = compose_cfg([*base, "ablation=no_cdba"], output_dir=tmp_path).scdl
    assert no_cdba.w_proxy == 0.0 and no_cdba.w_kl == 0.0 and no_cdba.w_sac > 0
    assert (
        compose_cfg([*base, "ablation=no_prior"], output_dir=tmp_path).scdl.prior_feedback == "none"
    )
    assert (
        compose_cfg([*base, "ablation=token_p2e"], output_dir=tmp_path).scdl.scdl.p2e_axis
        == "token"
    )


def test_held_out_phantom_differs_in_seed_spacing_and_labeled_cases(tmp_path):
    """data=phantom_heldout: the decision data set is another draw, coarser, with fewer labels,
    and keeps the experiment's training settings."""
    from conftest import compose_cfg

    base = compose_cfg(["experiment=phantom_scdl"], output_dir=tmp_path)
    held = compose_cfg(["experiment=phantom_scdl", "data=phantom_heldout"], output_dir=tmp_path)
    assert held.data.phantom.seed != base.data.phantom.seed
    assert list(held.data.protocol.spacing) == [2.0, 2.0, 2.5]
    assert held.data.module.num_labeled == 3 and held.data.module.labeled_ratio is None
    assert held.data.cache_dir != base.data.cache_dir  # its own raw data and cache
    assert list(held.data.module.patch_size) == list(base.data.module.patch_size) == [48, 48, 48]


def test_decision_sweep_names_runs_by_arm_and_seed_so_it_can_grow(tmp_path):
    """sweep=phantom_decision: folders carry no job number (adding seeds or arms keeps every
    finished run's folder), one sweep folder per data set, seeds outermost."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from scdl.utils.config import register_resolvers

    register_resolvers()
    for data, sweep_name in (
        ("phantom", "decision_phantom"),
        ("phantom_heldout", "decision_phantom_heldout"),
    ):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(
                "train",
                overrides=["sweep=phantom_decision", f"data={data}"],
                return_hydra_config=True,
            )
        assert cfg.sweep_name == sweep_name and cfg.resume is True
        assert "hydra.job.num" not in cfg.hydra.sweep._get_node("subdir")._value()
        assert list(cfg.hydra.sweeper.params) == ["seed", "ablation"]
        assert cfg.hydra.sweeper.params.ablation == "baseline,full,plus"
        assert cfg.trainer.max_steps == 500 and cfg.experiment_name == "phantom_scdl"
    GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            [],
            {
                "model_checkpoint",
                "last_checkpoint",
                "lr_monitor",
                "progress_bar",
                "proxy_plot",
                "wandb_media",
            },
        ),
        (["callbacks=minimal"], {"model_checkpoint", "last_checkpoint", "progress_bar"}),
        (["callbacks=[model_checkpoint,last_checkpoint]"], {"model_checkpoint", "last_checkpoint"}),
        (
            ["callbacks.wandb_media=null", "callbacks.proxy_plot=null"],
            {"model_checkpoint", "last_checkpoint", "lr_monitor", "progress_bar"},
        ),
    ],
)
def test_callbacks_are_one_config_each(overrides, expected, tmp_path):
    """conf/callbacks/<name>.yaml: the default set, a named set, a chosen list, or one turned off;
    every selected callback instantiates."""
    from scdl.utils.config import instantiate_dict

    cfg = compose_cfg(["experiment=phantom_scdl", *overrides], output_dir=tmp_path)
    chosen = {k for k, v in cfg.callbacks.items() if v is not None}
    assert chosen == expected
    assert len(instantiate_dict(cfg.callbacks)) == len(expected)
