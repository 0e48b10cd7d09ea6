"""The ``profile`` section of ``bench/suite.py``.

The top operators of the mean-teacher + SCDL step (``torch.profiler``)."""

from __future__ import annotations

from common import (
    build,
    machine_precision,
    precisions,
    step_fn,
    sync,
)

POSITION = 7  # its place in the run and in the report


def run(args) -> dict:
    from torch.profiler import ProfilerActivity, profile

    dev = args.device
    auto = machine_precision(dev)
    dtype, cl = precisions(dev)[auto]
    module, batch, opt, _, _ = build("phantom_scdl", cl, dev)
    fn = step_fn(module, batch, opt, dev, dtype)
    fn()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        for _ in range(2):
            fn()
        sync(dev)
    # torch 2.13: the device time is self_device_time_total (self_cuda_time_total is gone)
    key = "self_device_time_total" if dev.startswith("cuda") else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events)
    rows = [
        {
            "op": e.key,
            "self_ms_per_step": getattr(e, key) / 2e3,
            "share": getattr(e, key) / total,
            "calls_per_step": e.count / 2,
        }
        for e in events[:12]
    ]
    return {"precision": auto, "rows": rows}


def render(res: dict) -> list[str]:
    """The section's tables (Markdown lines) from the suite's results ``res``."""
    L: list[str] = []
    L += [
        "",
        f"**Top operators** of the mean-teacher + SCDL step ({res['profile']['precision']}, "
        "self time)",
        "",
        "| operator | ms / step | share | calls / step |",
        "|---|---|---|---|",
    ]
    for r in res["profile"]["rows"]:
        L.append(
            f"| `{r['op']}` | {r['self_ms_per_step']:.1f} | {r['share']:.0%} | {r['calls_per_step']:.0f} |"
        )
    return L
