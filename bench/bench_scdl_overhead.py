"""Benchmark: training-step overhead of SCDL on top of a VNet (bf16 autocast, channels_last_3d).

Measures the median time of one optimisation step (batch 4 = 2 labeled + 2 unlabeled) for

* ``vnet``: VNet forward (``forward_features``), CE on the labeled half, backward, SGD step;
* ``vnet+scdl (bf16 encoder, default)``: the same plus SCDL exactly as training runs it without a
  prior (``SCDLPlugin.training_terms``, docs/method.md §3.5): tokens from ``x9`` on a ``grid**3``
  grid, area soft labels and class tokens for the labeled half, one SCDL call for the labeled half
  (y_dist + SAC) and one for the unlabeled half (bi_sim weights), the weighted aux loss added
  before the backward, SCDL parameters in the same SGD step; ``SCDL(encoder_autocast=True)`` (the default:
  the encoder's matmuls follow the bf16 autocast, the loss math stays float32);
* ``vnet+scdl (fp32 encoder)``: the same with ``encoder_autocast=False``.

Variants are interleaved step by step so that drifts in machine load hit all of them alike; wall
and process-CPU medians are both reported. Acceptance target: SCDL adds at most 15 %.

Usage: ``python bench/bench_scdl_overhead.py [--patch 64] [--steps 12] [--warmup 3] [--grid 12]
[--threads N] [--device cuda]`` (CPU by default; on CUDA every timed step ends with a synchronize).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from scdl.models.scdl import SCDL, class_tokens_from_token_dist, labels_to_token_dist
from scdl.models.vnet import VNet
from scdl.plugins.scdl_plugin import SCDLPlugin

NUM_CLASSES = 14
LABELED = 2
BATCH = 4


def make_step(
    patch: int, grid: int, scdl: SCDL | None, seed: int = 0, device: str = "cpu"
) -> Callable[[], float]:
    """Builds a closure running one training step; returns the step's loss."""
    torch.manual_seed(seed)
    dev = torch.device(device)
    net = VNet(num_classes=NUM_CLASSES, base_filters=16).to(dev)
    net = net.to(memory_format=torch.channels_last_3d)
    plugin = None
    if scdl is not None:
        plugin = SCDLPlugin(scdl, token_grid=grid, prior_feedback="none").to(dev)
    params = list(net.parameters()) + (list(plugin.parameters()) if plugin is not None else [])
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    image = torch.randn(BATCH, 1, patch, patch, patch, device=dev)
    image = image.to(memory_format=torch.channels_last_3d)
    # Blocky random labels so every class occupies whole regions (realistic token masses).
    coarse = torch.randint(0, NUM_CLASSES, (LABELED, patch // 8, patch // 8, patch // 8))
    labels = coarse.repeat_interleave(8, 1).repeat_interleave(8, 2).repeat_interleave(8, 3)
    labels = labels.to(dev)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            logits, x9 = net.forward_features(image)
            loss = F.cross_entropy(logits[:LABELED].float(), labels)
            if plugin is not None:
                loss = loss + plugin.training_terms(x9, labels, need_prior=False).aux_loss
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_module_only(
    grid: int, encoder_autocast: bool, steps: int, warmup: int, device: str = "cpu"
) -> float:
    """Median ms of one SCDL forward + backward alone: B = 2, L = grid**3, y_dist and SAC."""
    torch.manual_seed(0)
    dev = torch.device(device)
    scdl = SCDL(NUM_CLASSES, encoder_autocast=encoder_autocast).to(dev)
    tokens = torch.randn(LABELED, grid**3, 16, device=dev, requires_grad=True)
    labels = torch.randint(0, NUM_CLASSES, (LABELED, 4 * grid, 4 * grid, 4 * grid), device=dev)
    y_dist = labels_to_token_dist(labels, NUM_CLASSES, grid)
    x_cls, y_cls = class_tokens_from_token_dist(tokens.detach(), y_dist)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            out = scdl(tokens, y_dist, x_cls, y_cls, sample_embeddings=False)
            loss = out.proxy_loss + out.sac_loss + out.kl_loss
        loss.backward()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return _median_ms(times)


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--patch", type=int, default=48, help="cubic patch size (multiple of 16); 48 = phantom"
    )
    parser.add_argument(
        "--grid",
        type=int,
        default=None,
        help="token grid per axis (default patch // 8, as conf/scdl)",
    )
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time SCDL under torch.compile (nn.Module.compile)",
    )
    args = parser.parse_args()
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    dev = args.device
    if args.grid is None:
        args.grid = max(1, args.patch // 8)
    if args.threads:
        torch.set_num_threads(args.threads)

    variants: dict[str, Callable[[], float]] = {
        "vnet": make_step(args.patch, args.grid, None, device=dev),
        "vnet+scdl (bf16 encoder, default)": make_step(
            args.patch, args.grid, SCDL(NUM_CLASSES, encoder_autocast=True), device=dev
        ),
        "vnet+scdl (fp32 encoder)": make_step(
            args.patch, args.grid, SCDL(NUM_CLASSES, encoder_autocast=False), device=dev
        ),
    }
    if args.compile:
        compiled = SCDL(NUM_CLASSES, encoder_autocast=True)
        compiled.compile()  # in place: same parameters and state-dict keys
        variants["vnet+scdl (bf16 encoder, compiled)"] = make_step(
            args.patch, args.grid, compiled, device=dev
        )
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(args.warmup + args.steps):
        for name, step in variants.items():  # interleaved, so load drifts hit all variants alike
            _sync(dev)
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            _sync(dev)
            if i >= args.warmup:
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)

    base, base_cpu = _median_ms(wall["vnet"]), _median_ms(cpu["vnet"])
    rows = [
        (
            name,
            f"{_median_ms(wall[name]):.1f}",
            f"{min(wall[name]) * 1e3:.1f}",
            f"{_median_ms(wall[name]) / base:.3f}",
            f"{_median_ms(cpu[name]):.1f}",
            f"{_median_ms(cpu[name]) / base_cpu:.3f}",
        )
        for name in variants
    ]
    where = (
        torch.cuda.get_device_name(dev)
        if torch.device(dev).type == "cuda"
        else f"CPU x{torch.get_num_threads()} threads"
    )
    title = (
        f"SCDL overhead: {where}, bf16 autocast, channels_last_3d, "
        f"patch {args.patch}^3, batch {BATCH} ({LABELED} labeled), grid {args.grid}^3, "
        f"{args.steps} steps"
    )
    # Process CPU time is robust to other processes preempting us on a shared machine (with one
    # thread it is the compute time; with more it also counts OpenMP spin-waiting).
    header = ("variant", "median ms", "min ms", "ratio", "median cpu ms", "cpu ratio")
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for h in header:
            table.add_column(h, justify="left" if h == "variant" else "right")
        for row in rows:
            table.add_row(*row)
        Console(width=120).print(table)
    except ImportError:  # plain fallback
        print(title)
        print(" | ".join(f"{h:>14}" for h in header))
        for row in rows:
            print(" | ".join(f"{c:>14}" for c in row))
    for name in list(variants)[1:]:
        ratio = _median_ms(wall[name]) / base
        verdict = "OK" if ratio <= 1.15 else "ABOVE TARGET"
        print(f"{name}: {(ratio - 1) * 100:+.1f}% wall time vs vnet (target <= +15%): {verdict}")
    for enc in (True, False):
        ms = time_module_only(args.grid, enc, 3 * args.steps, args.warmup, device=dev)
        print(
            f"SCDL alone, forward+backward, B={LABELED}, L={args.grid**3}, "
            f"{'bf16' if enc else 'fp32'} encoder: {ms:.1f} ms (median)"
        )


if __name__ == "__main__":
    main()
