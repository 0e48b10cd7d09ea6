"""The ``scdl`` section of ``bench/suite.py``.

SCDL's own forward + backward as the token grid and the proxy samples S grow."""

from __future__ import annotations

import torch
from common import (
    say,
    stats,
    timed,
)

POSITION = 2  # its place in the run and in the report


def _tensors(out) -> list[torch.Tensor]:
    import dataclasses

    if dataclasses.is_dataclass(out):
        out = [getattr(out, f.name) for f in dataclasses.fields(out)]
    if isinstance(out, torch.Tensor):
        return [out] if out.requires_grad else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


def run(args) -> dict:
    """SCDL module alone (forward + backward of its terms) against token grid and proxy samples S."""
    from scdl.models.scdl import SCDL

    dev, rows = args.device, []
    num_classes, x_dim = 14, 16
    grids = (4, 6, 8) if not dev.startswith("cuda") else (6, 8, 12)
    for grid in grids:
        for s in (10, 50, 100):
            torch.manual_seed(0)
            scdl = SCDL(num_classes=num_classes, x_dim=x_dim, sample_num=s).to(dev)
            n_tok = 2 * grid**3
            g = torch.Generator().manual_seed(0)
            x = torch.randn(2, grid**3, x_dim, generator=g).to(dev).requires_grad_(True)
            y = torch.softmax(torch.randn(2, grid**3, num_classes, generator=g), -1).to(dev)
            cls = torch.randn(num_classes, x_dim, generator=g).to(dev)
            ids = torch.arange(num_classes, device=dev)

            def fn(scdl=scdl, x=x, y=y, cls=cls, ids=ids) -> None:
                out = scdl(x, y, cls, ids)
                loss = sum(v.float().sum() for v in _tensors(out))
                loss.backward()

            times = []
            for i in range(args.repeats + 2):  # 2 warm-ups: oneDNN builds kernels per shape
                t = timed(fn, dev)
                if i >= 2:
                    times.append(t)
            rows.append({"grid": grid, "tokens": n_tok, "S": s, "fwd_bwd_s": stats(times)})
            say(f"  SCDL alone grid {grid} S {s}: {stats(times)['median'] * 1e3:.1f} ms")
    return {"rows": rows}


def render(res: dict) -> list[str]:
    """The section's tables (Markdown lines) from the suite's results ``res``."""
    L: list[str] = []
    L += [
        "",
        "**SCDL module alone** (forward + backward, 2 volumes of grid^3 tokens; ms)",
        "",
        "| grid | tokens | S | ms |",
        "|---|---|---|---|",
    ]
    for r in res["scdl"]["rows"]:
        L.append(
            f"| {r['grid']} | {r['tokens']} | {r['S']} | {r['fwd_bwd_s']['median'] * 1e3:.1f} |"
        )
    return L
