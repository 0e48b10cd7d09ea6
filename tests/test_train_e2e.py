"""A tiny end-to-end fit + test on the phantom, on CPU."""

import json

import pytest
import torch

from conftest import compose_cfg, tiny_train_overrides
from scdl.training import train
from scdl.utils import hardware


def test_tiny_fit_then_test(phantom_cache, tmp_path):
    out = tmp_path / "run"
    cfg = compose_cfg(
        ["experiment=phantom_mt", *tiny_train_overrides(phantom_cache, tmp_path)], output_dir=out
    )
    metrics = train(cfg)
    assert 0.0 <= metrics["test/dice"] <= 1.0
    assert "val/dice_left_adrenal_gland" in metrics and "train/loss_unsup" in metrics
    ckpts = sorted((out / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in ckpts} >= {"last.ckpt"} and any(
        p.name.startswith("best") for p in ckpts
    )
    results = json.loads((out / "test_metrics.json").read_text())  # scdl.metrics.results schema
    assert len(results["classes"]) == 13 and len(results["per_case"]) == 1
    assert results["protocol"] == "train_test" and results["metrics"] == ["dice"]
    assert results["overall"]["dice"]["mean"] == pytest.approx(metrics["test/dice"], abs=1e-6)
    assert (out / "test_metrics.csv").read_text().startswith("class,dice_mean,dice_std")
    assert (out / "test_metrics_per_case.csv").read_text().startswith("case,class,dice")
    case_ids = [c["case"] for c in results["per_case"]]
    assert json.loads((out / "split.json").read_text())["test"] == case_ids
    # what produced the figures: commit and machine kind, one entry per start, no host name
    (start,) = json.loads((out / "provenance.json").read_text())["starts"]
    assert len(start["commit"]) == 40 and start["cpu_capability"]
    assert start["bf16_flags"] == hardware.native_bf16_flags()  # amx_bf16 vs avx512_bf16
    assert start["cpu"] and start["torch"] == torch.__version__ and "host" not in str(start)
    # the checkpoint holds the EMA teacher, so resuming restores it
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert any(k.startswith("teacher.module.") for k in state)
    assert (out / "csv" / "metrics.csv").is_file()
