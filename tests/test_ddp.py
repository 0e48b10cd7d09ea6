"""DDP on 2 CPU processes (gloo) through the real entry point: Lightning re-launches src/train.py
for rank 1, metrics are gathered from both ranks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT

ROOT = str(REPO_ROOT)


def _ddp_train(cache: Path, tmp_path: Path, run_dir: Path, probe: Path, *extra: str):
    """``src/train.py`` on 2 gloo ranks, every rank inheriting ``SLURM_PROCID=0`` (as inside
    ``srun --pty bash``, where Lightning starts the ranks itself); :class:`RankProbe` records each
    rank's patches and random states per step in ``probe``."""
    cmd = [
        sys.executable,
        "src/train.py",
        "experiment=phantom_scdl",
        "debug=fast",
        "logger=csv",
        "trainer=ddp_cpu",
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "trainer.precision=32-true",
        f"data.cache_dir={cache}",
        "data.auto_prepare=false",
        "data.module.num_val=2",
        "data.module.num_test=2",
        "data.module.num_labeled=1",
        "model.base_filters=4",
        f"paths.log_dir={tmp_path}/logs",
        f"hydra.run.dir={run_dir}",
        "+callbacks.probe._target_=fault_injection.RankProbe",
        f"+callbacks.probe.folder={probe}",
        *extra,
    ]
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
        "SLURM_PROCID": "0",
        "PYTHONPATH": os.path.join(ROOT, "tests"),
    }
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _probed(probe: Path) -> list[list[dict]]:
    return [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_ddp_two_cpu_processes(phantom_cache, tmp_path):
    """Also: each rank trains on its own patches and draws its own noise (they were identical
    with SLURM_PROCID=0 inherited: the rank came from the environment, the seed was shared)."""
    run_dir, probe = tmp_path / "run", tmp_path / "probe"
    proc = _ddp_train(phantom_cache, tmp_path, run_dir, probe)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (run_dir / "train_ddp_process_1.log").exists()  # rank 1 was launched
    results = json.loads((run_dir / "test_metrics.json").read_text())
    # each rank evaluated one of the two test cases; rank 0 reports both
    assert sorted(c["case"] for c in results["per_case"]) == sorted(
        json.loads((run_dir / "split.json").read_text())["test"]
    )
    assert len(results["per_case"]) == 2
    # N ranks keep the 1-process cadence: debug=fast validates every 2 optimiser steps (it was
    # every step: each rank drew iters_per_epoch / N batches per epoch)
    import csv

    with (run_dir / "csv" / "metrics.csv").open() as f:
        val_steps = sorted({int(r["step"]) for r in csv.DictReader(f) if r.get("val/dice")})
    assert val_steps == [1, 3], val_steps  # the CSV step of the validations after steps 2 and 4
    # every rank its own patches and random streams, at every step
    ranks = _probed(probe)
    assert len(ranks[0]) == len(ranks[1]) == 4
    for step0, step1 in zip(*ranks, strict=True):
        assert step0["step"] == step1["step"]
        for key in ("patches", "torch_rng", "numpy_rng"):
            assert step0[key] != step1[key], (step0["step"], key)


@pytest.mark.slow
def test_ddp_resume_continues_each_ranks_own_streams(phantom_cache, tmp_path):
    """SIGKILL both ranks after the step-4 checkpoint, resume: each rank continues its own
    patches and random streams (the checkpoint holds every rank's), and the weights end equal to
    the uninterrupted run's."""
    steps = ["trainer.max_steps=6", "checkpoint_every_n_steps=2", "test=false"]
    whole = _ddp_train(phantom_cache, tmp_path, tmp_path / "whole", tmp_path / "p_whole", *steps)
    assert whole.returncode == 0, whole.stderr[-4000:]
    cut = tmp_path / "cut"
    kill = [
        "+callbacks.kill._target_=fault_injection.KillAfterCheckpoint",
        "+callbacks.kill.step=4",
    ]
    killed = _ddp_train(phantom_cache, tmp_path, cut, tmp_path / "p_killed", *steps, *kill)
    assert killed.returncode != 0
    ckpt = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and len(ckpt["rng_states_per_rank"]) == 2
    resumed = _ddp_train(
        phantom_cache,
        tmp_path,
        cut,
        tmp_path / "p_resumed",
        *steps,
        f"ckpt_path={cut / 'checkpoints' / 'last.ckpt'}",
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    for rank, (ref, got) in enumerate(
        zip(_probed(tmp_path / "p_whole"), _probed(tmp_path / "p_resumed"), strict=True)
    ):
        assert [s["step"] for s in got] == [4, 5]
        assert got == ref[4:], rank
    final = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    ref = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in ref["state_dict"].items():
        assert torch.equal(final[key], value), key
