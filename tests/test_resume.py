"""Resume: a run SIGKILLed right after a checkpoint write continues where that checkpoint left it,
with a continuous CSV log, one W&B run id, and the same weights as a run never interrupted."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, compose_cfg, tiny_train_overrides

ROOT = REPO_ROOT


def _train(cache: Path, tmp_path: Path, run: str, *extra: str) -> subprocess.CompletedProcess:
    overrides = [
        "experiment=phantom_mt",
        *tiny_train_overrides(cache, tmp_path),
        f"run_name={run}",
        "trainer.max_steps=8",
        "checkpoint_every_n_steps=3",
        "test=false",
        "logger=wandb",  # CSV + W&B (offline)
        *extra,
    ]
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "PYTHONPATH": str(ROOT / "tests"),
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "src" / "train.py"), *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _state(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)


def test_sigkill_after_checkpoint_then_resume(phantom_cache, tmp_path):
    runs = tmp_path / "logs" / "debug" / "runs" / "phantom_mt"
    killed = _train(
        phantom_cache,
        tmp_path,
        "interrupted",
        "+callbacks.kill._target_=fault_injection.KillAfterCheckpoint",
        "+callbacks.kill.step=3",
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    run = runs / "interrupted"
    saved = _state(run / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 3  # written right before the kill (mid-epoch: 2 steps/epoch)
    saved_teacher = {
        k[len("teacher.") :]: v for k, v in saved["state_dict"].items() if k.startswith("teacher.")
    }
    logged_before_resume = _rows(run)

    resumed = _train(
        phantom_cache,
        tmp_path,
        "interrupted",
        "resume=true",
        "+callbacks.probe._target_=fault_injection.SaveTeacherAtStart",
        f"+callbacks.probe.path={tmp_path / 'teacher_at_start.pt'}",
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = _state(run / "checkpoints" / "last.ckpt")
    assert final["global_step"] == 8
    # the resumed run started from the saved teacher
    restored = torch.load(tmp_path / "teacher_at_start.pt", weights_only=True)
    assert set(restored) == set(saved_teacher)
    assert all(torch.equal(restored[k], saved_teacher[k]) for k in restored)

    # CSV: the rows written before the kill are kept and continued, one train row per step
    rows = _rows(run)
    assert rows[: len(logged_before_resume)] == logged_before_resume or all(
        r in rows for r in logged_before_resume
    )
    train_steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert train_steps == sorted(set(train_steps)) and len(train_steps) == 8, train_steps
    # W&B: both processes logged to the run id recorded in the folder
    run_id = (run / "wandb_run_id").read_text().strip()
    offline = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(run_id) for name in offline), offline

    # the same run without interruption ends with the same weights, teacher and optimiser state
    straight = _train(phantom_cache, tmp_path, "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    ref = _state(runs / "straight" / "checkpoints" / "last.ckpt")
    assert ref["global_step"] == 8
    for key, value in ref["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), key


def test_resume_needs_a_run_name(phantom_cache, tmp_path):
    from scdl.resume import ResumeError
    from scdl.training import train

    cfg = compose_cfg(
        ["experiment=phantom_mt", *tiny_train_overrides(phantom_cache, tmp_path), "resume=true"],
        output_dir=tmp_path / "run",
    )
    with pytest.raises(ResumeError, match="run_name=<folder name>"):
        train(cfg)


def test_pickled_checkpoint_is_refused_with_the_file_named(phantom_cache, tmp_path):
    from functools import partial

    from scdl.resume import ResumeError
    from scdl.training import train

    bad = tmp_path / "old.ckpt"
    torch.save({"global_step": 1, "hyper_parameters": {"optimizer": partial(torch.optim.SGD)}}, bad)
    cfg = compose_cfg(
        [
            "experiment=phantom_mt",
            *tiny_train_overrides(phantom_cache, tmp_path),
            f"ckpt_path={bad}",
        ],
        output_dir=tmp_path / "run",
    )
    with pytest.raises(ResumeError, match="old.ckpt cannot be resumed from: .*pickled Python"):
        train(cfg)


def _fake_best(path: Path, score: float, step: int) -> None:
    key = "BestCheckpoint{'monitor': 'val/dice', 'mode': 'max', 'every_n_train_steps': 0}"
    state = {"monitor": "val/dice", "best_k_models": {str(path): torch.tensor(score)}}
    torch.save({"global_step": step, "callbacks": {key: state}, "state_dict": {}}, path)


def test_best_checkpoint_is_chosen_by_recorded_score_not_time(tmp_path):
    from scdl.runs import resolve_checkpoint

    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    _fake_best(ckpts / "best-step000200-dice0.6000.ckpt", 0.6, 200)
    _fake_best(ckpts / "best-step000300-dice0.4000.ckpt", 0.4, 300)  # newer, worse
    os.utime(ckpts / "best-step000200-dice0.6000.ckpt", (1, 1))
    assert resolve_checkpoint(tmp_path / "run").name == "best-step000200-dice0.6000.ckpt"


def test_resume_sets_aside_best_checkpoints_of_the_discarded_timeline(tmp_path):
    from scdl.resume import set_aside_orphans
    from scdl.runs import resolve_checkpoint

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    _fake_best(ckpts / "best-step000100-dice0.3000.ckpt", 0.3, 100)
    # written by the killed run after its last.ckpt: a state the resumed run never had
    _fake_best(ckpts / "best-step000150-dice0.9000.ckpt", 0.9, 150)
    last = ckpts / "last.ckpt"
    key = "BestCheckpoint{'monitor': 'val/dice', 'mode': 'max', 'every_n_train_steps': 0}"
    known = {str(ckpts / "best-step000100-dice0.3000.ckpt"): torch.tensor(0.3)}
    torch.save({"global_step": 120, "callbacks": {key: {"best_k_models": known}}}, last)
    moved = set_aside_orphans(ckpts, last)
    assert [p.name for p in moved] == ["best-step000150-dice0.9000.ckpt"]
    assert (ckpts / "discarded" / "best-step000150-dice0.9000.ckpt").is_file()
    assert resolve_checkpoint(tmp_path).name == "best-step000100-dice0.3000.ckpt"


def test_resumed_run_tests_the_checkpoint_the_uninterrupted_run_tests(phantom_cache, tmp_path):
    """Validation at every step, the best score at step 3, SIGKILL right after the step-3
    validation (its last.ckpt written): the resumed run keeps best-step3 (it was set aside as an
    orphan when last.ckpt was written before the best one) and tests it, with the test metrics
    of the uninterrupted run, bitwise."""
    import json

    runs = tmp_path / "logs" / "debug" / "runs" / "phantom_mt"
    common = [
        "trainer.max_steps=5",
        "checkpoint_every_n_steps=0",
        "data.module.iters_per_epoch=1",  # validation after every step
        "test=true",
        "logger=csv",
        "+callbacks.score._target_=fault_injection.ScriptedScore",
        "+callbacks.score.scores=[0.048,0.232,0.247,0.242,0.243]",
    ]
    killed = _train(
        phantom_cache,
        tmp_path,
        "cut",
        *common,
        "+callbacks.kill._target_=fault_injection.KillAfterCheckpoint",
        "+callbacks.kill.step=3",
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    ckpts = runs / "cut" / "checkpoints"
    assert _state(ckpts / "last.ckpt")["global_step"] == 3
    resumed = _train(phantom_cache, tmp_path, "cut", *common, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = _train(phantom_cache, tmp_path, "whole", *common)
    assert straight.returncode == 0, straight.stderr[-3000:]

    def outcome(run: str) -> tuple[str, dict]:
        record = json.loads((runs / run / "finished.json").read_text())["metrics"]
        tested = Path(record["best_ckpt"]).name
        test = {k: v for k, v in record.items() if k.startswith("test/")}
        return tested, test

    (tested, test), (ref_tested, ref_test) = outcome("cut"), outcome("whole")
    assert ref_tested.startswith("best-step000003")
    assert tested == ref_tested
    assert test and test == ref_test
    assert not (ckpts / "discarded").exists()


def test_last_checkpoint_runs_after_the_best_checkpoint_whatever_the_config_order(tmp_path):
    from types import SimpleNamespace

    from scdl.callbacks.checkpoints import BestCheckpoint, LastCheckpoint

    last = LastCheckpoint(tmp_path)
    best = BestCheckpoint(dirpath=tmp_path, monitor="val/dice", mode="max")
    trainer = SimpleNamespace(callbacks=[last, best])
    last.setup(trainer, None, "fit")
    assert trainer.callbacks == [best, last]
    assert best._should_save_on_train_epoch_end(trainer) is False  # saved at validation end


@pytest.mark.parametrize(
    ("damage", "cause"),
    [
        (lambda b: b[: len(b) // 2], "is truncated or not a PyTorch checkpoint"),
        (lambda b: b"", "is empty"),
        (lambda b: b"<html>proxy error</html>", "is truncated or not a PyTorch checkpoint"),
    ],
)
def test_a_damaged_last_checkpoint_is_named_with_the_checkpoints_to_resume_from(
    tmp_path, damage, cause
):
    """resume=true on a cut-short last.ckpt (an interrupted copy) says so and lists the run's
    other checkpoints; it blamed "pickled objects" and suggested eval.py."""
    from omegaconf import OmegaConf

    from scdl.resume import ResumeError, plan_resume

    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    _fake_best(ckpts / "best-step000002-dice0.5000.ckpt", 0.5, 2)
    _fake_best(ckpts / "last.ckpt", 0.5, 4)
    last = ckpts / "last.ckpt"
    last.write_bytes(damage(last.read_bytes()))
    cfg = OmegaConf.create({"resume": True, "run_name": "run", "ckpt_path": None})
    with pytest.raises(ResumeError) as err:
        plan_resume(cfg, tmp_path / "run")
    text = str(err.value)
    assert f"{last} {cause}" in text and "pickled" not in text
    assert "Other checkpoints in" in text and "best-step000002-dice0.5000.ckpt" in text


def test_resume_with_a_larger_max_steps_continues_a_finished_run(phantom_cache, tmp_path):
    """resume=true trainer.max_steps=6 on a run that finished at step 4 trains steps 5-6 from its
    last.ckpt, tests again and says how the lr schedule continues (it warned and did nothing)."""
    import json

    runs = tmp_path / "logs" / "debug" / "runs" / "phantom_mt"
    common = ["checkpoint_every_n_steps=0", "test=true", "logger=csv"]
    first = _train(phantom_cache, tmp_path, "grow", *common, "trainer.max_steps=4")
    assert first.returncode == 0, first.stderr[-3000:]
    run = runs / "grow"
    assert json.loads((run / "finished.json").read_text())
    again = _train(phantom_cache, tmp_path, "grow", *common, "trainer.max_steps=4", "resume=true")
    assert again.returncode == 0 and "nothing to do" in again.stderr + again.stdout
    assert "a larger trainer.max_steps continues it" in again.stderr + again.stdout
    longer = _train(phantom_cache, tmp_path, "grow", *common, "trainer.max_steps=6", "resume=true")
    out = longer.stderr + longer.stdout
    assert longer.returncode == 0, out[-3000:]
    assert "finished at step 4; continuing it" in out and "x the base lr" in out
    assert _state(run / "checkpoints" / "last.ckpt")["global_step"] == 6
    assert (run / "finished-step4.json").is_file()
    assert "test/dice" in json.loads((run / "finished.json").read_text())["metrics"]
    train_steps = [int(r["step"]) for r in _rows(run) if r.get("train/loss")]
    assert train_steps == list(range(6)), train_steps


def test_prediction_leaves_the_random_streams_alone():
    """Validation ran the SCDL plug-in, which drew from the global stream: a run resumed from the
    checkpoint written right before a validation then drew other noise than the uninterrupted run
    (tests/test_ddp.py resumes such a checkpoint on 2 ranks)."""
    from test_step_pin import _module

    module = _module("mean_teacher", "head").eval()
    image = torch.randn(1, 1, 24, 24, 24)
    before = torch.get_rng_state()
    probs = module.predict_volume(image)
    assert probs.shape == (1, 4, 24, 24, 24)
    assert torch.equal(torch.get_rng_state(), before)
