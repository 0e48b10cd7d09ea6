"""The ``flops`` section of ``bench/suite.py``.

Achieved GFLOP/s of the backbone step (``torch.utils.flop_counter``) against the machine's
measured matmul peak."""

from __future__ import annotations

import statistics

import torch
from common import (
    build,
    machine_precision,
    say,
    stats,
    step_fn,
    timed,
)

POSITION = 6  # its place in the run and in the report


def run(args) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    dev = args.device
    out = {"rows": []}
    for pname in ("fp32", "bf16"):
        dtype = None if pname == "fp32" else torch.bfloat16
        cl = pname == "bf16" and machine_precision(dev).endswith("+cl")
        module, batch, opt, patch, _ = build("phantom_mt", cl, dev)
        fn = step_fn(module, batch, opt, dev, dtype)
        fn()
        with FlopCounterMode(display=False) as counter:
            fn()
        flops = counter.get_total_flops()
        times = [timed(fn, dev) for _ in range(args.repeats)]
        n = 4096 if dev.startswith("cuda") else 1024
        a = torch.randn(n, n, device=dev, dtype=dtype or torch.float32)
        torch.mm(a, a)
        mm = [timed(lambda a=a: torch.mm(a, a), dev) for _ in range(5)]
        peak = 2 * n**3 / min(mm) / 1e9
        achieved = flops / statistics.median(times) / 1e9
        out["rows"].append(
            {
                "precision": pname + ("+cl" if cl else ""),
                "gflop_per_step": flops / 1e9,
                "step_s": stats(times),
                "achieved_gflops": achieved,
                "matmul_peak_gflops": peak,
                "fraction_of_peak": achieved / peak,
            }
        )
        say(f"  {pname}: {flops / 1e9:.1f} GFLOP/step, {achieved:.1f} GFLOP/s vs matmul {peak:.1f}")
    return out


def render(res: dict) -> list[str]:
    """The section's tables (Markdown lines) from the suite's results ``res``."""
    L: list[str] = []
    L += [
        "",
        "**Achieved throughput** (VNet mean-teacher step, FLOPs from torch.utils.flop_counter; "
        "peak = best measured square matmul of that dtype)",
        "",
        "| precision | GFLOP / step | GFLOP/s | matmul peak GFLOP/s | of peak |",
        "|---|---|---|---|---|",
    ]
    for r in res["flops"]["rows"]:
        L.append(
            f"| {r['precision']} | {r['gflop_per_step']:.1f} | {r['achieved_gflops']:.1f} | "
            f"{r['matmul_peak_gflops']:.1f} | {r['fraction_of_peak']:.0%} |"
        )
    return L
