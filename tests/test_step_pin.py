"""A training step's loss and gradients on a fixed batch, pinned against values written by an
earlier version of the code (``tests/step_pin.json``). Refactors of the frameworks must keep them.

Float32 kernels round differently on different CPUs (an AMD EPYC with AVX512 and an Intel Xeon
with AMX give different last bits for the SCDL steps), so the pin has two levels:

- ``digests``: SHA-256 of each tensor's bytes, per machine kind (:func:`machine_kind`): bitwise
  equality where the pin was written on a machine of this kind;
- ``norms``: each tensor's L1 and L2 norm (float64), compared everywhere at ``rtol=1e-4`` (a
  rounding difference moves them by ~1e-6; a change of the maths by far more), and absolutely
  at 1e-5 for the gradients that are rounding noise of a true 0 (biases before BatchNorm).

A deliberate change of the training maths regenerates the pin (``SCDL_WRITE_PIN=1 pytest
tests/test_step_pin.py``: norms and this machine's digests, other machines' digests dropped);
``SCDL_WRITE_PIN=add`` adds this machine kind's digests when its norms agree."""

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
# a conv bias followed by BatchNorm has a true gradient of 0: its computed one is rounding noise
# (L1 below 3e-6 in the pin, 10-70 % apart between an AMD EPYC and an Intel Xeon AMX), while
# every other gradient's L1 is above 3e-3; norms below this are compared absolutely
NOISE = 1e-5
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


def _norms(t: torch.Tensor) -> list[float]:
    t = t.detach().double()
    return [float(t.abs().sum()), float(t.norm())]


def machine_kind() -> str:
    """What decides float32 rounding here: torch build, ATen CPU capability, CPU vendor and the
    bf16 / AMX extensions."""
    from scdl.utils.hardware import _cpu_flags, cpuinfo_field

    vendor, flags = cpuinfo_field("vendor_id") or "?", _cpu_flags()
    extensions = ",".join(f for f in ("avx512_bf16", "amx_tile") if f in flags) or "-"
    capability = torch.backends.cpu.get_cpu_capability()
    return f"torch {torch.__version__} | {capability} | {vendor} | {extensions}"


def _step(framework, prior) -> dict[str, torch.Tensor]:
    m = _module(framework, prior)
    torch.manual_seed(5)
    loss = m.training_step(_batch(), 0)
    loss.backward()
    out = {"loss": loss.detach()}
    for name, p in m.named_parameters():
        if p.grad is not None:  # the plug-in was the attribute `scdl` when the pin was written
            out[f"grad.{name.replace('plugin.', 'scdl.', 1)}"] = p.grad
    return out


def test_training_step_losses_and_gradients_are_pinned():
    got = {f"{f}/{p}": _step(f, p) for f, p in CASES}
    digests = {c: {k: _digest(t) for k, t in ts.items()} for c, ts in got.items()}
    norms = {c: {k: _norms(t) for k, t in ts.items()} for c, ts in got.items()}
    here = machine_kind()
    mode = os.environ.get("SCDL_WRITE_PIN")
    want = json.loads(PIN.read_text())
    if mode and mode != "add":
        want = {"norms": norms, "digests": {here: digests}}
    assert set(norms) == set(want["norms"])
    for case, tensors in want["norms"].items():
        assert set(norms[case]) == set(tensors), case
        for key, value in tensors.items():
            assert norms[case][key] == pytest.approx(value, rel=1e-4, abs=NOISE), (
                f"{case}: {key} differs"
            )
    if mode:
        want["digests"][here] = digests
        PIN.write_text(json.dumps(want, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"wrote {PIN} ({here})")
    if here not in want["digests"]:
        return  # no bitwise pin for this machine kind: the norms above are the check
    for case, tensors in want["digests"][here].items():
        for key, value in tensors.items():
            assert digests[case][key] == value, f"{case}: {key} differs bitwise on {here}"
