"""The one Dice (scdl.metrics.dice) on hand-made masks: absent-class rules, MONAI equality, the
torchmetrics wrapper, and the results schema reader (new and legacy files)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scdl.metrics.dice import PerCaseDice, dice_counts, per_class_dice
from scdl.metrics.results import aggregate_metrics, load_metrics, save_metrics


def _rule_case() -> tuple[torch.Tensor, torch.Tensor]:
    """C = 5 on 4 x 4 x 2: class 1 overlaps half, class 2 only in GT, class 3 only in the
    prediction, class 4 nowhere."""
    gt = torch.zeros(4, 4, 2, dtype=torch.long)
    pred = torch.zeros_like(gt)
    gt[0, :, :] = 1  # 8 voxels
    pred[0, :2, :] = 1  # 4 voxels, all inside -> Dice 2*4 / 12
    gt[1, :, 0] = 2
    pred[2, :, 0] = 3
    return pred, gt


@pytest.mark.parametrize(
    ("absent", "class3", "class4"),
    [("zero", 0.0, 0.0), ("skip", math.nan, math.nan), ("one", 0.0, 1.0)]
    + [("skip_both_empty", 0.0, math.nan)],
)
def test_absent_rules(absent, class3, class4) -> None:
    pred, gt = _rule_case()
    d = per_class_dice(pred, gt, 5, absent).tolist()
    assert d[0] == pytest.approx(8 / 12)
    assert d[1] == 0.0  # present in the GT, predicted nowhere: always 0
    for got, want in ((d[2], class3), (d[3], class4)):
        assert (math.isnan(got) and math.isnan(want)) or got == want
    with pytest.raises(ValueError, match="absent"):
        per_class_dice(pred, gt, 5, "nope")


def test_numpy_input_counts_and_out_of_range_labels() -> None:
    pred, gt = _rule_case()
    inter, pc, gc = dice_counts(pred.numpy().astype(np.uint8), gt.numpy(), 5)
    assert inter.tolist() == [16, 4, 0, 0, 0] and pc[1:].tolist() == [4, 0, 4, 0]
    assert gc[1:].tolist() == [8, 4, 0, 0]
    # a label >= C (or < 0) counts for no class
    odd = pred.clone()
    odd[3, 3, 1] = 7
    assert per_class_dice(odd, gt, 5, "zero")[0] == pytest.approx(8 / 12)


@pytest.mark.parametrize("ignore_empty", [True, False])
def test_equals_monai_dice_metric(ignore_empty) -> None:
    from monai.metrics import DiceMetric

    rng = np.random.default_rng(0)
    gt = torch.from_numpy(rng.integers(0, 3, size=(2, 9, 8, 7)))
    pred = torch.where(torch.from_numpy(rng.random((2, 9, 8, 7)) < 0.3), 4, gt)
    gt[1][gt[1] == 2] = 0  # class 2 absent from the second GT
    pred[0][pred[0] == 1] = 3  # class 1 never predicted in case 0
    absent = "skip" if ignore_empty else "one"

    def one_hot(x):
        return F.one_hot(x, 5).movedim(-1, 1).float()

    ref = DiceMetric(include_background=False, ignore_empty=ignore_empty)(
        one_hot(pred), one_hot(gt)
    )
    ours = torch.stack([per_class_dice(p, g, 5, absent) for p, g in zip(pred, gt, strict=True)])
    torch.testing.assert_close(ours.float(), ref.float(), equal_nan=True)


def test_per_case_metric_rows_and_reset() -> None:
    pred, gt = _rule_case()
    metric = PerCaseDice(5, "skip")
    metric.update(torch.stack([pred, gt]), torch.stack([gt, gt]))
    rows = metric.compute()
    assert rows.shape == (2, 4) and rows.dtype == torch.float32
    assert rows[1, :2].tolist() == [1.0, 1.0] and rows[1, 2:].isnan().all()
    metric.reset()
    assert metric.rows == []


def test_results_schema_roundtrip_and_legacy_test_dice(tmp_path) -> None:
    nan = float("nan")
    rows = [[0.5, nan], [0.7, 0.2]]
    summary = aggregate_metrics([{"dice": r} for r in rows], ["a", "b"], ["c1", "c2"], "train_test")
    paths = save_metrics(summary, tmp_path, stem="test_metrics")
    assert {p.name for p in paths.values()} == {
        "test_metrics.json",
        "test_metrics.csv",
        "test_metrics_per_case.csv",
    }
    new = load_metrics(paths["json"])
    assert new["per_class"]["a"]["dice"]["mean"] == pytest.approx(0.6)
    assert new["per_class"]["b"]["dice"] == {"mean": pytest.approx(0.2), "std": 0.0, "n": 1}
    # the pre-schema file of older runs reads into the same schema
    legacy = {
        "class_names": ["a", "b"],
        "per_case": rows,
        "mean": [0.6, 0.2],
        "std": [0.1, 0.0],
        "mean_dice": 0.4,
        "case_ids": ["c1", "c2"],
        "ckpt": "x.ckpt",
    }
    (tmp_path / "test_dice.json").write_text(json.dumps(legacy))
    old = load_metrics(tmp_path / "test_dice.json")
    assert old["classes"] == ["a", "b"] and old["protocol"] == "train_test"
    assert [c["case"] for c in old["per_case"]] == ["c1", "c2"]
    assert old["overall"]["dice"]["mean"] == pytest.approx(0.4)
    for name in ("a", "b"):
        assert old["per_class"][name]["dice"]["mean"] == new["per_class"][name]["dice"]["mean"]
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not a results file"):
        load_metrics(tmp_path / "other.json")
