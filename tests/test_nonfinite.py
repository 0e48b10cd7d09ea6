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


def test_fp16_scaler_skipped_steps_are_counted_and_skip_the_ema(tmp_path):
    """16-mixed with a GradScaler (CPU here, CUDA on a GPU): a step whose gradients overflow is
    skipped by the scaler; it is counted like any non-finite step and the EMA teacher does not
    move (the guard returned early under a scaler: nothing counted, the EMA updated from the
    unchanged student, max_nonfinite_steps never fired)."""
    import lightning as L
    from lightning.pytorch.plugins.precision import MixedPrecision

    from fault_injection import NaNGradAtStep
    from test_debug_fast import _RandomBatches
    from test_step_pin import _module

    def fit(max_nonfinite: int) -> tuple[object, object]:
        module = _module("mean_teacher", None)
        del module.log_dict, module.log  # a real trainer is attached here
        module.max_nonfinite_steps = max_nonfinite
        scaler = torch.amp.GradScaler("cpu")
        report = tmp_path / "unchanged.txt"
        trainer = L.Trainer(
            accelerator="cpu",
            plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
            callbacks=[NaNGradAtStep(1, str(report))],  # a Checkpoint: no default one is added
            default_root_dir=tmp_path,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            max_steps=3,
            limit_val_batches=0,
        )
        trainer.fit(module, datamodule=_RandomBatches(4, 16, 3))
        return module, scaler, report

    module, scaler, report = fit(max_nonfinite=5)
    assert scaler.get_scale() < 65536.0  # the scaler did skip and back off
    assert module.nonfinite_steps == 1
    assert report.read_text().strip() == "1"  # student and EMA teacher unchanged by that step
    with pytest.raises(NonFiniteLossError, match="non-finite gradients at step 1"):
        fit(max_nonfinite=0)


@pytest.mark.parametrize(
    ("smi", "visible", "expected"),
    [
        ("0, 9.0\n1, 9.0\n", None, "bf16-mixed"),  # H100 / H200
        ("0, 8.0\n", None, "bf16-mixed"),  # A100
        ("0, 7.0\n", None, "16-mixed"),  # V100: fp16 + GradScaler
        ("0, 7.5\n1, 8.6\n", "1", "bf16-mixed"),  # only the visible GPU counts
        (None, None, "16-mixed"),  # no nvidia-smi
    ],
)
def test_gpu_precision_is_bf16_where_the_gpu_has_it(monkeypatch, smi, visible, expected):
    """conf/trainer/gpu.yaml: ${gpu_precision:}; it was 16-mixed everywhere, whose skipped steps
    went uncounted. Read from nvidia-smi: CUDA is not initialised (a sweep job pins its GPU
    later)."""
    import subprocess

    from scdl.utils import hardware

    def run(cmd, **kwargs):
        if smi is None:
            raise FileNotFoundError("nvidia-smi")
        return subprocess.CompletedProcess(cmd, 0, stdout=smi, stderr="")

    monkeypatch.setattr(hardware.subprocess, "run", run)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    hardware.gpu_precision_choice.cache_clear()
    try:
        assert hardware.gpu_precision_choice().precision == expected
    finally:
        hardware.gpu_precision_choice.cache_clear()
    assert not torch.cuda.is_initialized()


def test_the_gpu_trainer_config_uses_the_gpu_precision_resolver():
    from omegaconf import OmegaConf

    from conftest import CONF_DIR

    raw = OmegaConf.load(f"{CONF_DIR}/trainer/gpu.yaml")
    assert OmegaConf.to_container(raw)["trainer"]["precision"] == "${gpu_precision:}"
    cfg = compose_cfg(["experiment=amos_mt"])
    assert cfg.trainer.precision in ("bf16-mixed", "16-mixed")
