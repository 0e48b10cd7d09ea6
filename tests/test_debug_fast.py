"""``debug=fast``, the documented way to check that an experiment starts, runs every experiment of
``conf/experiment``: its config passes the checks, its module is built, and Lightning trains it
for 2 steps on batches of the debug patch size (random data: the AMOS / Synapse experiments need
no download). The slow variant trains, validates and tests each phantom experiment on the tiny
phantom through ``train()``."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from conftest import CONF_DIR, compose_cfg, semi_batch, tiny_train_overrides

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
NUM_CLASSES = {"phantom": 14, "synapse": 14, "amos": 16}


class _RandomBatches(L.LightningDataModule):
    """``steps`` training batches of the data module's layout (no validation), with a split of
    16 unlabeled case ids (what Adsh's window and Acisis's epoch are sized from)."""

    def __init__(self, num_classes: int, size: int, steps: int) -> None:
        super().__init__()
        self.batches = [semi_batch(num_classes, size, seed) for seed in range(steps)]
        self.split = SimpleNamespace(labeled=["l0", "l1"], unlabeled=[f"u{i}" for i in range(16)])
        self.unlabeled_bs = int(self.batches[0]["unlabeled"]["image"].shape[0])

    def init_count_weights(self, module: L.LightningModule) -> None:
        """Class weights initialised from the labeled set's voxel counts (CReST, SimiS, CLD,
        DHC's DistDW), read by the framework from scdl's cache, from these batches' labels."""
        labels = torch.cat([b["labeled"]["label"].flatten() for b in self.batches])
        for _, loss in getattr(module, "class_weighted_losses", list)():
            if getattr(loss, "wants_labeled_counts", False):
                loss.init_from_counts(torch.bincount(labels, minlength=loss.num_classes).double())

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.batches, batch_size=None)


# make test trains every phantom experiment and one real-data one per data set (16 classes + cubes,
# 14 classes); the other real-data experiments differ from these in their data section only and
# train under make test-all (they all compose and instantiate in tests/test_configs.py).
FAST_REAL = ("amos_magicnet_scdl", "synapse_scdl")
TWO_STEPS = [
    e if e.startswith("phantom_") or e in FAST_REAL else pytest.param(e, marks=pytest.mark.slow)
    for e in EXPERIMENTS
]


@pytest.mark.parametrize("experiment", TWO_STEPS)
def test_debug_fast_trains_every_experiment_for_two_steps(experiment, tmp_path):
    from scdl.build import build_module
    from scdl.config_checks import validate_config

    cfg = compose_cfg(
        [f"experiment={experiment}", "debug=fast", f"paths.log_dir={tmp_path}"],
        output_dir=tmp_path / "run",
    )
    validate_config(cfg)  # as train() does first
    patch = list(cfg.data.module.patch_size)
    assert len(set(patch)) == 1
    with open_dict(cfg):
        cfg.data.num_classes = NUM_CLASSES[experiment.split("_")[0]]
    torch.manual_seed(0)
    module = build_module(cfg)
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        precision="32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    data = _RandomBatches(cfg.data.num_classes, patch[0], 2)
    data.init_count_weights(module)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in module.parameters())


PHANTOM = [e for e in EXPERIMENTS if e.startswith("phantom_")]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", PHANTOM)
def test_debug_fast_fits_validates_and_tests_every_phantom_experiment(
    experiment, phantom_cache, tmp_path
):
    from scdl.training import train

    overrides = [f"experiment={experiment}", *tiny_train_overrides(phantom_cache, tmp_path)]
    metrics = train(compose_cfg([*overrides, "trainer.max_steps=2"], output_dir=tmp_path / "r"))
    assert 0.0 <= metrics["test/dice"] <= 1.0


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("fast", {"max_steps": 4, "profiler": None, "limit_val_batches": None}),
        ("profiler", {"max_steps": 4, "profiler": "SimpleProfiler", "limit_val_batches": None}),
        ("limit", {"max_steps": 20, "profiler": None, "limit_val_batches": 2}),
        ("overfit", {"max_steps": 100, "profiler": None, "limit_val_batches": None}),
    ],
)
def test_debug_modes_compose(mode, expected, tmp_path):
    from scdl.config_checks import validate_config

    cfg = compose_cfg(["experiment=phantom_scdl", f"debug={mode}"], output_dir=tmp_path / "run")
    validate_config(cfg)
    trainer = cfg.trainer
    profiler = trainer.get("profiler")
    assert trainer.max_steps == expected["max_steps"]
    assert (profiler["_target_"].rsplit(".", 1)[1] if profiler else None) == expected["profiler"]
    assert trainer.get("limit_val_batches") == expected["limit_val_batches"]
    assert cfg.task_name == "debug" and "csv" in cfg.logger and "wandb" not in cfg.logger


@pytest.mark.slow
def test_debug_profiler_writes_its_report(phantom_cache, tmp_path):
    from scdl.training import train

    cfg = compose_cfg(
        ["experiment=phantom_mt", *tiny_train_overrides(phantom_cache, tmp_path), "debug=profiler"],
        output_dir=tmp_path / "run",
    )
    train(cfg)
    reports = list((tmp_path / "run").glob("*profile*.txt"))
    assert reports and "training_step" in reports[0].read_text()


def test_debug_overfit_trains_on_one_batch_and_its_loss_falls(phantom_cache, tmp_path):
    """debug=overfit: every step sees the same labeled patches (Lightning's overfit_batches with a
    sequential sampler over position-determined patches) and the training loss falls on it."""
    import csv
    import json

    from scdl.training import train

    overrides = [
        "experiment=phantom_mt",
        *tiny_train_overrides(phantom_cache, tmp_path),
        "debug=overfit",
        "trainer.max_steps=8",
        "trainer.log_every_n_steps=1",
        "test=false",
        "+callbacks.probe._target_=fault_injection.RankProbe",
        f"+callbacks.probe.folder={tmp_path / 'probe'}",
    ]
    train(compose_cfg(overrides, output_dir=tmp_path / "run"))
    steps = json.loads((tmp_path / "probe" / "rank0.json").read_text())
    assert len(steps) == 8 and len({s["patches"] for s in steps}) == 1
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()))
    losses = [float(r["train/loss_sup"]) for r in rows if r.get("train/loss_sup")]
    assert len(losses) >= 6 and losses[-1] < losses[0]
