"""What the benchmark sections share: progress lines, timing statistics, interleaved timing of
variants, and modules and batches built with the project's own builder (:mod:`scdl.build`)."""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

FRAMEWORKS = {  # experiment -> row name
    "phantom_scdl": "mean teacher + SCDL",
    "phantom_mt": "mean teacher (backbone only)",
    "phantom_cps": "GA-CPS",
    "phantom_cps_scdl": "GA-CPS + SCDL",
    "phantom_dhc": "DHC",
    "phantom_magicnet": "GA-MagicNet",
    "phantom_magicnet_scdl": "GA-MagicNet + SCDL",
}


def say(msg: str) -> None:
    """Progress on stderr, flushed (visible in logs and pipes too)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def stats(times: list[float]) -> dict:
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "n": len(times),
    }


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved(fns: dict[str, Callable], repeats: int, warmup: int, device: str) -> dict:
    """Per variant: stats of ``repeats`` timings after ``warmup``, variants alternating."""
    from interleaved import interleaved_timings

    times = interleaved_timings(
        fns,
        repeats,
        warmup,
        timer=lambda fn: timed(fn, device),
        on_round=lambda done, total: say(f"  round {done}/{total} done"),
    )
    return {k: stats(v) for k, v in times.items()}


def compose(experiment: str, *overrides: str):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from scdl.utils.config import conf_dir, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = hcompose(
            "train", overrides=[f"experiment={experiment}", *overrides], return_hydra_config=True
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = tempfile.mkdtemp(prefix="scdl_bench_")
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def fixed_batch(patch: list[int], num_classes: int, device: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "labeled": {
            "image": torch.randn(2, 1, *patch, generator=g).to(device),
            "label": torch.randint(0, num_classes, (2, *patch), generator=g).to(device),
        },
        "unlabeled": {"image": torch.randn(2, 1, *patch, generator=g).to(device)},
    }


def build(experiment: str, channels_last: bool, device: str, *overrides: str):
    """(module, batch, optimiser, patch) of an experiment, no trainer attached."""
    from omegaconf import open_dict

    from scdl.build import build_module, setup_data

    cfg = compose(experiment, *overrides)
    with open_dict(cfg):
        cfg.channels_last = channels_last
    dm = setup_data(cfg)
    torch.manual_seed(0)
    module = build_module(cfg).to(device).train()
    module.log = lambda *a, **k: None  # no trainer attached
    module.log_dict = lambda *a, **k: None
    patch = list(dm.patch_size)
    batch = fixed_batch(patch, dm.num_classes, device)
    opt = module.optimizer_factory(module.parameter_groups())  # the experiment's optimiser
    return module, batch, opt, patch, cfg


def per_tensor_updates(module, opt) -> torch.optim.Optimizer:
    """The state before the multi-tensor EMA update: the teacher loops over its tensors one by one
    (the optimiser is the experiment's in both variants)."""
    for m in module.modules():
        if hasattr(m, "foreach") and hasattr(m, "update"):  # EMATeacher
            m.foreach = False
    return opt


def autocast(device: str, dtype: torch.dtype | None):
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return torch.autocast(kind, dtype=dtype or torch.float32, enabled=dtype is not None)


def step_fn(module, batch, opt, device: str, dtype) -> Callable[[], None]:
    """One training step as Lightning runs it: fp16 with a GradScaler (16-mixed), bf16 and
    fp32 without."""
    state = {"i": 0}
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    def step() -> None:
        with autocast(device, dtype):
            loss = module.training_loss(batch, state["i"])
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        module.after_optimizer_step(state["i"])
        state["i"] += 1

    return step


def training_math(device: str) -> None:
    """The CUDA settings training runs with (scdl.training, conf/trainer/gpu.yaml): TF32 matmuls
    and convolutions (``float32_matmul_precision("high")``; cuDNN allows TF32 by default) and cuDNN
    autotuning (``benchmark: true``)."""
    torch.set_float32_matmul_precision("high")
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = True


def precisions(device: str) -> dict[str, tuple[torch.dtype | None, bool]]:
    """name -> (autocast dtype or None for fp32, channels-last)."""
    out = {
        "fp32": (None, False),
        "fp32+cl": (None, True),
        "bf16": (torch.bfloat16, False),
        "bf16+cl": (torch.bfloat16, True),
    }
    if device.startswith("cuda"):
        out["fp16"] = (torch.float16, False)
    return out


def machine_precision(device: str) -> str:
    """The precision training uses on this machine (CPU: by native bf16; CUDA: bf16 on compute
    capability 8.0+, else fp16, as ``trainer=gpu`` chooses)."""
    if device.startswith("cuda"):
        from scdl.utils.hardware import gpu_precision_choice

        return "bf16" if gpu_precision_choice().precision.startswith("bf16") else "fp16"
    from scdl.utils.hardware import cpu_precision_choice

    c = cpu_precision_choice()
    return ("bf16" if c.precision.startswith("bf16") else "fp32") + (
        "+cl" if c.channels_last else ""
    )


def partial_path() -> Path:
    return Path(os.environ["SCDL_BENCH_PARTIAL"])


def load_partial(section: str) -> dict | None:
    path = partial_path()
    return json.loads(path.read_text()).get(section) if path.is_file() else None


def verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "NOT met")


def fmt(s: dict) -> str:
    """A timing's median (min–max), seconds."""
    return f"{s['median']:.3f} ({s['min']:.3f}–{s['max']:.3f})"
