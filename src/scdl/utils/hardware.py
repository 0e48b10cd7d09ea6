"""What the CPU can do fast, and the training precision chosen from it.

bf16 autocast is fast on a CPU only with native bf16 instructions (AVX512-BF16 or AMX on x86, the
BF16 extension on Arm); elsewhere oneDNN emulates it and a VNet step was measured 3x slower than
float32 (AVX2-only AMD EPYC). Denormal floats cost float32 another 4x there, so they are always
flushed to zero on CPU (:func:`configure_cpu_math`). ``python bench/suite.py --only cpu_precision``
measures the variants on the machine at hand.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import cast

import torch

log = logging.getLogger(__name__)

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class PrecisionChoice:
    """``precision`` (a Lightning precision string), ``channels_last`` and why."""

    precision: str
    channels_last: bool
    reason: str


def cpuinfo_field(*keys: str) -> str | None:
    """The value of the first ``/proc/cpuinfo`` line starting with one of ``keys`` (None where
    the file or the line is missing: macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(keys):
            return line.split(":", 1)[1].strip()
    return None


def _cpu_flags() -> set[str]:
    return set((cpuinfo_field("flags", "Features") or "").split())


def command_output(cmd: list[str], timeout: float = 20.0) -> str:
    """stdout of a system command that may be missing or fail ("" then)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout if out.returncode == 0 else ""


def native_bf16_flags() -> list[str]:
    """The CPU flags that give native bf16 here (``amx_bf16``, ``avx512_bf16``, Arm's ``bf16``),
    [] where there are none or ``/proc/cpuinfo`` is missing. ``get_cpu_capability()`` says
    AVX512 both for an AMD EPYC with avx512_bf16 and an Intel Xeon with AMX, whose bf16 kernels
    (and so the last digits of a bf16 run) differ: provenance records these flags beside it."""
    flags = _cpu_flags()
    return [f for f in (*NATIVE_BF16_FLAGS, "bf16") if f in flags]


@lru_cache(maxsize=1)
def native_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and the evidence (CPU flag or sysctl)."""
    found = native_bf16_flags()  # x86 flags, or Arm's bf16 (Features line of /proc/cpuinfo)
    if found:
        return True, f"CPU flags {', '.join(found)}"
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        if command_output(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], 5).strip() == "1":
            return True, "hw.optional.arm.FEAT_BF16"
    capability = torch.backends.cpu.get_cpu_capability()
    return False, f"no native bf16 (capability {capability}, no amx_bf16/avx512_bf16 flag)"


def cpu_precision_choice() -> PrecisionChoice:
    """bf16 autocast + channels-last where the CPU has native bf16, else float32 (both with
    denormals flushed, see :func:`configure_cpu_math`)."""
    native, why = native_bf16()
    if native:
        return PrecisionChoice("bf16-mixed", True, f"native bf16: {why}")
    return PrecisionChoice("32-true", False, why)


def visible_gpus() -> list[str]:
    """The entries of ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs), [] when it is unset or empty."""
    return [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]


def gpu_compute_capabilities() -> list[float]:
    """Compute capabilities of the GPUs this process may use (``nvidia-smi``; CUDA is not
    initialised, so a sweep job can still pin its GPU afterwards); [] without NVIDIA GPUs."""
    out = command_output(["nvidia-smi", "--query-gpu=index,compute_cap", "--format=csv,noheader"])
    caps = {}
    for line in out.splitlines():
        index, _, cap = (part.strip() for part in line.partition(","))
        try:
            caps[index] = float(cap)
        except ValueError:
            continue
    visible = visible_gpus()
    chosen = [caps[g] for g in visible if g in caps] if visible else list(caps.values())
    return chosen or list(caps.values())


@lru_cache(maxsize=1)
def gpu_precision_choice() -> PrecisionChoice:
    """``bf16-mixed`` on GPUs with native bf16 (compute capability 8.0+: A100, H100, H200, RTX 30xx
    and later): no GradScaler, fp32's range; ``16-mixed`` (with a GradScaler, whose skipped steps
    the framework counts) on older GPUs."""
    caps = gpu_compute_capabilities()
    if caps and min(caps) >= 8.0:
        return PrecisionChoice("bf16-mixed", False, f"compute capability {min(caps):g} >= 8.0")
    why = f"compute capability {min(caps):g} < 8.0" if caps else "no GPU compute capability found"
    return PrecisionChoice("16-mixed", False, f"{why}: fp16 with a GradScaler")


def configure_cpu_math(flush_denormal: bool = True) -> None:
    """Flushes denormal floats to zero on CPU (no effect on results that matter for training: values
    below 1e-38; 4x faster float32 convolutions where denormals occur)."""
    if flush_denormal and not torch.set_flush_denormal(True):
        log.info("this CPU cannot flush denormals (no SSE3 DAZ/FTZ)")


# --- one GPU per sweep job (launcher=joblib) -------------------------------------------------------
ALL_GPUS_ENV = "SCDL_SWEEP_GPUS"  # the GPUs of the whole sweep, remembered across reused workers


def sweep_gpus(job_gpus: str | list | int) -> list[str]:
    """The GPU ids a sweep distributes over: a count (``4``: the first 4), a list of indices
    (``[0,2]``), or ``auto``: every GPU this process may use. Counts and indices refer to the GPUs
    the launching shell makes visible: with ``CUDA_VISIBLE_DEVICES=4,5,6,7`` inherited,
    ``job_gpus=[0,2]`` is GPUs 4 and 6 (an index beyond that list is refused). Without
    ``CUDA_VISIBLE_DEVICES`` they are the driver's GPUs (``/proc/driver/nvidia/gpus``). Never
    initialises CUDA (that would freeze the visible set)."""
    remembered = os.environ.get(ALL_GPUS_ENV)
    if remembered:  # a reused joblib worker: its own CUDA_VISIBLE_DEVICES was narrowed already
        return remembered.split(",")
    visible = [
        g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()
    ]
    if str(job_gpus) == "auto":
        if visible:
            gpus = visible
        else:
            drv = Path("/proc/driver/nvidia/gpus")
            gpus = [str(i) for i in range(len(list(drv.iterdir())))] if drv.is_dir() else []
    else:
        count = isinstance(job_gpus, int) and not isinstance(job_gpus, bool)
        indices = list(range(cast(int, job_gpus))) if count else list(cast(Iterable, job_gpus))
        if visible:
            bad = [i for i in indices if not (str(i).isdigit() and int(i) < len(visible))]
            if bad:
                from scdl.utils.errors import InputError

                raise InputError(
                    f"job_gpus={job_gpus}: {bad} beyond the {len(visible)} GPUs the shell makes "
                    f"visible (CUDA_VISIBLE_DEVICES={','.join(visible)}); job_gpus counts or "
                    f"indexes that list (0..{len(visible) - 1}), or use job_gpus=auto"
                )
            gpus = [visible[int(i)] for i in indices]
        else:
            gpus = [str(i) for i in indices]
    os.environ[ALL_GPUS_ENV] = ",".join(gpus)
    return gpus


def claim_job_gpu(job_num: int, gpus: list[str], lock_dir: Path) -> str | None:
    """The GPU of sweep job ``job_num``: ``gpus[job_num % len(gpus)]`` if no other live worker
    holds it, else a free one; held (``fcntl`` lock in ``lock_dir``) until this process exits.

    A joblib (loky) worker is reused for later jobs, and CUDA ignores a changed
    ``CUDA_VISIBLE_DEVICES`` once initialised: a worker therefore keeps the GPU of its first job,
    and the locks keep two workers off one GPU. Returns None when every GPU is held."""
    import fcntl

    held = _HELD_GPU.get("gpu")
    if held is not None:
        return held
    lock_dir.mkdir(parents=True, exist_ok=True)
    order = [gpus[(job_num + i) % len(gpus)] for i in range(len(gpus))]
    for gpu in order:
        f = open(lock_dir / f"gpu{gpu}.lock", "w")  # noqa: SIM115 - held for the process lifetime
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _HELD_GPU.update(gpu=gpu, file=f)
        return gpu
    return None


_HELD_GPU: dict = {}
