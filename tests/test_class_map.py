"""The checkpoint's class map (names and order) must match the data set's: a data set whose spleen
and liver ids are swapped is refused, with both lists side by side and the override flag."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from conftest import compose_cfg
from scdl.config_checks import ConfigError
from scdl.inference.checkpoint import (
    load_module_from_checkpoint,
    resolve_classes,
    with_class_mismatch_flag,
)

CKPT = ["background", "spleen", "right_kidney", "left_kidney", "gallbladder", "esophagus", "liver"]
SWAPPED = [
    "background",
    "liver",
    "right_kidney",
    "left_kidney",
    "gallbladder",
    "esophagus",
    "spleen",
]


def _data_cfg(tmp_path, names, **extra):
    (tmp_path / "index.json").write_text(json.dumps({"class_names": names}))
    return OmegaConf.create({"data": {"cache_dir": str(tmp_path), "num_classes": None}, **extra})


def test_swapped_ids_are_refused_with_both_lists(tmp_path):
    with pytest.raises(ConfigError) as info:
        resolve_classes(_data_cfg(tmp_path, SWAPPED), {"class_names": CKPT})
    msg = str(info.value)
    assert "differ at index 1, 6" in msg and "allow_class_mismatch=true" in msg
    lines = msg.splitlines()
    row1 = next(line for line in lines if line.split()[:1] == ["1"])
    row2 = next(line for line in lines if line.split()[:1] == ["2"])
    assert row1.split() == ["1", "spleen", "liver", "<-", "differs"]
    assert row2.split() == ["2", "right_kidney", "right_kidney"]  # equal rows are not marked
    assert any("checkpoint" in line and "data set" in line for line in lines)


def test_override_flag_lets_it_through(tmp_path):
    # explicit argument, or the flag carried in the run config by eval.py / predict.py
    assert resolve_classes(_data_cfg(tmp_path, SWAPPED), {"class_names": CKPT}, True) == (7, CKPT)
    cfg = _data_cfg(tmp_path, SWAPPED, allow_class_mismatch=True)
    assert resolve_classes(cfg, {"class_names": CKPT}) == (7, CKPT)
    assert with_class_mismatch_flag(None, {"allow_class_mismatch": False}) is None
    assert with_class_mismatch_flag({"data": {}}, {"allow_class_mismatch": True}) == {
        "data": {},
        "allow_class_mismatch": True,
    }


def test_cosmetic_differences_pass(tmp_path):
    cosmetic = ["Background", "Spleen", "Right Kidney", "left-kidney", "GALLBLADDER", "esophagus "]
    cfg = _data_cfg(tmp_path, [*cosmetic, "Liver"])
    assert resolve_classes(cfg, {"class_names": CKPT}) == (7, CKPT)  # the checkpoint's names


def test_class_count_mismatch_is_refused_even_with_the_flag(tmp_path):
    cfg = _data_cfg(tmp_path, CKPT[:5], allow_class_mismatch=True)
    with pytest.raises(ValueError, match="predicts 7 classes"):
        resolve_classes(cfg, {"num_classes": 7, "class_names": CKPT})


def test_entry_configs_default_to_refusing(tmp_path):
    for name in ("eval", "predict"):
        cfg = compose_cfg([f"paths.log_dir={tmp_path}"], config_name=name)
        assert cfg.allow_class_mismatch is False


def test_loader_threads_the_flag(tmp_path):
    """A run folder with a tiny VNet checkpoint trained on CKPT, loaded on a cache with SWAPPED."""
    from scdl.build import build_module

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "index.json").write_text(json.dumps({"class_names": SWAPPED}))
    run_dir = tmp_path / "run"
    cfg = compose_cfg(
        ["debug=fast", "model.base_filters=2", f"data.cache_dir={cache}", "logger=csv"],
        output_dir=run_dir,
    )
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    with open_dict(cfg):
        cfg.data.num_classes, cfg.data.class_names = len(CKPT), CKPT
    module = build_module(cfg)
    (run_dir / "checkpoints").mkdir()
    ckpt = run_dir / "checkpoints" / "best-x.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"class_names": CKPT}}, ckpt)
    with pytest.raises(ConfigError, match="allow_class_mismatch"):
        load_module_from_checkpoint(ckpt, with_class_mismatch_flag(None, {}))
    flag = with_class_mismatch_flag(None, {"allow_class_mismatch": True})
    loaded, run_cfg = load_module_from_checkpoint(ckpt, flag)
    assert list(run_cfg.data.class_names) == CKPT
