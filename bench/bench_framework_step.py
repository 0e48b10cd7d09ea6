"""Benchmark: one training step of each framework on the phantom settings, interleaved.

Builds the modules of the given experiments with the project's builder (the phantom data set must
be prepared: ``make data``), then times ``training_step`` + backward + AdamW step on one fixed batch
(2 labeled + 2 unlabeled patches of the experiment's size), the variants interleaved step by step so
that load drifts hit all alike. All variants run at one precision (``--precision``) so the ratio
compares the frameworks, not their CPU precision.

Usage: ``python bench/bench_framework_step.py [--experiments phantom_mt phantom_magicnet]
[--steps 5] [--warmup 1] [--precision 32|bf16]``
"""

from __future__ import annotations

import argparse
import sys

import torch
from interleaved import print_ratio_table, time_interleaved
from omegaconf import open_dict
from suite import compose as compose_experiment  # the suite's composition (one copy)

from scdl.build import build_module, setup_data


def make_step(name: str, bf16: bool):
    cfg = compose_experiment(name)
    with open_dict(cfg):
        cfg.channels_last = False
    datamodule = setup_data(cfg)
    torch.manual_seed(0)
    module = build_module(cfg).train()
    module.log_dict = lambda *a, **k: None  # no trainer attached
    module.log = lambda *a, **k: None
    p = list(datamodule.patch_size)
    g = torch.Generator().manual_seed(0)
    batch = {
        "labeled": {
            "image": torch.randn(2, 1, *p, generator=g),
            "label": torch.randint(0, datamodule.num_classes, (2, *p), generator=g),
        },
        "unlabeled": {"image": torch.randn(2, 1, *p, generator=g)},
    }
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = module.training_loss(batch, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiments", nargs="+", default=["phantom_mt", "phantom_magicnet"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    steps = {name: make_step(name, args.precision == "bf16") for name in args.experiments}
    medians = time_interleaved(steps, args.steps, args.warmup)
    print(
        f"\ntraining step (2 + 2 patches), {args.precision}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
        f"median of {args.steps} (interleaved)"
    )
    print_ratio_table(medians, args.experiments[0], "experiment")


if __name__ == "__main__":
    sys.exit(main())
