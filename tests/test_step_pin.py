"""A training step's loss and gradients on a fixed batch, pinned bitwise against values written by
an earlier version of the code (``tests/step_pin.json``: SHA-256 of each tensor's bytes). Refactors of the frameworks must keep
them; a deliberate change of the training maths regenerates the pin file:
``SCDL_WRITE_PIN=1 pytest tests/test_step_pin.py``."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from conftest import semi_batch
from scdl.frameworks.cps import CPSModule
from scdl.frameworks.mean_teacher import MeanTeacherModule
from scdl.losses import CEDiceLoss
from scdl.losses.consistency import PseudoLabelLoss
from scdl.models.scdl import SCDL
from scdl.models.vnet import VNet
from scdl.plugins.scdl_plugin import SCDLPlugin

PIN = Path(__file__).parent / "step_pin.json"
C = 4
CASES = [
    ("mean_teacher", None),
    ("mean_teacher", "head"),
    ("mean_teacher", "bottleneck"),
    ("cps", None),
    ("cps", "head"),
]


def _plugin(prior):
    if prior is None:
        return None
    return SCDLPlugin(
        SCDL(C, x_dim=4, z_dim=16, sample_num=5),
        token_grid=4,
        prior_feedback=prior,
        bottleneck_channels=64,
    )


def _module(framework: str, prior: str | None):
    torch.manual_seed(0)
    common = {"sup_loss": CEDiceLoss(), "unsup_loss": PseudoLabelLoss(CEDiceLoss())}
    if framework == "mean_teacher":
        m = MeanTeacherModule(backbone=VNet(num_classes=C, base_filters=4), num_classes=C, **common)
    else:
        m = CPSModule(
            backbone=VNet(num_classes=C, base_filters=4, init="kaiming"),
            backbone_b=VNet(num_classes=C, base_filters=4, init="xavier"),
            num_classes=C,
            rampup_steps=0,
            **common,
        )
    m.attach_plugin(_plugin(prior))
    m.log_dict = lambda *a, **k: None  # no trainer attached
    m.log = lambda *a, **k: None
    return m.train()


def _batch():
    return semi_batch(C, 16, seed=1)


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


def _step(framework, prior) -> dict[str, str]:
    m = _module(framework, prior)
    torch.manual_seed(5)
    loss = m.training_step(_batch(), 0)
    loss.backward()
    out = {"loss": _digest(loss)}
    for name, p in m.named_parameters():
        if p.grad is not None:  # the plug-in was the attribute `scdl` when the pin was written
            out[f"grad.{name.replace('plugin.', 'scdl.', 1)}"] = _digest(p.grad)
    return out


def test_training_step_losses_and_gradients_are_pinned():
    got = {f"{f}/{p}": _step(f, p) for f, p in CASES}
    if os.environ.get("SCDL_WRITE_PIN"):
        PIN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"wrote {PIN}")
    want = json.loads(PIN.read_text())
    assert set(got) == set(want)
    for case, tensors in want.items():
        assert set(got[case]) == set(tensors), case
        for key, value in tensors.items():
            assert got[case][key] == value, f"{case}: {key} differs"
