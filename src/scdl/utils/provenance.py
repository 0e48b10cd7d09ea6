"""What produced a run: code commit, library versions, machine and precision (``provenance.json``).

A figure is only reproducible with the commit and the machine kind it came from: the same seed
on another CPU kind (oneDNN kernels, bf16 rounding) or another thread count gives other numbers
(docs/results.md "Determinism"). Training writes one entry per start (a resumed run on another
machine shows two), and the results archive (:mod:`scdl.reporting.archive`) copies it beside
each run's per-case results. No host names, user names or paths are recorded.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path
from typing import Any

import torch

from scdl.utils.hardware import command_output, cpuinfo_field, native_bf16, native_bf16_flags

PROVENANCE = "provenance.json"


def code_version() -> dict[str, Any]:
    """``{"scdl", "commit", "dirty_files"}``: the package version and the git checkout holding
    it (None outside one); ``dirty_files`` counts modified tracked files (results of uncommitted
    code are marked)."""
    root = Path(__file__).resolve().parents[3]
    commit = command_output(["git", "-C", str(root), "rev-parse", "HEAD"], 10).strip() or None
    dirty = None
    if commit:
        status = command_output(["git", "-C", str(root), "status", "--porcelain", "-uno"], 10)
        dirty = len([line for line in status.splitlines() if line.strip()])
    from scdl import __version__

    return {"scdl": __version__, "commit": commit, "dirty_files": dirty}


def cpu_model() -> str:
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The machine kind: CPU model and capability, native bf16, threads, GPUs (no host name)."""
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    return {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16()[0],
        "bf16_flags": native_bf16_flags(),
        "torch_threads": torch.get_num_threads(),
        "gpus": gpus,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def record_start(output_dir: Path, precision: Any = None) -> dict[str, Any]:
    """Appends this start's entry to ``<output_dir>/provenance.json`` and returns it."""
    entry = {
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        **code_version(),
        **machine(),
        "precision": None if precision is None else str(precision),
    }
    path = Path(output_dir) / PROVENANCE
    starts = json.loads(path.read_text()).get("starts", []) if path.is_file() else []
    path.write_text(json.dumps({"starts": [*starts, entry]}, indent=1) + "\n")
    return entry


def read_provenance(run_dir: Path) -> list[dict[str, Any]]:
    """The start entries of a run folder ([] for runs trained before provenance was written)."""
    path = Path(run_dir) / PROVENANCE
    return json.loads(path.read_text()).get("starts", []) if path.is_file() else []
