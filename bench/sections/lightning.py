"""The ``lightning`` section of ``bench/suite.py``.

The mean-teacher + SCDL step run by ``Trainer.fit`` vs a plain PyTorch loop (same module,
batch, precision): Lightning / plain <= 1.05."""

from __future__ import annotations

import statistics
import time

import torch
from common import (
    build,
    fmt,
    machine_precision,
    precisions,
    say,
    stats,
    step_fn,
    sync,
    timed,
    verdict,
)

POSITION = 1  # its place in the run and in the report


class _FixedBatches(torch.utils.data.IterableDataset):
    def __init__(self, batch: dict, n: int) -> None:
        self.batch, self.n = batch, n

    def __iter__(self):
        for _ in range(self.n):
            yield self.batch


def run(args) -> dict:
    """Per-step wall time inside ``Trainer.fit`` (between consecutive batch starts: loop, hooks,
    precision plugin, optimiser step, EMA) vs the same work in a plain loop."""
    import lightning as L
    from interleaved import timing_trainer

    dev = args.device
    auto = machine_precision(dev)
    dtype, cl = precisions(dev)[auto]
    n = max(4, args.repeats * 2)
    module, batch, _, _, cfg = build("phantom_scdl", cl, dev)
    lightning_precision = {None: "32-true", torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed"}

    class StepTimes(L.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, *a) -> None:
            sync(dev)
            self.starts.append(time.perf_counter())

        def on_train_end(self, *a) -> None:
            sync(dev)
            self.starts.append(time.perf_counter())

    def run_lightning() -> list[float]:
        cb = StepTimes()
        trainer = timing_trainer(
            "gpu" if dev.startswith("cuda") else "cpu", lightning_precision[dtype], n + 1, [cb]
        )
        loader = torch.utils.data.DataLoader(_FixedBatches(batch, n + 1), batch_size=None)
        trainer.fit(module, train_dataloaders=loader)
        return [b - a for a, b in zip(cb.starts[1:-1], cb.starts[2:], strict=False)]

    def run_plain() -> list[float]:
        opt = module.configure_optimizers()
        opt = opt["optimizer"] if isinstance(opt, dict) else opt
        opt = opt[0][0] if isinstance(opt, tuple) else opt
        fn = step_fn(module, batch, opt, dev, dtype)
        fn()  # warm-up, as the first Lightning step is not counted
        return [timed(fn, dev) for _ in range(n)]

    light, plain = [], []
    for r in range(2):  # alternate so that load drifts hit both
        say(f"round {r + 1}/2: Trainer.fit, {n} steps")
        light += run_lightning()
        say(f"round {r + 1}/2: plain loop, {n} steps")
        plain += run_plain()
    ratio = statistics.median(light) / statistics.median(plain)
    return {"precision": auto, "lightning_s": stats(light), "plain_s": stats(plain), "ratio": ratio}


def render(res: dict) -> list[str]:
    """The section's tables (Markdown lines) from the suite's results ``res``."""
    L: list[str] = []
    lt = res["lightning"]
    L += [
        "",
        f"**Lightning vs plain PyTorch** (mean teacher + SCDL, {lt['precision']}; target <= 1.05)",
        "",
        "| loop | s / step | ratio | verdict |",
        "|---|---|---|---|",
        f"| Trainer.fit | {fmt(lt['lightning_s'])} | {lt['ratio']:.3f} | {verdict(lt['ratio'] <= 1.05)} |",
        f"| plain loop | {fmt(lt['plain_s'])} | 1 | |",
    ]
    return L
