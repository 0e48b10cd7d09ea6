"""framework=uamt: UA-MT's uncertainty-masked consistency (DHC code/train_uamt.py) on hand-made
teacher predictions."""

from __future__ import annotations

import math

import numpy as np
import torch

from conftest import compose_cfg
from scdl.frameworks.uamt import UAMTModule
from scdl.losses.consistency import PseudoLabelLoss
from scdl.models.vnet import VNet
from scdl.utils.schedules import sigmoid_rampup

C = 3


class Zero(torch.nn.Module):
    def forward(self, logits, target):
        return logits.sum() * 0.0


def _module(**kw) -> UAMTModule:
    torch.manual_seed(0)
    m = UAMTModule(
        VNet(num_classes=C, base_filters=4), Zero(), PseudoLabelLoss(Zero()), num_classes=C, **kw
    )
    m.log_dict = lambda *a, **k: None
    m.log = lambda *a, **k: None
    return m


def test_threshold_ramps_from_three_quarters_of_ln2_to_ln2():
    m = _module(threshold_rampup_steps=100)
    assert m.threshold_at(0) == (0.75 + 0.25 * sigmoid_rampup(0, 100)) * math.log(2)
    assert m.threshold_at(100) == math.log(2) and m.threshold_at(50) < math.log(2)


def test_masked_softmax_mse_on_a_hand_made_teacher():
    """Teacher passes alternate between two predictions: where they agree the mean is confident
    (low entropy, kept), where they disagree it is not (masked out); the loss is the reference's
    sum(mask * (p_s - p_t)^2) / (2 * sum(mask))."""
    m = _module(mc_passes=4, threshold_rampup_steps=1)
    g = torch.Generator().manual_seed(0)
    shape = (1, C, 2, 2, 2)
    confident = torch.zeros(shape)
    confident[:, 0] = 8.0  # class 0, certain
    other = confident.clone()
    other[:, :, 0] = 0.0
    other[:, 1, 0] = 8.0  # on the first x-slice the passes disagree (class 0 vs class 1)
    calls = []

    def teacher_logits(x):
        calls.append(1)
        return confident if len(calls) % 2 else other

    m.teacher_logits = teacher_logits
    student = torch.randn(shape, generator=g, requires_grad=True)
    loss = m.consistency(student, torch.zeros(1, 1, 2, 2, 2))
    # by hand: the first call is the teacher's prediction, then 4 uncertainty passes
    q = confident.softmax(1).numpy()
    passes = [other, confident, other, confident]
    mean = np.mean([p.softmax(1).numpy() for p in passes], axis=0)
    entropy = -(mean * np.log(mean + 1e-6)).sum(1, keepdims=True)
    mask = (entropy < m.threshold_at(0)).astype(np.float64)  # step 0 (no trainer)
    assert mask[0, 0, 0].sum() == 0 and mask[0, 0, 1].all()  # uncertain slice out, rest in
    dist = (student.detach().softmax(1).numpy() - q) ** 2
    expected = (mask * dist).sum() / (2 * mask.sum() + 1e-16)
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    loss.backward()
    assert student.grad[0, :, 0].abs().sum() == 0 and student.grad[0, :, 1].abs().sum() > 0


def test_uamt_experiments_compose():
    for data in ("phantom", "amos", "synapse"):
        cfg = compose_cfg([f"experiment={data}_uamt_scdl"])
        assert cfg.framework._target_.endswith("UAMTModule") and cfg.framework.mc_passes == 8
        assert cfg.framework.rampup_steps == cfg.trainer.max_steps
        assert cfg.method_name == "UA-MT + SCDL"
