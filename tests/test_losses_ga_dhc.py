"""GALoss (GACE, GADice) and DHC (DistDW, DiffDW, weighted CE + Dice) against hand-computed values.

Expected numbers are derived here with plain arithmetic / numpy, never by calling the code under
test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scdl.losses import (
    DiffDW,
    DistDW,
    GACELoss,
    GADiceLoss,
    GALoss,
    WeightedCEDiceLoss,
    ga_dice_per_class,
    hard_batch_dice,
)

# ----------------------------------------------------------------------------------------------
# GACE: logits built so that each voxel's CE is a chosen number c.
# For the true class logit 0 and every other logit z = log((exp(c) - 1) / (C - 1)):
#   CE = log(1 + (C - 1) e^z) = log(exp(c)) = c.
# ----------------------------------------------------------------------------------------------


def _logits_with_ce(ce: list[float], target: list[int], num_classes: int) -> torch.Tensor:
    """(1, C, N) logits whose per-voxel CE w.r.t. ``target`` equals ``ce``."""
    n = len(ce)
    logits = torch.zeros(1, num_classes, n, dtype=torch.float64)
    for v, (c, t) in enumerate(zip(ce, target, strict=True)):
        z = math.log(math.expm1(c) / (num_classes - 1))
        for j in range(num_classes):
            logits[0, j, v] = 0.0 if j == t else z
    return logits


# class 0: CE 0.1, 0.2, 0.3 ; class 1: CE 0.4, 0.5 ; class 2: absent
CE_VALUES = [0.1, 0.4, 0.2, 0.5, 0.3]
CE_TARGET = [0, 1, 0, 1, 0]


def test_logit_construction_gives_requested_ce() -> None:
    logits = _logits_with_ce(CE_VALUES, CE_TARGET, 3)
    ce = F.cross_entropy(logits, torch.tensor([CE_TARGET]), reduction="none")
    assert np.allclose(ce.numpy().ravel(), CE_VALUES)


@pytest.mark.parametrize(
    ("k", "gamma", "expected"),
    [
        # k=100 -> K=5, n0=3 (sum 0.6), n1=2 (sum 0.9), n2=0 (contributes 0)
        (100, 0.5, 0.6 / (math.sqrt(3) * math.sqrt(5)) + 0.9 / (math.sqrt(2) * math.sqrt(5))),
        (100, 1.0, (0.6 + 0.9) / 5),  # plain mean CE
        (100, 0.0, 0.6 / 3 + 0.9 / 2),  # sum of per-class means
        # k=40 -> K=floor(2.0)=2: kept 0.5 and 0.4 (both class 1), n1=2
        (40, 0.5, 0.9 / (math.sqrt(2) * math.sqrt(2))),
        (40, 0.0, 0.9 / 2),
        # k=10 -> K=floor(0.5)=0 -> no voxel kept -> 0
        (10, 0.5, 0.0),
    ],
)
def test_gace_hand_values(k: float, gamma: float, expected: float) -> None:
    logits = _logits_with_ce(CE_VALUES, CE_TARGET, 3)
    loss = GACELoss(k=k, gamma=gamma)(logits, torch.tensor([CE_TARGET]))
    assert loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_gace_k10_on_20_voxels() -> None:
    # 20 voxels, K = floor(10% * 20) = 2: the two hardest are CE 2.0 (class 2) and 1.9 (class 0).
    ce = [0.05 * (i + 1) for i in range(18)] + [1.9, 2.0]  # 0.05..0.9, 1.9, 2.0
    target = [i % 3 for i in range(18)] + [0, 2]
    logits = _logits_with_ce(ce, target, 3)
    t = torch.tensor([target])
    # gamma 0.5: each class has n=1, K=2: 1.9/sqrt(2) + 2.0/sqrt(2)
    assert GACELoss(10, 0.5)(logits, t).item() == pytest.approx(3.9 / math.sqrt(2), rel=1e-6)
    assert GACELoss(10, 1.0)(logits, t).item() == pytest.approx(3.9 / 2, rel=1e-6)
    assert GACELoss(10, 0.0)(logits, t).item() == pytest.approx(3.9, rel=1e-6)


def test_gace_matches_numpy_on_random_batch() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 5, 6, 3))
    target = rng.integers(0, 3, size=(2, 5, 6, 3))  # class 3 absent
    # independent numpy CE
    m = logits.max(1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(1, keepdims=True)))[:, 0]
    ce = lse - np.take_along_axis(logits, target[:, None], 1)[:, 0]
    ce, tgt = ce.ravel(), target.ravel()
    k, gamma = 30, 0.5
    kk = int(ce.size * k / 100)
    order = np.argsort(-ce)[:kk]
    expected = 0.0
    for c in range(4):
        sel = tgt[order] == c
        expected += ce[order][sel].sum() / ((sel.sum() + 1e-10) ** (1 - gamma) * kk**gamma + 1e-10)
    got = GACELoss(k, gamma)(torch.from_numpy(logits), torch.from_numpy(target))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_gace_ignore_index_excluded() -> None:
    logits = _logits_with_ce(CE_VALUES + [3.0], CE_TARGET + [0], 3)
    target = torch.tensor([CE_TARGET + [-100]])
    loss = GACELoss(100, 1.0)(logits, target)
    assert loss.item() == pytest.approx(1.5 / 5, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# GADice on 4 voxels, 3 classes, class 2 absent. logits = log(p) so softmax(logits) = p exactly.
# ----------------------------------------------------------------------------------------------

P = [[0.7, 0.2, 0.1], [0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.6, 0.2]]  # voxel-major
T = [0, 0, 1, 1]


def _probs() -> torch.Tensor:
    return torch.tensor(P, dtype=torch.float64).T.reshape(1, 3, 4)


def test_gadice_hand_values() -> None:
    # class 0: sum p t = 0.7 + 0.5 = 1.2, sum p^2 = .49 + .25 + .01 + .04 = .79, sum t = 2
    l0 = 1 - 2.4 / 2.79
    # class 1: sum p t = 0.8 + 0.6 = 1.4, sum p^2 = .04 + .0625 + .64 + .36 = 1.1025
    l1 = 1 - 2.8 / 3.1025
    # class 2 absent: sum p^2 / N = (.01 + .0625 + .01 + .04) / 4
    l2_ga = 0.1225 / 4
    l2_plain = 1 - 1e-10 / (0.1225 + 1e-10)
    logits = _probs().log()
    target = torch.tensor([T])
    assert GADiceLoss(ga=True)(logits, target).item() == pytest.approx((l0 + l1 + l2_ga) / 3)
    assert GADiceLoss(ga=False)(logits, target).item() == pytest.approx((l0 + l1 + l2_plain) / 3)
    per_class = ga_dice_per_class(_probs(), target)
    assert np.allclose(per_class.numpy(), [l0, l1, l2_ga])


def test_gadice_absent_class_gradient_is_p_over_n() -> None:
    probs = _probs().requires_grad_(True)
    target = torch.tensor([T])
    per_class = ga_dice_per_class(probs, target, ga=True)
    (grad,) = torch.autograd.grad(per_class[2], probs)
    expected = np.array([row[2] for row in P]) / 4  # p_2 / N, N = 4 voxels
    assert np.allclose(grad[0, 2].numpy(), expected, atol=1e-12)
    assert torch.count_nonzero(grad[0, :2]) == 0  # absent-class term touches only channel 2
    # plain soft Dice: gradient of the absent term is ~0 (s / (sum p^2)^2 * 2p)
    per_class_plain = ga_dice_per_class(probs, target, ga=False)
    (grad_plain,) = torch.autograd.grad(per_class_plain[2], probs)
    assert grad_plain.abs().max().item() < 1e-8


def test_gadice_fp32_under_autocast_and_batch_sums() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 6, 6)
    target = torch.randint(0, 3, (2, 6, 6, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = GALoss()(logits.bfloat16(), target)
    assert out.dtype == torch.float32
    # batch Dice: splitting the batch changes the value (sums over the whole batch)
    full = GADiceLoss()(logits, target)
    p = logits.softmax(1).numpy()
    onehot = np.eye(4)[target.numpy()].transpose(0, 4, 1, 2, 3)
    terms = []
    for c in range(4):
        if onehot[:, c].sum() > 0:
            inter = (p[:, c] * onehot[:, c]).sum()
            terms.append(
                1 - (2 * inter + 1e-10) / ((p[:, c] ** 2).sum() + onehot[:, c].sum() + 1e-10)
            )
        else:
            terms.append((p[:, c] ** 2).sum() / p[:, c].size)
    assert full.item() == pytest.approx(np.mean(terms), rel=1e-5)


def test_galoss_is_weighted_sum() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4, 4))
    combo = GALoss(ce_weight=0.3, dice_weight=2.0, k=50, gamma=0.5)(logits, target)
    parts = 0.3 * GACELoss(50, 0.5)(logits, target) + 2.0 * GADiceLoss()(logits, target)
    assert combo.item() == pytest.approx(parts.item(), rel=1e-6)


# ----------------------------------------------------------------------------------------------
# DHC weights
# ----------------------------------------------------------------------------------------------


def test_distdw_from_counts_and_ema() -> None:
    # counts 1000, 100, 10, 1 -> log r = 0, ln10, 2 ln10, 3 ln10 -> w = 4 * (0, 1/3, 2/3, 1)
    dist = DistDW(4, momentum=0.99)
    w0 = dist.init_weights(torch.tensor([1000.0, 100.0, 10.0, 1.0]))
    assert np.allclose(w0.numpy(), [0, 4 / 3, 8 / 3, 4], atol=1e-5)
    # reversed counts from a label map -> current weights (4, 8/3, 4/3, 0), EMA 0.99
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([1, 10, 100, 1000])])
    w1 = dist.update(labels[torch.randperm(labels.numel())].reshape(1, -1))
    expected = 0.99 * np.array([0, 4 / 3, 8 / 3, 4]) + 0.01 * np.array([4, 8 / 3, 4 / 3, 0])
    assert np.allclose(w1.numpy(), expected, atol=1e-5)
    # state lives in buffers -> restored from a state dict
    clone = DistDW(4)
    clone.load_state_dict(dist.state_dict())
    assert torch.equal(clone.weights, dist.weights) and bool(clone.initialized)


def test_distdw_first_update_without_init_and_uniform_counts() -> None:
    dist = DistDW(3)
    w = dist.update(counts=torch.tensor([100.0, 10.0, 1.0]))  # log r = 0, ln10, 2 ln10
    assert np.allclose(w.numpy(), [0, 1.5, 3], atol=1e-5)
    assert np.allclose(DistDW(3).update(counts=torch.tensor([5.0, 5.0, 5.0])).numpy(), 3.0)


def test_hard_batch_dice() -> None:
    pred = torch.tensor([[0, 0, 1, 1]])
    target = torch.tensor([[0, 1, 1, 1]])
    d = hard_batch_dice(pred, target, 3)
    # class 0: tp 1, |p| 2, |t| 1 -> 2/3 ; class 1: tp 2, |p| 2, |t| 3 -> 4/5 ; class 2 absent: 0.5
    assert np.allclose(d.numpy(), [2 / 3, 4 / 5, 0.5], atol=1e-6)


def diffdw_reference(dice_sequence: list[list[float]]):
    """DHC's ``DiffDW.cal_weights`` written out in float64 (accumulate_iters 50): the weights
    after each per-class Dice of ``dice_sequence``, the Dice used as given (no clamp)."""
    m, n = 49 / 50, len(dice_sequence[0])
    last, learn, unlearn, beta = [1e-8] * n, [0.0] * n, [0.0] * n, [1.0] * n
    for dice in dice_sequence:
        for c in range(n):
            delta = dice[c] - last[c]
            lr = math.log(dice[c] / last[c])
            learn[c] = m * learn[c] + (1 - m) * (delta * lr if delta > 0 else 0.0)
            unlearn[c] = m * unlearn[c] + (1 - m) * (delta * lr if delta <= 0 else 0.0)
            beta[c] = m * beta[c] + (1 - m) * (1 - dice[c])
            last[c] = dice[c]
        raw = [((unlearn[c] + 1e-8) / (learn[c] + 1e-8)) ** 0.2 * beta[c] for c in range(n)]
        yield [n * r / max(raw) for r in raw]


def test_diffdw_hand_sequence() -> None:
    diff = DiffDW(2, accumulate_iters=50)
    assert np.allclose(diff.weights.numpy(), [2, 2])  # DHC init: uniform C
    sequence = [[0.5, 0.2], [0.4, 0.3], [0.45, 0.3]]
    for dice, expected in zip(sequence, diffdw_reference(sequence), strict=True):
        got = diff.update_from_dice(torch.tensor(dice))
        assert np.allclose(got.numpy(), expected, rtol=1e-4), (dice, got, expected)
    # class 0 regressed (0.5 -> 0.4): it has unlearning and gets the largest weight
    assert got[0] > got[1] and got.max().item() == pytest.approx(2.0)


def test_diffdw_keeps_the_tiny_dice_of_a_present_unpredicted_class() -> None:
    """DHC's reference (``DiffDW.cal_weights`` on its smoothed hard Dice) takes the log of the tiny
    Dice of a class that is present but not predicted (1e-8 / |target|), unclamped; a clamp at 1e-8
    moved the weights by up to 0.19 (of ~5) early in training, when small organs are not yet
    predicted."""
    diff = DiffDW(3, accumulate_iters=50)
    target = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2]])
    preds = [[[0, 0, 0, 0, 0, 0, 2, 2]], [[0, 0, 0, 1, 0, 0, 2, 2]], [[0, 0, 0, 1, 1, 0, 2, 0]]]
    sequence = []
    for pred in map(torch.tensor, preds):
        counts = [(int(((pred == c) & (target == c)).sum()), int((pred == c).sum()),
                   int((target == c).sum())) for c in range(3)]  # fmt: skip
        # DHC: (2 tp + 1e-8) / (|p| + |t| + 1e-8 + 1e-8), in float32 as the counts are
        sequence.append(
            [float(np.float32((2 * tp + 1e-8) / (p + t + 2e-8))) for tp, p, t in counts]
        )
    assert min(sequence[0]) < 1e-8  # class 1 present, not predicted
    for pred, expected in zip(map(torch.tensor, preds), diffdw_reference(sequence), strict=True):
        got = diff.update(pred, target)
        assert np.allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5), (pred, got, expected)
    # an exact 0 (from elsewhere than DHC's Dice) still gives finite weights
    assert torch.isfinite(DiffDW(2).update_from_dice(torch.tensor([0.0, 0.5]))).all()


def test_diffdw_update_from_logits() -> None:
    logits = torch.tensor([[[5.0, 5.0, -5.0, -5.0], [-5.0, -5.0, 5.0, 5.0]]])  # argmax 0 0 1 1
    target = torch.tensor([[0, 1, 1, 1]])
    a, b = DiffDW(2), DiffDW(2)
    assert torch.allclose(a.update(logits, target), b.update_from_dice(torch.tensor([2 / 3, 0.8])))


# ----------------------------------------------------------------------------------------------
# Weighted CE + Dice
# ----------------------------------------------------------------------------------------------


def _numpy_weighted_ce_dice(logits: np.ndarray, target: np.ndarray, w: np.ndarray) -> float:
    c = logits.shape[1]
    e = np.exp(logits - logits.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    logp = np.log(p)
    nll = -np.take_along_axis(logp, target[:, None], 1)[:, 0]
    wv = w[target]
    ce = (wv * nll).sum() / wv.sum()
    onehot = np.eye(c)[target].transpose(0, 4, 1, 2, 3)
    terms = []
    for k in range(1, c):  # foreground only, batch Dice, smooth 1
        tp = (p[:, k] * onehot[:, k]).sum()
        dice = (2 * tp + 1) / (p[:, k].sum() + onehot[:, k].sum() + 1 + 1e-8)
        terms.append(w[k] * (1 - dice))
    return ce + np.mean(terms)


def test_weighted_ce_dice() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 4, 5, 5, 5))
    target = rng.integers(0, 4, size=(2, 5, 5, 5))
    loss_fn = WeightedCEDiceLoss()
    lt, tt = torch.from_numpy(logits), torch.from_numpy(target)
    ones = loss_fn(lt, tt, torch.ones(4))
    assert ones.item() == pytest.approx(loss_fn(lt, tt).item(), rel=1e-7)
    assert ones.item() == pytest.approx(
        _numpy_weighted_ce_dice(logits, target, np.ones(4)), rel=1e-5
    )
    w = np.array([0.0, 0.5, 2.0, 4.0])
    got = loss_fn(lt, tt, torch.from_numpy(w)).item()
    assert got == pytest.approx(_numpy_weighted_ce_dice(logits, target, w), rel=1e-5)
