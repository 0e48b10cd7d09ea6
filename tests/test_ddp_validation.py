"""DDP validation and test Dice are exact: every case is scored once, in the single-process order.

A padding distributed sampler (PyTorch's, which Lightning inserts and the data module sets) gives
3 cases to 2 ranks as [0, 2] and [1, 0]: case 0 is scored twice. :class:`PerCaseDice` keys each
row by the case's data-set position and drops the copy, so the means equal the single-process ones.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
from hydra.utils import instantiate
from torch.utils.data import SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from conftest import compose_cfg, tiny_train_overrides
from scdl.build import build_module, setup_data
from scdl.data.datamodule import SemiSupervisedDataModule
from scdl.metrics.dice import PerCaseDice, unique_cases

NUM_CLASSES = 4


def _case(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (prediction, label) pair of (1, 6, 6, 6) maps: a case with its own Dice row."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, NUM_CLASSES, (1, 6, 6, 6), generator=g)
    pred = torch.where(torch.rand(label.shape, generator=g) < 0.6, label, 0)
    return pred, label


def _padded_shards(n: int, world: int) -> list[list[int]]:
    return [list(DistributedSampler(range(n), world, r, shuffle=False)) for r in range(world)]


def test_unique_cases_first_row_of_each_key_in_key_order() -> None:
    keys = torch.tensor([0, 2, 1, 0, 2])
    rows = torch.tensor([[0.0], [2.0], [1.0], [9.0], [9.0]])
    unique, kept = unique_cases(keys, rows)
    assert unique.tolist() == [0, 1, 2] and kept.tolist() == [[0.0], [1.0], [2.0]]
    empty = unique_cases(torch.empty(0, dtype=torch.long), torch.empty(0, 3))
    assert empty[0].shape == (0,) and empty[1].shape == (0, 3)
    with pytest.raises(ValueError, match="keys for"):
        unique_cases(torch.tensor([0]), rows)


def test_padded_shards_scored_once_in_single_process_order() -> None:
    """The rank shards of 3 cases, concatenated in rank order as torchmetrics gathers them."""
    shards = _padded_shards(3, 2)
    assert shards == [[0, 2], [1, 0]]  # the padding sampler scores case 0 twice
    single = PerCaseDice(NUM_CLASSES)
    for i in range(3):
        single.update(*_case(i), case_ids=[f"c{i}"])  # keys default to 0, 1, 2
    gathered = PerCaseDice(NUM_CLASSES)
    for i in [k for shard in shards for k in shard]:
        gathered.update(*_case(i), keys=[i], case_ids=[f"c{i}"])
    assert torch.equal(gathered.compute(), single.compute())
    assert gathered.compute_case_ids() == single.compute_case_ids() == ["c0", "c1", "c2"]
    naive = torch.cat(gathered.rows)  # what the mean was before: the copy of case 0 counted
    assert naive.shape[0] == 4 and not torch.equal(naive.mean(0), single.compute().mean(0))
    gathered.reset()
    assert gathered.compute_case_ids() == [] and gathered.rows == [] and gathered.keys == []


def test_volume_loaders_shard_with_a_sampler_lightning_keeps(phantom_cache) -> None:
    """Under DDP each rank gets every other case of the padding sampler (set by the data module,
    so Lightning does not replace it); batches carry the case's position as ``index``."""
    dm = SemiSupervisedDataModule(
        str(phantom_cache), patch_size=(32, 32, 32), num_val=3, num_test=1, num_labeled=1
    )
    dm.prepare_split()
    assert isinstance(dm.val_dataloader().sampler, SequentialSampler)  # no trainer: one process
    seen = []
    for rank in range(2):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        loader = dm.val_dataloader()
        assert isinstance(loader.sampler, DistributedSampler)  # Lightning keeps such a sampler
        seen.append([(int(b["index"]), b["case_id"][0]) for b in loader])
    val = dm.split.val
    assert seen == [[(0, val[0]), (2, val[2])], [(1, val[1]), (0, val[0])]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# rank shards of 3 cases: PyTorch's padding sampler, MONAI's uneven one, a rank without cases
# (torchmetrics alone aborts there: its stand-in for an empty `cat` state is 1-D)
SHARDINGS = {"padded": [[0, 2], [1, 0]], "uneven": [[0, 2], [1]], "empty_rank": [[0, 1, 2], []]}


def _gloo_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group(
        "gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60)
    )
    try:
        results = {}
        for name, shards in SHARDINGS.items():
            metric = PerCaseDice(NUM_CLASSES)
            for i in shards[rank]:
                metric.update(*_case(i), keys=[i], case_ids=[f"c{i}"])
            results[name] = {"rows": metric.compute(), "ids": metric.compute_case_ids()}
        torch.save(results, f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_torchmetrics_gather_over_two_gloo_ranks(tmp_path: Path) -> None:
    """The real all-gather of the ``cat`` states (2 processes, gloo): every sharding gives every
    rank the single-process rows and case ids."""
    single = PerCaseDice(NUM_CLASSES)
    for i in range(3):
        single.update(*_case(i))
    out = str(tmp_path / "result")
    mp.spawn(_gloo_worker, args=(_free_port(), out), nprocs=2, join=True)
    for rank in range(2):
        results = torch.load(f"{out}.{rank}", weights_only=True)
        for name, got in results.items():
            assert torch.equal(got["rows"], single.compute()), (name, rank)
            assert got["ids"] == ["c0", "c1", "c2"], (name, rank)


class RecordValidation(L.Callback):
    """Writes, per rank, the cases this rank scored and the gathered case ids and Dice rows."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.local_keys: list[int] = []
        self.rows: list[list[float]] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # runs before the module's hook: the states are still this rank's own
        self.local_keys = [int(k) for k in pl_module.val_dice.keys]
        self.rows = pl_module.val_dice.compute().tolist()  # cached: the module gets the same

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = {"local": self.local_keys, "ids": pl_module.val_case_ids, "rows": self.rows}
        path = Path(self.out_dir) / f"val_rank{trainer.global_rank}_of{trainer.world_size}.json"
        path.write_text(json.dumps(record))


def _validate(cfg, ckpt: Path, out_dir: Path, **trainer_kw) -> dict[str, float]:
    # a data module of its own: one still attached to an earlier trainer would be pickled into
    # the spawned processes along with that trainer and its model
    datamodule = setup_data(cfg)
    module = build_module(cfg)  # other weights: the checkpoint's must be loaded
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        logger=False,
        callbacks=[RecordValidation(str(out_dir))],
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kw,
    )
    (result,) = trainer.validate(module, datamodule=datamodule, ckpt_path=str(ckpt))
    return {k: float(v) for k, v in result.items()}


@pytest.mark.slow  # 2 spawned processes: ~10 s on 2 idle cores, 30-50 s on busy ones
@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP on CPU is tested on Linux")
def test_ddp_validation_dice_equals_single_process(phantom_cache, tmp_path: Path) -> None:
    cfg = compose_cfg(
        [
            "experiment=phantom_mt",
            *tiny_train_overrides(phantom_cache, tmp_path),
            "trainer=ddp_cpu",
            "trainer.devices=2",
            "trainer.precision=32-true",
            "data.module.num_val=3",  # odd: a padding sampler would score one case twice
            "data.module.num_labeled=1",
        ],
        output_dir=tmp_path / "run",
    )
    assert cfg.trainer.strategy == "ddp_spawn"
    datamodule = setup_data(cfg)
    assert len(datamodule.split.val) == 3
    L.seed_everything(0)
    ckpt = tmp_path / "seeded.ckpt"
    torch.save(
        {"state_dict": build_module(cfg).state_dict(), "pytorch-lightning_version": L.__version__},
        ckpt,
    )

    single = _validate(cfg, ckpt, tmp_path, devices=1, strategy="auto")
    ddp = _validate(cfg, ckpt, tmp_path)
    assert single.keys() == ddp.keys() and len(single) == 14  # val/dice + 13 organs
    print({k: (single[k], ddp[k]) for k in ("val/dice", "val/dice_liver")})
    for key in single:
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key

    one = json.loads((tmp_path / "val_rank0_of1.json").read_text())
    ranks = [json.loads((tmp_path / f"val_rank{r}_of2.json").read_text()) for r in range(2)]
    assert one["ids"] == datamodule.split.val and one["local"] == [0, 1, 2]
    # DDP really padded (case 0 scored on both ranks), yet scored each case once, in order
    assert [r["local"] for r in ranks] == _padded_shards(3, 2)
    for r in ranks:
        assert r["ids"] == datamodule.split.val
        assert r["rows"] == [pytest.approx(row, abs=1e-6) for row in one["rows"]]
    # the test can fail: counting the padded copy of case 0 changes the mean
    rows = torch.tensor(one["rows"])
    naive = torch.cat([rows, rows[:1]]).mean(0).mean()
    assert abs(float(naive) - single["val/dice"]) > 1e-6
