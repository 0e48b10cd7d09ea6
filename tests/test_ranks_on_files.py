"""What several processes do to shared files: ranks that SLURM starts together prepare a missing
cache once (rank 0; the others wait), agree on one W&B run id, and never delete each other's
temporary files (pids mean nothing across the nodes of a shared file system)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from conftest import REPO_ROOT
from real_data_fixtures import write_nnunet

ROOT = REPO_ROOT

_PREPARE = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
from omegaconf import OmegaConf
from scdl.data.catalog import ensure_prepared
from scdl.utils.config import compose_config
cfg = compose_config("prepare_data", ["data=nnunet", f"data.root={sys.argv[1]}"])
print("cache", ensure_prepared(cfg.data, wait_s=300))
"""


def test_srun_ranks_prepare_a_missing_cache_once(tmp_path):
    root = write_nnunet(tmp_path, num_cases=4, num_test=1, shape=(16, 16, 12))
    env = {**os.environ, "SLURM_NTASKS": "2", "SLURM_JOB_NAME": "train", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PREPARE, str(root)],
            env={**env, "SLURM_PROCID": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (1, 0)  # rank 1 first: it must wait, not prepare
    ]
    out = {rank: p.communicate(timeout=300)[0] for rank, p in zip((1, 0), procs, strict=True)}
    assert all(p.returncode == 0 for p in procs), out
    assert "waiting for global rank 0 to prepare" in out[1] and "ready after" in out[1]
    assert "preprocess Tiny" not in out[1] and "intensity statistics" not in out[1]
    assert "waiting" not in out[0]
    cache = root / "scdl_preprocessed" / "standard"
    assert (cache / "index.json").is_file() and len(list(cache.glob("*_image.npy"))) == 5
    assert not list(cache.glob(".tmp-*"))


def test_the_wandb_run_id_file_is_created_once_under_a_race(tmp_path, monkeypatch):
    """Another rank (or a requeued job) creates the id file between this process's check and its
    write: both must log to that one W&B run (the file was overwritten with a second id)."""
    import secrets

    from scdl.loggers import wandb_run_id

    run = tmp_path / "run"
    run.mkdir()
    real = secrets.token_hex

    def racing_token(n: int) -> str:
        (run / "wandb_run_id").write_text("0ther1d\n")  # the other process wins the race
        return real(n)

    monkeypatch.setattr(secrets, "token_hex", racing_token)
    assert wandb_run_id(run) == "0ther1d"
    assert (run / "wandb_run_id").read_text() == "0ther1d\n"
    assert not list(run.glob(".tmp-*"))
    monkeypatch.setattr(secrets, "token_hex", real)
    assert wandb_run_id(run) == "0ther1d"  # and every later call


def test_temporary_files_of_other_nodes_are_left_alone(tmp_path):
    from scdl.data.prepare import _remove_stale_tmp
    from scdl.utils.files import host_tag

    dead = 2**22 + 12345  # above the usual pid_max: no such process here
    here = host_tag()
    files = {
        "mine_dead": f".tmp-{dead}@{here}-a_image.npy",
        "old_format_dead": f".tmp-{dead}-b_image.npy",
        "other_node": f".tmp-{os.getpid() + 1}@{here}x-c_image.npy",
        "other_node_old": f".tmp-{dead}@{here}x-d_image.npy",
        "mine_alive": f".tmp-{os.getppid()}@{here}-e_image.npy",
    }
    for name in files.values():
        (tmp_path / name).write_bytes(b"\0")
    day_ago = time.time() - 2 * 86400
    os.utime(tmp_path / files["other_node_old"], (day_ago, day_ago))
    _remove_stale_tmp(tmp_path)
    left = {k for k, name in files.items() if (tmp_path / name).exists()}
    assert left == {"other_node", "mine_alive"}
