"""The benchmark suite behind ``make bench``: every figure with its target and verdict.

``python bench/suite.py [--device cpu|cuda] [--repeats 3] [--only step lightning ...]``

Sections (``bench/sections/<name>.py``, each with ``run(args) -> dict`` and
``render(results) -> lines``; a new section is one new file there), each run in a subprocess of
its own, so its peak memory is its own:

- ``step``: training step (fwd + bwd + optimiser) and patches/s of the full modules built by the
  project's builder at the experiment's patch size: mean teacher + SCDL and the backbone-only mean
  teacher in every precision (fp32, fp32 + channels-last-3D, bf16 autocast, bf16 + channels-last),
  every framework at the precision training picks for this machine.
- ``lightning``: the same mean-teacher + SCDL step run by ``Trainer.fit`` vs a plain PyTorch loop
  (same module, batch, precision): Lightning / plain <= 1.05.
- ``scdl``: SCDL's own forward + backward as the token grid and the proxy samples S grow (its
  overhead in the training step, full module / backbone-only <= 1.15, comes from ``step``).
- ``data``: patches/s delivered by the training DataLoader (workers as configured) vs consumed by
  the step, on the phantom and on an AMOS-sized fixture (160 x 160 x 80, 16 classes): >= 2x.
- ``prepare``: cases/s of checking + preprocessing CT-sized NIfTI fixtures (512 x 512 x 120 int16,
  0.8 x 0.8 x 2.5 mm, to 1.5 x 1.5 x 2 mm) with 1 and with N worker processes
  (``data.prepare_workers``), run alternately; the caches are compared byte for byte.
- ``inference``: voxels/s of ``eval.py``'s path vs a direct MONAI ``sliding_window_inference``
  with the same model, window and overlap (ratio <= 1.05), and time against volume size.
- ``flops``: achieved GFLOP/s of the backbone step (``torch.utils.flop_counter``) against the
  machine's measured matmul peak.
- ``profile``: the top operators of the mean-teacher + SCDL step (``torch.profiler``).
- ``cpu_precision``: a VNet step in fp32 with and without flushed denormals, channels-last and
  bf16 (CPU only): which precision trains fastest on this CPU.

Times are medians (with min and max) over ``--repeats`` runs after a warm-up; variants that are
compared run interleaved, so load drifts hit them alike. Results: a table on stdout and JSON in
``bench/results/<date>_<device>.json``. Needs the phantom cache (``make data``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # common.py, interleaved.py and sections/ import each other by name
RESULTS = HERE / "results"

from common import say, training_math  # noqa: E402 - after the path above


def _sections() -> dict:
    """name -> module of every ``bench/sections/*.py``, in their ``POSITION`` order."""
    modules = [
        importlib.import_module(f"sections.{p.stem}")
        for p in sorted((HERE / "sections").glob("*.py"))
        if p.stem != "__init__"
    ]
    return {m.__name__.rsplit(".", 1)[1]: m for m in sorted(modules, key=lambda m: m.POSITION)}


SECTIONS = _sections()


def run_section(name: str, args) -> dict:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    if args.device == "cpu":
        torch.set_flush_denormal(True)
    training_math(args.device)  # the matmul peak and the steps with the same TF32 settings
    t0 = time.perf_counter()
    result = SECTIONS[name].run(args)
    result["seconds"] = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["peak_rss_mb"] = peak_kb / 1024
    if args.device.startswith("cuda"):
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def hardware(device: str) -> dict:
    from scdl.utils.hardware import cpu_precision_choice
    from scdl.utils.provenance import cpu_model

    info = {
        "cpu": cpu_model(),  # the model name provenance records for a run
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "cpu_precision_choice": cpu_precision_choice().reason,
        "torch": torch.__version__,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def report(res: dict) -> str:
    """Markdown tables of every figure with its target and verdict: each section's own
    ``render``, in the suite's order, for the sections ``res`` holds."""
    hw = res["hardware"]
    lines = [
        f"Hardware: {hw['cpu']}, torch CPU capability {hw['cpu_capability']}, {hw['threads']} "
        f"threads{', GPU ' + hw['gpu'] if 'gpu' in hw else ''}; torch {hw['torch']}; "
        f"training precision here: {res.get('step', {}).get('machine_precision', '?')} "
        f"({hw['cpu_precision_choice']})."
    ]
    for name, section in SECTIONS.items():
        if name in res and hasattr(section, "render"):
            lines += section.render(res)
    lines.append("")
    lines.append(
        "seconds per section: "
        + ", ".join(
            f"{k} {v['seconds']:.0f}"
            for k, v in res.items()
            if isinstance(v, dict) and "seconds" in v
        )
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument(
        "--section", choices=list(SECTIONS), help=argparse.SUPPRESS
    )  # child process
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.section:  # child: run one section, print its JSON last
        print("BENCH_JSON " + json.dumps(run_section(args.section, args)), flush=True)
        return
    RESULTS.mkdir(exist_ok=True)
    out = args.out or RESULTS / f"{time.strftime('%Y-%m-%d_%H-%M')}_{args.device}.json"
    partial = out.with_suffix(".partial.json")
    res: dict = {"hardware": hardware(args.device), "device": args.device}
    t0 = time.perf_counter()
    for i, name in enumerate(args.only):
        say(f"section {i + 1}/{len(args.only)}: {name}")
        partial.write_text(json.dumps(res))
        cmd = [
            sys.executable,
            __file__,
            "--section",
            name,
            "--device",
            args.device,
            "--repeats",
            str(args.repeats),
        ] + (["--threads", str(args.threads)] if args.threads else [])
        env = {**os.environ, "SCDL_BENCH_PARTIAL": str(partial), "PYTHONPATH": str(HERE)}
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")]
        if proc.returncode != 0 or not lines:
            say(f"section {name} FAILED (exit {proc.returncode}); continuing")
            res[name] = {"error": f"exit {proc.returncode}", "seconds": 0.0}
            continue
        res[name] = json.loads(lines[-1][len("BENCH_JSON ") :])
        say(
            f"section {name} done in {res[name]['seconds']:.0f} s (total {time.perf_counter() - t0:.0f} s)"
        )
    partial.unlink(missing_ok=True)
    res["total_seconds"] = time.perf_counter() - t0
    out.write_text(json.dumps(res, indent=1))
    print(report({k: v for k, v in res.items() if not (isinstance(v, dict) and "error" in v)}))
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
