"""Benchmark: which CPU precision trains the VNet fastest on this machine.

One optimisation step (VNet forward, CE, backward, AdamW step; batch 4 at ``--patch``^3, as the
phantom experiments) in four variants, interleaved step by step so that load drifts hit all alike:

* ``fp32``: float32, denormals kept (PyTorch's default);
* ``fp32+ftz``: float32 with ``torch.set_flush_denormal(True)``;
* ``fp32+ftz+cl``: the same in channels-last-3D memory format;
* ``bf16+ftz+cl``: bf16 autocast, channels-last-3D, denormals flushed (the default on CPUs with
  native bf16, see :mod:`scdl.utils.hardware`).

Prints the CPU capability, whether it has native bf16 and the precision ``trainer=cpu`` picks, then
median wall time per step and the ratio to ``fp32+ftz``.

Usage: ``python bench/bench_cpu_precision.py [--patch 48] [--steps 5] [--warmup 1] [--threads N]``
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from interleaved import print_ratio_table, time_interleaved

from scdl.models.vnet import VNet
from scdl.utils.hardware import cpu_precision_choice

VARIANTS = {
    "fp32": {"ftz": False, "cl": False, "bf16": False},
    "fp32+ftz": {"ftz": True, "cl": False, "bf16": False},
    "fp32+ftz+cl": {"ftz": True, "cl": True, "bf16": False},
    "bf16+ftz+cl": {"ftz": True, "cl": True, "bf16": True},
}


def make_step(variant: dict, patch: int):
    torch.manual_seed(0)
    net = VNet(num_classes=14)
    x = torch.randn(4, 1, patch, patch, patch)
    y = torch.randint(0, 14, (4, patch, patch, patch))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    choice = cpu_precision_choice()
    print(
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} "
        f"threads; trainer=cpu picks {choice.precision} ({choice.reason})"
    )
    steps = {name: make_step(v, args.patch) for name, v in VARIANTS.items()}
    medians = time_interleaved(steps, args.steps, args.warmup)
    torch.set_flush_denormal(False)
    print(f"\nVNet step, batch 4 x {args.patch}^3, median of {args.steps} (interleaved)")
    print_ratio_table(medians, "fp32+ftz", "variant")


if __name__ == "__main__":
    main()
