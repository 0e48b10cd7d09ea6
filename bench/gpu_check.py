"""The GPU check to run once when a GPU is at hand (``make gpu-check``; < 8 min on one H100/H200).

For mean teacher + SCDL (bottleneck prior, ``amos_scdl``), GA-CPS + SCDL, DHC and GA-MagicNet + SCDL
at the papers' patch (96^3, 2 labeled + 2 unlabeled, AMOS's 16 classes), in ``bf16-mixed`` and
``16-mixed``: ~30 Lightning training steps each on random batches (no data needed), and a table of
s/step (median after 5 warm-up steps), patches/s, peak GPU memory (``max_memory_allocated`` after
a reset) and the steps the GradScaler skipped (counted by the framework's non-finite guard). With
two GPUs or more, one 2-GPU DDP run of mean teacher + SCDL in bf16 as well. Results: the table on
stdout and JSON in ``bench/results/<date>_gpu_check.json``.

Without CUDA it says so and exits 0; ``--smoke`` runs the same code on the CPU at a toy size
(48^3 patches, 4 filters, 2 steps, fp32 / bf16) so that the script itself is tested here
(``tests/test_gpu_check.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

EXPERIMENTS = {  # experiment -> row name
    "amos_scdl": "mean teacher + SCDL (bottleneck prior)",
    "amos_cps_scdl": "GA-CPS + SCDL",
    "amos_dhc": "DHC",
    "amos_magicnet_scdl": "GA-MagicNet + SCDL",
}
NUM_CLASSES = 16  # AMOS


def _compose(experiment: str, overrides: list[str]):
    from scdl.utils.config import compose_config

    cfg = compose_config("train", [f"experiment={experiment}", *overrides])
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.data.num_classes = NUM_CLASSES
    return cfg


class _StepTimer:
    """Lightning callback: wall time of every training step (synchronised on CUDA)."""

    def __new__(cls, device: str):
        import lightning as L
        import torch

        class Timer(L.Callback):
            def __init__(self) -> None:
                self.times: list[float] = []
                self._t0 = 0.0

            def _sync(self) -> None:
                if device == "cuda":
                    torch.cuda.synchronize()

            def on_train_batch_start(self, *args) -> None:
                self._sync()
                self._t0 = time.perf_counter()

            def on_train_batch_end(self, *args) -> None:
                self._sync()
                self.times.append(time.perf_counter() - self._t0)

        return Timer()


def _batches(size: int, steps: int):
    import lightning as L
    import torch

    class RandomBatches(L.LightningDataModule):
        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            shape = (size, size, size)
            batches = [
                {
                    "labeled": {
                        "image": torch.randn(2, 1, *shape, generator=g),
                        "label": torch.randint(0, NUM_CLASSES, (2, *shape), generator=g),
                    },
                    "unlabeled": {"image": torch.randn(2, 1, *shape, generator=g)},
                }
                for _ in range(steps)
            ]
            return torch.utils.data.DataLoader(batches, batch_size=None)

    return RandomBatches()


def run_one(experiment: str, precision: str, args, devices: int = 1) -> dict:
    """~``args.steps`` Lightning steps of one experiment at one precision."""
    import torch
    from interleaved import timing_trainer  # bench/, on the path when run as a script

    from scdl.build import build_module

    device = "cpu" if args.smoke else "cuda"
    overrides = [f"data.module.patch_size=[{args.patch},{args.patch},{args.patch}]"]
    if args.smoke:
        overrides += ["model.base_filters=4"]
        if "magicnet" in experiment:
            overrides += ["model.normalization=batchnorm"]  # 16^3 cubes (debug/model/ says why)
    cfg = _compose(experiment, overrides)
    torch.manual_seed(0)
    module = build_module(cfg)
    timer = _StepTimer(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.backends.cudnn.benchmark = True  # as conf/trainer/gpu.yaml (benchmark: true)
    trainer = timing_trainer(
        "gpu" if device == "cuda" else "cpu",
        precision,
        args.steps,
        [timer],
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
    )
    trainer.fit(module, datamodule=_batches(args.patch, args.steps))
    warm = timer.times[5:] if len(timer.times) > 6 else timer.times
    s_per_step = statistics.median(warm)
    row = {
        "experiment": experiment,
        "method": EXPERIMENTS.get(experiment, experiment),
        "precision": precision,
        "devices": devices,
        "steps": len(timer.times),
        "s_per_step": s_per_step,
        "patches_per_s": 4 * devices / s_per_step,
        "scaler_skipped_steps": int(module.nonfinite_steps),
        "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }
    return row


def report(rows: list[dict], hardware: str) -> str:
    lines = [
        f"GPU check on {hardware}: {rows[0]['steps'] if rows else 0} Lightning steps per row, "
        "2 labeled + 2 unlabeled patches per GPU, random data",
        "",
        "| method | precision | GPUs | s/step | patches/s | peak GB | scaler-skipped steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peak = "–" if r["peak_mb"] is None else f"{r['peak_mb'] / 1024:.1f}"
        lines.append(
            f"| {r['method']} | {r['precision']} | {r['devices']} | {r['s_per_step']:.3f} | "
            f"{r['patches_per_s']:.1f} | {peak} | {r['scaler_skipped_steps']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--smoke", action="store_true", help="the same code on CPU, toy size")
    parser.add_argument("--ddp-row", action="store_true", help=argparse.SUPPRESS)  # child run
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    if args.smoke:
        args.steps, args.patch = min(args.steps, 2), 48
        precisions = ["32-true", "bf16-mixed"]
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device here: nothing to check (run it where a GPU is).")
        return 0
    else:
        precisions = ["bf16-mixed", "16-mixed"]
    if args.ddp_row:  # re-launched by Lightning's DDP: only this row, JSON on stdout (rank 0)
        row = run_one("amos_scdl", "bf16-mixed", args, devices=2)
        if int(__import__("os").environ.get("LOCAL_RANK", "0")) == 0:
            print("GPU_CHECK_JSON " + json.dumps(row), flush=True)
        return 0
    hardware = "CPU (smoke)" if args.smoke else torch.cuda.get_device_name(0)
    rows = []
    t0 = time.perf_counter()
    for experiment in EXPERIMENTS:
        for precision in precisions:
            rows.append(run_one(experiment, precision, args))
            r = rows[-1]
            print(
                f"{r['method']} {precision}: {r['s_per_step']:.3f} s/step, "
                f"{r['patches_per_s']:.1f} patches/s ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    if not args.smoke and torch.cuda.device_count() >= 2:
        cmd = [sys.executable, __file__, "--ddp-row", "--steps", str(args.steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith("GPU_CHECK_JSON ")]
        if found:
            rows.append(json.loads(found[-1].split(" ", 1)[1]))
        else:
            print(f"2-GPU DDP row failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    table = report(rows, hardware)
    print("\n" + table)
    out = args.out or HERE / "results" / f"{time.strftime('%Y-%m-%d_%H-%M')}_gpu_check.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"hardware": hardware, "rows": rows}, indent=1))
    print(f"\nJSON: {out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
