"""Non-finite guard: a NaN loss skips the step (no optimiser, no EMA update) and is counted; too
many in a row stop the run with a message; NaN weights are never saved as a checkpoint."""

from __future__ import annotations

import csv

import pytest
import torch

from conftest import compose_cfg, tiny_train_overrides
from scdl.frameworks.base import NonFiniteLossError
from scdl.training import train


def _cfg(cache, tmp_path, *extra):
    return compose_cfg(
        [
            "experiment=phantom_mt",
            *tiny_train_overrides(cache, tmp_path),
            "test=false",
            "+callbacks.fault._target_=fault_injection." + extra[0],
            *extra[1:],
        ],
        output_dir=tmp_path / "run",
    )


def test_nan_loss_is_skipped_and_counted(phantom_cache, tmp_path):
    report = tmp_path / "unchanged.txt"
    cfg = _cfg(
        phantom_cache,
        tmp_path,
        "NaNLossAtStep",
        "+callbacks.fault.step=1",
        f"+callbacks.fault.report={report}",
    )
    metrics = train(cfg)
    assert report.read_text().strip() == "1"  # student, teacher, SCDL: nothing moved
    assert metrics["train/nonfinite_steps"] == 1.0
    with (tmp_path / "run" / "csv" / "metrics.csv").open() as f:
        counts = [
            float(r["train/nonfinite_steps"])
            for r in csv.DictReader(f)
            if r.get("train/nonfinite_steps")
        ]
    assert counts[0] == 0.0 and counts[-1] == 1.0
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 4 and state["nonfinite_steps"] == 1


def test_consecutive_nan_losses_stop_the_run_with_a_message(phantom_cache, tmp_path):
    cfg = _cfg(
        phantom_cache,
        tmp_path,
        "NaNLossAtStep",
        "+callbacks.fault.step=1",
        f"+callbacks.fault.report={tmp_path / 'r.txt'}",
        "framework.max_nonfinite_steps=0",
    )
    with pytest.raises(NonFiniteLossError, match=r"step 1 .*framework.max_nonfinite_steps=0"):
        train(cfg)


def test_nan_weights_are_never_checkpointed(phantom_cache, tmp_path):
    cfg = _cfg(
        phantom_cache,
        tmp_path,
        "NaNWeightsAfterStep",
        "+callbacks.fault.step=1",
        "framework.max_nonfinite_steps=1",
        "checkpoint_every_n_steps=1",
    )
    with pytest.raises(NonFiniteLossError):
        train(cfg)
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert ckpts, "the state before the NaN is kept"
    for path in ckpts:
        state = torch.load(path, weights_only=True)
        assert state["global_step"] <= 1, path.name
        assert all(
            torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()
        )


def test_nan_gradient_with_a_finite_loss_is_skipped_and_counted(phantom_cache, tmp_path):
    report = tmp_path / "unchanged.txt"
    cfg = _cfg(
        phantom_cache,
        tmp_path,
        "NaNGradAtStep",
        "+callbacks.fault.step=1",
        f"+callbacks.fault.report={report}",
    )
    metrics = train(cfg)
    assert report.read_text().strip() == "1"  # no parameter (or EMA) update at that step
    assert metrics["train/nonfinite_steps"] == 1.0
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["nonfinite_steps"] == 1
    assert all(
        torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()
    )
