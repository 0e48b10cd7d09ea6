"""The ``cpu_precision`` section of ``bench/suite.py``.

Which CPU precision trains the VNet fastest on this machine: one optimisation step (VNet forward,
CE, backward, AdamW; batch 4 at the phantom's 48^3) in four variants, interleaved: ``fp32``
(denormals kept, PyTorch's default), ``fp32+ftz`` (``torch.set_flush_denormal(True)``),
``fp32+ftz+cl`` (channels-last-3D) and ``bf16+ftz+cl`` (bf16 autocast: the default on CPUs with
native bf16, :mod:`scdl.utils.hardware`). On a CPU without native bf16, bf16 is emulated and
denormals can cost fp32 several times: this is the table to read there. CPU only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common import fmt, interleaved, say

POSITION = 8  # its place in the run and in the report

VARIANTS = {
    "fp32": {"ftz": False, "cl": False, "bf16": False},
    "fp32+ftz": {"ftz": True, "cl": False, "bf16": False},
    "fp32+ftz+cl": {"ftz": True, "cl": True, "bf16": False},
    "bf16+ftz+cl": {"ftz": True, "cl": True, "bf16": True},
}
PATCH = 48


def _step(variant: dict):
    from scdl.models.vnet import VNet

    torch.manual_seed(0)
    net = VNet(num_classes=14)
    x = torch.randn(4, 1, PATCH, PATCH, PATCH)
    y = torch.randint(0, 14, (4, PATCH, PATCH, PATCH))
    if variant["cl"]:
        net = net.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def step() -> None:
        torch.set_flush_denormal(variant["ftz"])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant["bf16"]):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def run(args) -> dict:
    from scdl.utils.hardware import cpu_precision_choice

    if args.device != "cpu":
        return {"skipped": f"CPU only (device {args.device})"}
    choice = cpu_precision_choice()
    say(f"timing {len(VARIANTS)} VNet step variants, {args.repeats} repeats")
    res = interleaved({k: _step(v) for k, v in VARIANTS.items()}, args.repeats, 1, "cpu")
    torch.set_flush_denormal(True)  # the suite's setting for the sections after this one
    return {
        "rows": [{"variant": k, "step_s": s} for k, s in res.items()],
        "choice": f"{choice.precision} ({choice.reason})",
    }


def render(res: dict) -> list[str]:
    """The section's table (Markdown lines) from the suite's results ``res``."""
    sec = res["cpu_precision"]
    if "rows" not in sec:
        return []
    ref = {r["variant"]: r["step_s"]["median"] for r in sec["rows"]}["fp32+ftz"]
    lines = [
        "",
        f"**CPU precision** (VNet step, batch 4 x {PATCH}^3, AdamW; trainer=cpu picks "
        f"{sec['choice']})",
        "",
        "| variant | s / step | vs fp32+ftz |",
        "|---|---|---|",
    ]
    for r in sec["rows"]:
        lines.append(f"| {r['variant']} | {fmt(r['step_s'])} | {r['step_s']['median'] / ref:.2f} |")
    return lines
