"""bench/gpu_check.py, the one script to run when a GPU is at hand: without CUDA it says so and
exits 0; ``--smoke`` runs its code path on the CPU at a toy size (every framework, two
precisions), so the script is known to work before a GPU is lent."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "bench" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: make gpu-check runs it")
def test_without_cuda_it_says_so_and_exits_0():
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "no CUDA device here" in res.stdout


@pytest.mark.slow  # 40 s; make test-all runs it (and make gpu-check on a GPU)
def test_smoke_run_on_cpu_fills_every_row(tmp_path):
    out = tmp_path / "check.json"
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert {(r["experiment"], r["precision"]) for r in rows} == {
        (e, p)
        for e in ("amos_scdl", "amos_cps_scdl", "amos_dhc", "amos_magicnet_scdl")
        for p in ("32-true", "bf16-mixed")
    }
    assert all(r["s_per_step"] > 0 and r["steps"] == 2 for r in rows)
    assert "| GA-MagicNet + SCDL | bf16-mixed | 1 |" in res.stdout
