"""Sweeps: the paper table (built from runs, and the whole sweep interrupted and resumed), resume in
sweeps, one GPU per joblib job, the SLURM launcher's parameters and requeue hook, Optuna."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import CONF_DIR, REPO_ROOT, compose_cfg, tiny_train_overrides
from scdl.utils.config import conf_dir

ROOT = REPO_ROOT
CLASSES = ["big", "mid", "small"]


# --- the paper table from run folders ---------------------------------------------------------------
def _fake_run(
    root: Path,
    name: str,
    method: str,
    seed: int,
    dice: list[float],
    asd: float,
    cache: Path,
    ablation: str | None = None,
    data: str = "phantom",
) -> Path:
    """A finished run folder: config, split and eval/test_paper results of two cases whose
    per-class Dice are ``dice`` and ``dice`` shifted by 0.1 (case means differ by 0.1)."""
    from omegaconf import OmegaConf

    from scdl.metrics.results import aggregate_metrics, save_metrics

    run = root / name
    (run / ".hydra").mkdir(parents=True)
    cfg = {
        "method_name": method,
        "experiment_name": method.lower().replace(" ", "_"),
        "ablation_name": ablation or ("full" if "SCDL" in method else "baseline"),
        "seed": seed,
        "paths": {"output_dir": "?"},
        "data": {"name": data, "cache_dir": str(cache)},
    }
    OmegaConf.save(OmegaConf.create(cfg), run / ".hydra" / "config.yaml")
    (run / "split.json").write_text(json.dumps({"labeled": ["c0"], "unlabeled": [], "test": []}))
    cases = [
        {"dice": np.array(dice), "asd": np.full(3, asd)},
        {"dice": np.array(dice) + 0.1, "asd": np.full(3, asd)},
    ]
    summary = aggregate_metrics(cases, CLASSES, ["t0", "t1"], "paper")
    save_metrics(summary, run / "eval" / "test_paper")
    return run


@pytest.fixture
def label_cache(tmp_path) -> Path:
    """One labeled case: 100 voxels of class 1, 30 of class 2, 5 of class 3."""
    cache = tmp_path / "cache"
    cache.mkdir()
    label = np.zeros(200, dtype=np.uint8)
    label[:100], label[100:130], label[130:135] = 1, 2, 3
    np.save(cache / "c0_label.npy", label)
    return cache


def test_paper_table_rows_are_methods_with_mean_and_sample_std_over_seeds(tmp_path, label_cache):
    from scdl.reporting.paper_table import build_table, to_markdown, write_csv
    from scdl.reporting.records import collect_runs

    sweep = tmp_path / "sweep"
    _fake_run(sweep, "0", "Mean teacher + SCDL", 1, [0.5, 0.4, 0.0], 10.0, label_cache)
    _fake_run(sweep, "1", "Mean teacher + SCDL", 2, [0.7, 0.4, 0.2], 20.0, label_cache)
    _fake_run(sweep, "2", "Mean teacher", 1, [0.6, 0.3, 0.0], 30.0, label_cache)
    table = build_table(collect_runs([sweep]), k=1)
    assert [r["method"] for r in table["rows"]] == ["Mean teacher", "Mean teacher + SCDL"]
    scdl = table["rows"][1]
    # per-run Avg Dice: mean over cases of the case means = (0.3 + 0.4)/2 = 0.35 and 0.486..
    run_means = [np.mean([0.3, 0.4]), np.mean([np.mean([0.7, 0.4, 0.2]), np.mean([0.8, 0.5, 0.3])])]
    assert scdl["dice"][0] == pytest.approx(np.mean(run_means))
    assert scdl["dice"][1] == pytest.approx(np.std(run_means, ddof=1))  # sample std, not population
    assert scdl["per_class"]["small"][0] == pytest.approx(np.mean([0.05, 0.25]))
    assert scdl["asd"][:2] == pytest.approx((15.0, np.std([10.0, 20.0], ddof=1)))
    assert table["rows"][0]["dice"][1] is None  # one seed: no spread
    # ablation=baseline of an SCDL experiment is the framework without SCDL
    from omegaconf import OmegaConf

    from scdl.reporting.records import method_label

    label = {"method_name": "GA-CPS + SCDL", "ablation_name": "baseline"}
    assert method_label(OmegaConf.create(label)) == "GA-CPS"
    label["ablation_name"] = "no_sac"
    assert method_label(OmegaConf.create(label)) == "GA-CPS + SCDL (no_sac)"
    assert table["minority"] == ["small"]  # fewest labeled voxels, from the cache
    md = to_markdown(table)
    assert "| Mean teacher + SCDL | 1,2 |" in md and "small*" in md and "ddof=1" in md
    assert f"{np.mean(run_means) * 100:.1f} ± {np.std(run_means, ddof=1) * 100:.1f}" in md
    write_csv(table, tmp_path / "t.csv")
    header = (tmp_path / "t.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == ["method", "seeds", "n", "dice_mean", "dice_std", "asd_mean", "asd_std"]


def test_paper_table_refuses_runs_with_different_classes(tmp_path, label_cache):
    from scdl.reporting.paper_table import build_table
    from scdl.reporting.records import collect_runs

    _fake_run(tmp_path / "s", "0", "Mean teacher", 1, [0.5, 0.4, 0.0], 1.0, label_cache)
    run = _fake_run(tmp_path / "s", "1", "DHC", 1, [0.5, 0.4, 0.0], 1.0, label_cache)
    path = run / "eval" / "test_paper" / "metrics.json"
    m = json.loads(path.read_text())
    m["classes"] = ["a", "b", "c"]
    m["per_class"] = dict(zip(["a", "b", "c"], m["per_class"].values(), strict=True))
    path.write_text(json.dumps(m))
    with pytest.raises(ValueError, match="classes differ"):
        build_table(collect_runs([tmp_path / "s"]))


def test_paper_table_pairs_each_scdl_row_with_its_framework(tmp_path, label_cache, caplog):
    """SCDL rows vs the framework without SCDL, paired by seed and case: every case gains 0.1 mean
    Dice and 0.3 on the minority class; with 2 seeds x 2 cases there is no interval, only the
    difference and why (a bootstrap over 2 cases printed a '95 % CI' before); a row without a
    common seed is left out with a warning."""
    from scdl.reporting.paper_table import build_table, to_markdown, write_paired_csv
    from scdl.reporting.records import collect_runs

    sweep = tmp_path / "sweep"
    _fake_run(sweep, "0", "Mean teacher", 1, [0.6, 0.3, 0.0], 1.0, label_cache)
    _fake_run(sweep, "1", "Mean teacher", 2, [0.5, 0.5, 0.2], 1.0, label_cache)
    _fake_run(sweep, "2", "Mean teacher + SCDL", 2, [0.5, 0.5, 0.5], 1.0, label_cache)
    _fake_run(sweep, "3", "Mean teacher + SCDL", 1, [0.6, 0.3, 0.3], 1.0, label_cache)
    _fake_run(sweep, "4", "Mean teacher + SCDL", 3, [0.6, 0.3, 0.3], 1.0, label_cache, "plus")
    table = build_table(collect_runs([sweep]), k=1)
    (pair,) = table["paired"]
    assert pair["method"] == "Mean teacher + SCDL" and pair["baseline"] == "Mean teacher"
    assert pair["mean"]["seeds"] == [1, 2] and pair["mean"]["num_cases"] == 2
    assert pair["mean"]["diff"] == pytest.approx(0.1)
    assert pair["mean"]["ci"] is None and not pair["mean"]["claimed"]
    assert pair["minority"]["diff"] == pytest.approx(0.3)
    assert pair["mean"]["wilcoxon_p"] == pytest.approx(0.5)  # 2 cases: the smallest exact p
    assert "Mean teacher + SCDL (plus)" in caplog.text and "no seed" in caplog.text
    md = to_markdown(table)
    assert (
        "| Mean teacher + SCDL | Mean teacher | 1,2 | 2 | +10.0 (no interval: 2 seeds (an interval "
        "needs 3) and 2 test cases (needs 5)) | – |" in md
    )
    write_paired_csv(table, tmp_path / "p.csv")
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert (
        lines[0].startswith("method,baseline,seeds,cases,dice_diff,dice_ci_lo,dice_ci_hi,dice_p,")
        and len(lines) == 2
    )


def test_paper_table_refuses_two_data_sets_and_two_runs_of_one_seed(tmp_path, label_cache):
    """One row per method over seeds: runs of another data set, or a second run of a seed, would
    be averaged in and paired with the wrong run (a seed-keyed dict keeps the last one)."""
    from scdl.reporting.paper_table import MixedRunsError, build_table, main
    from scdl.reporting.records import collect_runs

    sweep = tmp_path / "mixed"
    _fake_run(sweep, "0", "Mean teacher", 1, [0.6, 0.3, 0.0], 1.0, label_cache)
    _fake_run(sweep, "1", "Mean teacher", 1, [0.5, 0.3, 0.0], 1.0, label_cache, data="heldout")
    with pytest.raises(MixedRunsError, match=r"2 data sets \(heldout, phantom\)"):
        build_table(collect_runs([sweep]))
    twice = tmp_path / "twice"
    first = _fake_run(twice, "a", "Mean teacher", 1, [0.6, 0.3, 0.0], 1.0, label_cache)
    second = _fake_run(twice, "b", "Mean teacher", 1, [0.5, 0.3, 0.0], 1.0, label_cache)
    with pytest.raises(SystemExit, match="seed 1 has 2 runs") as err:
        main([str(twice)])
    assert str(first) in str(err.value) and str(second) in str(err.value)
    assert "run the sweep" not in str(err.value)  # not the advice for a folder without results


# --- resume: a finished run is not trained again ---------------------------------------------------
def test_resume_of_a_finished_run_says_so_and_does_nothing(phantom_cache, tmp_path, caplog):
    from scdl.runs import mark_finished
    from scdl.training import train

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    mark_finished(run_dir, {"test/dice": 0.5, "best_ckpt": "x.ckpt", "skip": [1]})
    before = sorted(p.name for p in run_dir.iterdir())
    overrides = [*tiny_train_overrides(phantom_cache, tmp_path), "resume=true", "run_name=run"]
    cfg = compose_cfg(["experiment=phantom_mt", *overrides], output_dir=run_dir)
    with caplog.at_level("WARNING"):
        metrics = train(cfg)
    assert metrics == {"test/dice": 0.5, "best_ckpt": "x.ckpt"}
    assert "finished at" in caplog.text and "nothing to do" in caplog.text
    assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing written


# --- joblib: one GPU per job -------------------------------------------------------------------------
def test_sweep_gpus_from_list_count_or_the_shell(monkeypatch):
    from scdl.utils.hardware import ALL_GPUS_ENV, sweep_gpus

    monkeypatch.delenv(ALL_GPUS_ENV, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert sweep_gpus([0, 2]) == ["0", "2"]
    monkeypatch.delenv(ALL_GPUS_ENV)
    assert sweep_gpus(3) == ["0", "1", "2"]
    monkeypatch.delenv(ALL_GPUS_ENV)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert sweep_gpus("auto") == ["4", "5"]
    # a reused worker whose CUDA_VISIBLE_DEVICES was narrowed by its first job keeps the full list
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert sweep_gpus("auto") == ["4", "5"]


def test_explicit_job_gpus_index_the_gpus_the_shell_makes_visible(monkeypatch):
    """job_gpus=[0,2] under CUDA_VISIBLE_DEVICES=4,5,6,7 (a SLURM allocation, a shared node) is
    GPUs 4 and 6; it was 0 and 2, GPUs of someone else."""
    from scdl.utils.errors import InputError
    from scdl.utils.hardware import ALL_GPUS_ENV, sweep_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    for job_gpus, expected in (
        ([0, 2], ["4", "6"]),
        (2, ["4", "5"]),
        ("auto", ["4", "5", "6", "7"]),
    ):
        monkeypatch.delenv(ALL_GPUS_ENV, raising=False)
        assert sweep_gpus(job_gpus) == expected, job_gpus
    monkeypatch.delenv(ALL_GPUS_ENV, raising=False)
    with pytest.raises(InputError, match=r"job_gpus=\[4, 6\]: \[4, 6\] beyond the 4 GPUs"):
        sweep_gpus([4, 6])


_CLAIM = """
import sys, time
from pathlib import Path
from scdl.utils.hardware import claim_job_gpu
gpus = ["0", "1", "2"]
first = claim_job_gpu(int(sys.argv[1]), gpus, Path(sys.argv[2]))
again = claim_job_gpu(int(sys.argv[1]) + 1, gpus, Path(sys.argv[2]))  # a reused worker
print(first, again, flush=True)
time.sleep(float(sys.argv[3]))
"""


def test_each_job_claims_its_own_gpu_from_its_number(tmp_path):
    """Job n prefers GPU n mod N; a GPU held by a live worker is never given twice; a worker keeps
    its first GPU for later jobs (CUDA cannot switch devices once started)."""

    def start(job: int, hold: float) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", _CLAIM, str(job), str(tmp_path / "locks"), str(hold)],
            stdout=subprocess.PIPE,
            text=True,
        )

    a = start(1, 5.0)
    first = a.stdout.readline().split()
    b = start(1, 0.0)  # wants GPU 1 too, which worker a holds
    second = b.stdout.readline().split()
    c = start(0, 0.0)
    third = c.stdout.readline().split()
    for p in (a, b, c):
        p.wait(timeout=30)
    assert first == ["1", "1"]  # job 1 -> GPU 1; the same worker keeps it for its next job
    assert second[0] == "2"  # GPU 1 busy: the next free one
    assert third[0] == "0"


def test_joblib_launcher_config_pins_gpus():
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    cfg = _compose_with_hydra(["launcher=joblib", "hydra.launcher.n_jobs=4"])
    assert cfg.job_gpus == "auto"
    assert cfg.hydra.launcher.n_jobs == 4
    assert "JoblibLauncher" in cfg.hydra.launcher._target_


# --- SLURM: parameters and the requeue hook ------------------------------------------------------
def _compose_with_hydra(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from scdl.utils.config import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


def test_slurm_launcher_starts_one_task_per_gpu_on_every_node_and_requeues():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.utils import instantiate

    cfg = _compose_with_hydra(
        [
            "experiment=amos_scdl",
            "launcher=slurm",
            "trainer=ddp",
            "trainer.devices=4",
            "trainer.num_nodes=2",
            "hydra.launcher.partition=gpu",
        ]
    )
    lc = cfg.hydra.launcher
    assert "SlurmLauncher" in lc._target_
    assert (lc.nodes, lc.tasks_per_node, lc.gpus_per_node) == (2, 4, 4)  # SLURM starts the ranks
    assert lc.partition == "gpu" and lc.max_num_timeout > 0 and lc.signal_delay_s > 0
    assert cfg.resume is True  # a requeued job continues its last.ckpt
    (plugin,) = cfg.trainer.plugins
    env = instantiate(plugin)
    assert type(env).__name__ == "SLURMEnvironment" and env.auto_requeue is False
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.num_nodes == 2

    # submitit calls launcher.checkpoint(*args) on time-out / preemption: it must resubmit the same
    # job (same overrides, same job number -> same folder, where resume=true continues last.ckpt)
    import submitit
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    launcher = SlurmLauncher(**{k: v for k, v in lc.items() if k != "_target_"})
    args = (["experiment=amos_scdl", "seed=1"], "hydra.sweep.dir", 3, "job_id_for_3", {})
    resubmission = launcher.checkpoint(*args)
    assert isinstance(resubmission, submitit.helpers.DelayedSubmission)
    assert resubmission.function is launcher and resubmission.args == args


# --- the whole paper-table sweep, interrupted and resumed -----------------------------------------
def _sweep_experiments(sweep: str, data: str = "phantom") -> list[str]:
    """The experiments a sweep config lists (its ``${data.name}`` filled in)."""
    cfg = OmegaConf.load(Path(CONF_DIR) / "sweep" / f"{sweep}.yaml")
    listed = OmegaConf.to_container(cfg.hydra.sweeper.params)["experiment"]  # not resolved
    return [e.replace("${data.name}", data) for e in listed.split(",")]


def test_paper_table_lists_every_method_with_and_without_scdl_and_baselines_without():
    from scdl.reporting.paper_table import METHOD_ORDER

    existing = {p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml")}
    for data in ("phantom", "amos", "synapse"):
        table = _sweep_experiments("paper_table", data)
        assert set(table) <= existing and len(table) == len(set(table)) == len(METHOD_ORDER)
        plain = [e for e in table if not e.endswith("_scdl")]
        with_scdl = {f"{data}_scdl" if e == f"{data}_mt" else f"{e}_scdl" for e in plain}
        assert with_scdl == set(table) - set(plain)  # each with and without
        assert _sweep_experiments("baselines", data) == plain
    cfg = compose_cfg(["sweep=baselines", "data=phantom"])
    assert cfg.sweep_name == "baselines/phantom" and cfg.post_eval == ["paper"]


def _sweep_cmd(cache: Path, tmp_path: Path) -> list[str]:
    tiny = [o for o in tiny_train_overrides(cache, tmp_path) if not o.startswith("paths.")]
    return [
        sys.executable,
        str(ROOT / "src" / "train.py"),
        "sweep=paper_table",
        "data=phantom",
        *tiny,
        f"paths.log_dir={tmp_path}/logs",
        "seed=1",  # one job per method; the spread over seeds is tested on hand-made runs above
        "data.module.patch_size=[48,48,48]",  # GA-MagicNet: 3 cubes per axis, 16 voxels each
        "trainer.max_steps=4",
        "checkpoint_every_n_steps=2",
    ]


@pytest.mark.slow
def test_interrupted_paper_table_sweep_resumes_and_completes(phantom_cache, tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    sweep = tmp_path / "logs" / "debug" / "multiruns" / "paper_table" / "phantom"
    cmd = _sweep_cmd(phantom_cache, tmp_path)
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.time() + 600
    # interrupt once 2 jobs finished and the 3rd has written a checkpoint
    while time.time() < deadline and proc.poll() is None:
        done = list(sweep.glob("*/finished.json"))
        if len(done) >= 2 and list(sweep.glob("2_*/checkpoints/last.ckpt")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished_before = {p.parent.name for p in sweep.glob("*/finished.json")}
    assert not (sweep / "paper_table.md").exists()

    t0 = time.time()
    jobs = len(_sweep_experiments("paper_table"))  # about 30 s each on 2 idle cores
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120 * jobs)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    out = rerun.stdout + rerun.stderr
    for name in finished_before:  # skipped, not trained again
        assert f"{name} finished at" in out
    # the interrupted job continued its own last.ckpt
    assert re.search(r"resuming from \S*/2_phantom_\w+_seed1/checkpoints/last.ckpt", out)
    runs = sorted(p.parent.name for p in sweep.glob("*/finished.json"))
    assert len(runs) == len(_sweep_experiments("paper_table"))  # every method x 1 seed
    table = (sweep / "paper_table.md").read_text()
    from scdl.reporting.paper_table import METHOD_ORDER  # every framework, with and without SCDL

    for method in METHOD_ORDER:
        assert f"| {method} | 1 |" in table
    assert (sweep / "paper_table.csv").is_file() and (sweep / "paper_table.png").is_file()
    print(f"rerun of the interrupted sweep: {time.time() - t0:.0f} s")


# --- Optuna -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_optuna_sweep_runs_trials_and_resumes_its_study(phantom_cache, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    import optuna

    tiny = [o for o in tiny_train_overrides(phantom_cache, tmp_path) if not o.startswith("paths.")]
    cmd = [
        sys.executable,
        str(ROOT / "src" / "train.py"),
        "sweep=hpo_scdl",
        *tiny,
        f"paths.log_dir={tmp_path}/logs",
        "hydra.sweeper.n_trials=2",
        "trainer.max_steps=2",
        "optimized_metric=best/val/dice_minority",  # the minority classes' objective
    ]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    for _ in range(2):  # the second command adds trials to the stored study
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    sweep = tmp_path / "logs" / "debug" / "multiruns" / "hpo_scdl" / "phantom_scdl"
    study = optuna.load_study(
        study_name="hpo_scdl/phantom_scdl", storage=f"sqlite:///{sweep}/optuna.db"
    )
    finished = [t for t in study.trials if t.value is not None]
    assert len(finished) == 4 and study.direction.name == "MAXIMIZE"
    assert all(0.0 <= t.value <= 1.0 for t in finished)  # best validation Dice of each trial
    # the objective is the best val/dice_minority that the trial's CSV log holds
    import csv

    trial_dirs = sorted(sweep.glob("trial_*"))
    assert len(trial_dirs) == 4
    logged = []
    for d in trial_dirs:
        rows = list(csv.DictReader((d / "csv" / "metrics.csv").open()))
        logged.append(max(float(r["val/dice_minority"]) for r in rows if r["val/dice_minority"]))
    assert sorted(logged) == pytest.approx(sorted(t.value for t in finished))
    assert (sweep / "optuna_results.png").is_file()
    assert len((sweep / "optuna_trials.csv").read_text().splitlines()) == 5


def test_paper_table_files_and_wandb_summary_run(tmp_path, label_cache, monkeypatch):
    """write_paper_table: Markdown, CSV, figure, and an offline W&B summary run in the sweep's group
    holding the table, the figure and one per-class bar chart per method."""
    from scdl.reporting.paper_table import write_paper_table

    sweep = tmp_path / "sweep"
    _fake_run(sweep, "0", "Mean teacher", 1, [0.6, 0.3, 0.0], 30.0, label_cache)
    _fake_run(sweep, "1", "Mean teacher + SCDL", 1, [0.5, 0.4, 0.1], 10.0, label_cache)
    monkeypatch.setenv("WANDB_MODE", "offline")
    files = write_paper_table([sweep], sweep, k=1, wandb_group="paper_table/test")
    assert all(p.is_file() for p in files.values())
    assert files["paired_png"] == sweep / "paper_table_paired.png"
    (run,) = sweep.glob("wandb/offline-run-*")
    media = [
        str(p.relative_to(run / "files" / "media")) for p in (run / "files" / "media").rglob("*.*")
    ]
    assert any(m.startswith("table/paper_table/table_") for m in media)  # the table
    assert any(m.startswith("images/paper_table/per_class_figure") for m in media)
    for method in ("Mean teacher", "Mean teacher + SCDL"):  # a bar chart (its table) per method
        assert any(m.startswith(f"table/paper_table/per_class/{method}_table") for m in media)
    # the bar-chart panels are declared in the run's config, inside the offline .wandb file, which
    # W&B's writer process may still be flushing when finish() returns (seen under load: only the
    # 7-byte header): wait for it
    (record,) = run.glob("run-*.wandb")
    deadline = time.time() + 30
    while time.time() < deadline and b"paired/Mean teacher + SCDL/dice_diff" not in (
        record.read_bytes()
    ):
        time.sleep(0.5)
    assert b"paper_table/avg_dice" in record.read_bytes()
    assert any(m.startswith("table/paper_table/paired_") for m in media)  # paired statistics
    assert b"paired/Mean teacher + SCDL/dice_diff" in record.read_bytes()
    assert files["paired_csv"].read_text().count("\n") == 2
    assert any(m.startswith("images/paper_table/paired_figure") for m in media)


def test_run_config_of_a_run_without_paths_loads(tmp_path):
    """A saved config without ``paths`` (older or hand-made runs) loads; one with it gets the
    run folder as output_dir; a folder without a config is None."""
    from omegaconf import OmegaConf

    from scdl.runs import load_config as run_config

    (tmp_path / "a" / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"seed": 3}), tmp_path / "a" / ".hydra" / "config.yaml")
    assert run_config(tmp_path / "a").seed == 3
    (tmp_path / "b" / ".hydra").mkdir(parents=True)
    cfg = {"paths": {"output_dir": "${hydra:runtime.output_dir}"}}
    OmegaConf.save(OmegaConf.create(cfg), tmp_path / "b" / ".hydra" / "config.yaml")
    assert run_config(tmp_path / "b").paths.output_dir == str(tmp_path / "b")
    assert run_config(tmp_path / "c") is None


# --- a sweep checks every job before the first trains; a failed job leaves the table of the rest ---
def _multirun(
    cache: Path, tmp_path: Path, *overrides: str, drop: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """``train.py -m`` on the tiny phantom with ``overrides`` (the tiny ones starting with a
    prefix in ``drop`` left out), logs under ``tmp_path/logs``."""
    tiny = [o for o in tiny_train_overrides(cache, tmp_path) if not o.startswith(("paths.", *drop))]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    cmd = [sys.executable, str(ROOT / "src" / "train.py"), "-m", *tiny, *overrides]
    cmd.append(f"paths.log_dir={tmp_path}/logs")
    return subprocess.run(
        cmd, env={**env, "WANDB_MODE": "disabled"}, capture_output=True, text=True, timeout=600
    )


def test_a_sweep_with_one_bad_job_config_starts_no_job(phantom_cache, tmp_path):
    """GA-MagicNet cannot take a 32^3 patch: the sweep stops before job #0 trains (it trained
    every job before the bad one, then stopped)."""
    res = _multirun(
        phantom_cache,
        tmp_path,
        "experiment=phantom_mt,phantom_magicnet",
        "data.module.patch_size=[32,32,32]",
        "sweep_name=bad",
    )
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "Traceback" not in out, out[-3000:]
    assert "1 of 2 sweep jobs have config errors; nothing was started" in out
    assert re.search(r"job #1 \(.*experiment=phantom_magicnet", out) and "multiples of 48" in out
    assert not list((tmp_path / "logs").rglob("*.ckpt"))


@pytest.mark.slow
def test_a_failed_job_leaves_the_paper_table_of_the_finished_ones(phantom_cache, tmp_path):
    """The second job fails at run time (99 labeled cases of a 6-case data set): the first job's
    row is in paper_table.md although Hydra stops before on_multirun_end."""
    res = _multirun(
        phantom_cache,
        tmp_path,
        "experiment=phantom_mt",
        "data.module.num_labeled=2,99",
        "trainer.max_steps=2",
        "sweep_name=partial",
        "post_eval=[paper]",
        "+hydra.callbacks.paper_table._target_=scdl.sweeps.PaperTable",
        drop=("data.module.num_labeled",),
    )
    assert res.returncode == 1, (res.stdout + res.stderr)[-3000:]
    table = tmp_path / "logs" / "debug" / "multiruns" / "partial" / "paper_table.md"
    assert table.is_file() and "| Mean teacher | 1337 |" in table.read_text()


def test_optuna_results_come_from_optunas_own_tools(tmp_path):
    """The trials table is study.trials_dataframe (finished trials), the plots Optuna's
    optimisation history and slice plot."""
    optuna = pytest.importorskip("optuna")
    from scdl.sweeps import write_optuna_results

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize", study_name="t")

    def objective(trial):
        w = trial.suggest_float("w_sac", 0.0, 1.0)
        if trial.number == 2:
            raise optuna.TrialPruned()  # not a finished trial: not in the table
        return 1.0 - (w - 0.3) ** 2

    study.optimize(objective, n_trials=5)
    paths = write_optuna_results(study, tmp_path)
    lines = paths["csv"].read_text().splitlines()
    assert lines[0] == "number,value,params_w_sac,state" and len(lines) == 1 + 4
    assert all(line.endswith(",COMPLETE") for line in lines[1:])
    for key in ("png", "slice_png"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
