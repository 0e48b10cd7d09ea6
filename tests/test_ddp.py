"""DDP on 2 CPU processes (gloo) through the real entry point: Lightning re-launches src/train.py
for rank 1, metrics are gathered from both ranks."""

import json
import os
import subprocess
import sys

from conftest import CONF_DIR

ROOT = os.path.dirname(CONF_DIR)


def test_ddp_two_cpu_processes(phantom_cache, tmp_path):
    run_dir = tmp_path / "run"
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
        f"data.cache_dir={phantom_cache}",
        "data.auto_prepare=false",
        "data.module.num_val=2",
        "data.module.num_test=2",
        "data.module.num_labeled=1",
        "model.base_filters=4",
        f"paths.log_dir={tmp_path}/logs",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (run_dir / "train_ddp_process_1.log").exists()  # rank 1 was launched
    results = json.loads((run_dir / "test_metrics.json").read_text())
    # each rank evaluated one of the two test cases; rank 0 reports both
    assert sorted(c["case"] for c in results["per_case"]) == sorted(
        json.loads((run_dir / "split.json").read_text())["test"]
    )
    assert len(results["per_case"]) == 2
