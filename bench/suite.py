"""The benchmark suite behind ``make bench``: every figure with its target and verdict.

``python bench/suite.py [--device cpu|cuda] [--repeats 3] [--only step lightning ...]``

Sections (each in a subprocess of its own, so its peak memory is its own):

- ``step``: training step (fwd + bwd + optimiser) and patches/s of the full modules built by the
  project's builder at the experiment's patch size: mean teacher + SCDL and the backbone-only mean
  teacher in every precision (fp32, fp32 + channels-last-3D, bf16 autocast, bf16 + channels-last),
  every framework at the precision training picks for this machine.
- ``lightning``: the same mean-teacher + SCDL step run by ``Trainer.fit`` vs a plain PyTorch loop
  (same module, batch, precision): Lightning / plain <= 1.05.
- ``scdl``: SCDL overhead (full module / backbone-only step <= 1.15, from ``step``) and SCDL's own
  forward + backward as the token grid and the proxy samples S grow.
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

Times are medians (with min and max) over ``--repeats`` runs after a warm-up; variants that are
compared run interleaved, so load drifts hit them alike. Results: a table on stdout and JSON in
``bench/results/<date>_<device>.json``. Needs the phantom cache (``make data``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SECTIONS = ("step", "lightning", "scdl", "data", "prepare", "inference", "flops", "profile")
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


# --- building modules and batches with the project's own builder -------------------------------------
def compose(experiment: str, *overrides: str):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from scdl.utils.config import project_root, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(project_root() / "conf"), version_base="1.3"):
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


# --- sections ----------------------------------------------------------------------------------------
def section_step(args) -> dict:
    dev, out = args.device, {"rows": []}
    variants = {}
    for pname, (dtype, cl) in precisions(dev).items():
        for exp in ("phantom_scdl", "phantom_mt"):
            say(f"building {exp} ({pname})")
            module, batch, opt, patch, _ = build(exp, cl, dev)
            variants[(exp, pname)] = step_fn(module, batch, opt, dev, dtype)
    auto = machine_precision(dev)
    dtype, cl = precisions(dev)[auto]
    module, batch, opt, patch, _ = build("phantom_scdl", cl, dev)
    opt = per_tensor_updates(module, opt)
    variants[("phantom_scdl", f"{auto} per-tensor EMA")] = step_fn(module, batch, opt, dev, dtype)
    say(f"timing {len(variants)} variants, {args.repeats} repeats")
    res = interleaved({f"{e}|{p}": f for (e, p), f in variants.items()}, args.repeats, 1, dev)
    others = {}
    for exp in (
        "phantom_cps",
        "phantom_cps_scdl",
        "phantom_dhc",
        "phantom_magicnet",
        "phantom_magicnet_scdl",
    ):
        say(f"building {exp} ({auto})")
        extra = ["trainer.precision=32-true", "channels_last=false"] if "magicnet" in exp else []
        module, batch, opt, patch, _ = build(exp, cl and not extra, dev, *extra)
        others[f"{exp}|{auto if not extra else 'fp32'}"] = step_fn(
            module, batch, opt, dev, None if extra else dtype
        )
    res.update(interleaved(others, args.repeats, 1, dev))
    if dev.startswith("cuda"):  # the papers' patch as well (every framework: bench/gpu_check.py)
        say(f"building phantom_scdl at 96^3 ({auto})")
        module, batch, opt, _, _ = build(
            "phantom_scdl", cl, dev, "data.module.patch_size=[96,96,96]"
        )
        paper = {f"phantom_scdl|{auto} 96^3": step_fn(module, batch, opt, dev, dtype)}
        res.update(interleaved(paper, args.repeats, 1, dev))
    for key, s in res.items():
        exp, pname = key.split("|")
        out["rows"].append(
            {
                "experiment": exp,
                "name": FRAMEWORKS[exp],
                "precision": pname,
                "step_s": s,
                "patches_per_s": 4 / s["median"],
                "patch": [96, 96, 96] if pname.endswith("96^3") else patch,
            }
        )
    out["machine_precision"] = auto
    return out


class _FixedBatches(torch.utils.data.IterableDataset):
    def __init__(self, batch: dict, n: int) -> None:
        self.batch, self.n = batch, n

    def __iter__(self):
        for _ in range(self.n):
            yield self.batch


def section_lightning(args) -> dict:
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


def section_scdl(args) -> dict:
    """SCDL module alone (forward + backward of its terms) against token grid and proxy samples S."""
    from scdl.models.scdl import SCDL

    dev, rows = args.device, []
    num_classes, x_dim = 14, 16
    grids = (4, 6, 8) if not dev.startswith("cuda") else (6, 8, 12)
    for grid in grids:
        for s in (10, 50, 100):
            torch.manual_seed(0)
            scdl = SCDL(num_classes=num_classes, x_dim=x_dim, sample_num=s).to(dev)
            n_tok = 2 * grid**3
            g = torch.Generator().manual_seed(0)
            x = torch.randn(2, grid**3, x_dim, generator=g).to(dev).requires_grad_(True)
            y = torch.softmax(torch.randn(2, grid**3, num_classes, generator=g), -1).to(dev)
            cls = torch.randn(num_classes, x_dim, generator=g).to(dev)
            ids = torch.arange(num_classes, device=dev)

            def fn(scdl=scdl, x=x, y=y, cls=cls, ids=ids) -> None:
                out = scdl(x, y, cls, ids)
                loss = sum(v.float().sum() for v in _tensors(out))
                loss.backward()

            times = []
            for i in range(args.repeats + 2):  # 2 warm-ups: oneDNN builds kernels per shape
                t = timed(fn, dev)
                if i >= 2:
                    times.append(t)
            rows.append({"grid": grid, "tokens": n_tok, "S": s, "fwd_bwd_s": stats(times)})
            say(f"  SCDL alone grid {grid} S {s}: {stats(times)['median'] * 1e3:.1f} ms")
    return {"rows": rows}


def _tensors(out) -> list[torch.Tensor]:
    import dataclasses

    if dataclasses.is_dataclass(out):
        out = [getattr(out, f.name) for f in dataclasses.fields(out)]
    if isinstance(out, torch.Tensor):
        return [out] if out.requires_grad else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


def _amos_sized_cache(root: Path, cases: int = 6) -> Path:
    """nnU-Net raw cases of 160 x 160 x 80 voxels (1 mm) with 16 classes, prepared by the
    project's preprocessing (identity resampling): the AMOS cache size on the phantom's path."""
    import nibabel as nib
    import numpy as np

    from scdl.data.layouts import read_nnunet_raw
    from scdl.data.prepare import PreprocessProtocol, prepare_dataset

    raw = root / "raw"
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shape = (160, 160, 80)
    for i in range(cases):
        label = np.zeros(shape, np.uint8)
        for c in range(1, 16):  # one box per class, sizes from large to small
            size = np.maximum(2, (np.array(shape) * (0.5 / c**0.5)).astype(int))
            lo = [rng.integers(0, s - z) for s, z in zip(shape, size, strict=True)]
            label[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = c
        image = (label * 20.0 + rng.normal(0, 15, shape)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), raw / "imagesTr" / f"amos_{i:04d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), raw / "labelsTr" / f"amos_{i:04d}.nii.gz")
    labels = {"background": 0, **{f"organ{c:02d}": c for c in range(1, 16)}}
    (raw / "dataset.json").write_text(
        json.dumps(
            {
                "name": "amos_sized",
                "labels": labels,
                "channel_names": {"0": "CT"},
                "numTraining": cases,
                "file_ending": ".nii.gz",
            }
        )
    )
    protocol = PreprocessProtocol(name="bench", spacing=(1.0, 1.0, 1.0))
    return prepare_dataset(read_nnunet_raw(raw), protocol, root / "cache", progress=False)


def section_data(args) -> dict:
    """Training DataLoader throughput (patches/s) against what the step consumes."""
    from scdl.data.datamodule import SemiSupervisedDataModule

    step = _load_partial("step")
    auto_rows = [r for r in (step or {}).get("rows", []) if r["experiment"] == "phantom_scdl"]
    consumed_phantom = max((r["patches_per_s"] for r in auto_rows), default=None)
    out = {"rows": []}
    tmp = Path(tempfile.mkdtemp(prefix="scdl_bench_data_"))
    say("writing + preprocessing the AMOS-sized fixture (6 cases, 160 x 160 x 80, 16 classes)")
    amos_cache = _amos_sized_cache(tmp)
    phantom_cfg = compose("phantom_scdl")
    settings = {
        "phantom (48^3 patches)": (phantom_cfg.data.cache_dir, [48, 48, 48]),
        "AMOS-sized (96^3 patches)": (str(amos_cache), [96, 96, 96]),
    }
    for name, (cache, patch) in settings.items():
        dm = SemiSupervisedDataModule(
            cache_dir=cache,
            patch_size=patch,
            labeled_bs=2,
            unlabeled_bs=2,
            num_labeled=2,
            num_val=1,
            num_test=1,
            labeled_sampling="class_balanced",
            num_workers=int(phantom_cfg.data.module.get("num_workers", 0)),
        )
        dm.setup("fit")
        loader = dm.train_dataloader()
        it = iter(loader)
        next(it)  # workers started, first batch
        n, t0 = 0, time.perf_counter()
        while n < 40 and time.perf_counter() - t0 < 30:
            next(it)
            n += 1
        delivered = 4 * n / (time.perf_counter() - t0)
        consumed = consumed_phantom if "phantom" in name else None
        if consumed is None:
            consumed = _consumed_at(patch, args.device)
        out["rows"].append(
            {
                "setting": name,
                "delivered_patches_per_s": delivered,
                "consumed_patches_per_s": consumed,
                "ratio": delivered / consumed,
                "num_workers": dm.num_workers,
            }
        )
        say(f"  {name}: delivered {delivered:.1f} patches/s, step consumes {consumed:.2f}")
    return out


def section_prepare(args) -> dict:
    """Cases/s of prepare_dataset (checks + preprocessing) with 1 and N workers on CT-sized cases."""
    import filecmp

    import nibabel as nib
    import numpy as np

    from scdl.data.layouts import read_nnunet_raw
    from scdl.data.prepare import PreprocessProtocol, prepare_dataset
    from scdl.utils.parallel import available_cores

    n_cases, shape = 8, (512, 512, 120)  # enough cases to amortise the workers' start-up
    tmp = Path(tempfile.mkdtemp(prefix="scdl_bench_prepare_"))
    root = tmp / "Dataset900_CT"
    say(f"writing {n_cases} CT-sized cases ({'x'.join(map(str, shape))} int16 NIfTI)")
    labels = {"background": 0, **{f"organ{i}": i for i in range(1, 5)}}
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": labels, "file_ending": ".nii.gz"})
    )
    rng = np.random.default_rng(0)
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    for i in range(n_cases):
        image = rng.normal(40, 30, shape).astype(np.int16)
        label = np.zeros(shape, np.uint8)
        for k in range(1, 5):
            lo = rng.integers(0, [s - s // 4 for s in shape])
            label[tuple(slice(a, a + s // 4) for a, s in zip(lo, shape, strict=True))] = k
        nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / f"ct_{i:03d}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / f"ct_{i:03d}.nii.gz"))
    raw = read_nnunet_raw(root)
    protocol = PreprocessProtocol(name="bench")
    workers = max(2, min(available_cores(), n_cases))
    times: dict[int, list[float]] = {1: [], workers: []}
    for rep in range(1 if args.repeats < 3 else 2):
        for w in (1, workers):  # alternately: load drifts hit both
            cache = tmp / f"cache_w{w}_r{rep}"
            t0 = time.perf_counter()
            prepare_dataset(raw, protocol, cache, progress=False, workers=w)
            times[w].append(time.perf_counter() - t0)
            say(f"  {w} worker(s): {n_cases / times[w][-1]:.3f} cases/s")
    serial, parallel = tmp / "cache_w1_r0", tmp / f"cache_w{workers}_r0"
    same = all(
        filecmp.cmp(serial / p.name, parallel / p.name, shallow=False) for p in serial.glob("*.npy")
    )
    rows = [
        {"workers": w, "cases_per_s": n_cases / statistics.median(ts), "seconds": ts}
        for w, ts in times.items()
    ]
    return {
        "rows": rows,
        "ratio": rows[1]["cases_per_s"] / rows[0]["cases_per_s"],
        "identical": same,
        "cases": n_cases,
        "shape": list(shape),
        "cores": available_cores(),
    }


def _consumed_at(patch: list[int], device: str) -> float:
    """Patches/s the mean-teacher + SCDL step consumes at ``patch`` (machine precision)."""
    auto = machine_precision(device)
    dtype, cl = precisions(device)[auto]
    module, _, opt, _, cfg = build("phantom_scdl", cl, device, f"data.module.patch_size={patch}")
    batch = fixed_batch(patch, int(cfg.data.num_classes or 14), device)
    fn = step_fn(module, batch, opt, device, dtype)
    fn()
    return 4 / timed(fn, device)


def section_inference(args) -> dict:
    """eval.py's sliding window (SemiSupervisedModule.predict_volume via segment_volume) against a
    direct MONAI call with the same network, window, overlap and blending."""
    from monai.inferers import sliding_window_inference

    from scdl.evaluation.predict import segment_volume

    dev = args.device
    auto = machine_precision(dev)
    dtype, cl = precisions(dev)[auto]
    module, _, _, patch, _ = build("phantom_mt", cl, dev)
    module.eval()
    inf = module.inference_cfg
    prec = {None: "32-true", torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed"}[dtype]
    rows = []
    for shape in ((64, 64, 64), (96, 96, 64), (128, 128, 96)):
        image = torch.randn(*shape)

        def ours(image=image) -> None:
            segment_volume(module, image, torch.device(dev), prec)

        def direct(image=image) -> None:
            x = image[None, None].to(dev)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            with torch.inference_mode(), autocast(dev, dtype):
                p = sliding_window_inference(
                    x,
                    inf.roi_size or patch,
                    inf.sw_batch_size,
                    module.segment,
                    overlap=inf.overlap,
                    mode=inf.mode,
                )
                p.float().softmax(1).argmax(1).cpu()

        say(f"volume {shape}")
        res = interleaved({"eval.py path": ours, "MONAI direct": direct}, args.repeats, 1, dev)
        vox = shape[0] * shape[1] * shape[2]
        rows.append(
            {
                "shape": list(shape),
                "ours_s": res["eval.py path"],
                "monai_s": res["MONAI direct"],
                "voxels_per_s": vox / res["eval.py path"]["median"],
                "ratio": res["eval.py path"]["median"] / res["MONAI direct"]["median"],
            }
        )
    return {
        "precision": auto,
        "overlap": inf.overlap,
        "window": list(inf.roi_size or patch),
        "rows": rows,
    }


def section_flops(args) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    dev = args.device
    out = {"rows": []}
    for pname in ("fp32", "bf16"):
        dtype = None if pname == "fp32" else torch.bfloat16
        cl = pname == "bf16" and machine_precision(dev).endswith("+cl")
        module, batch, opt, patch, _ = build("phantom_mt", cl, dev)
        fn = step_fn(module, batch, opt, dev, dtype)
        fn()
        with FlopCounterMode(display=False) as counter:
            fn()
        flops = counter.get_total_flops()
        times = [timed(fn, dev) for _ in range(args.repeats)]
        n = 4096 if dev.startswith("cuda") else 1024
        a = torch.randn(n, n, device=dev, dtype=dtype or torch.float32)
        torch.mm(a, a)
        mm = [timed(lambda a=a: torch.mm(a, a), dev) for _ in range(5)]
        peak = 2 * n**3 / min(mm) / 1e9
        achieved = flops / statistics.median(times) / 1e9
        out["rows"].append(
            {
                "precision": pname + ("+cl" if cl else ""),
                "gflop_per_step": flops / 1e9,
                "step_s": stats(times),
                "achieved_gflops": achieved,
                "matmul_peak_gflops": peak,
                "fraction_of_peak": achieved / peak,
            }
        )
        say(f"  {pname}: {flops / 1e9:.1f} GFLOP/step, {achieved:.1f} GFLOP/s vs matmul {peak:.1f}")
    return out


def section_profile(args) -> dict:
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


# --- orchestration -----------------------------------------------------------------------------------
def _partial_path() -> Path:
    return Path(os.environ["SCDL_BENCH_PARTIAL"])


def _load_partial(section: str) -> dict | None:
    path = _partial_path()
    return json.loads(path.read_text()).get(section) if path.is_file() else None


def run_section(name: str, args) -> dict:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    if args.device == "cpu":
        torch.set_flush_denormal(True)
    training_math(args.device)  # the matmul peak and the steps with the same TF32 settings
    t0 = time.perf_counter()
    result = globals()[f"section_{name}"](args)
    result["seconds"] = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["peak_rss_mb"] = peak_kb / 1024
    if args.device.startswith("cuda"):
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def hardware(device: str) -> dict:
    from scdl.utils.hardware import cpu_precision_choice

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "cpu_precision_choice": cpu_precision_choice().reason,
        "torch": torch.__version__,
    }
    try:
        model = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln]
        info["cpu"] = model[0].split(":", 1)[1].strip()
    except (OSError, IndexError):
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "NOT met")


def report(res: dict) -> str:
    """Markdown tables of every figure with its target and verdict."""
    L: list[str] = []
    hw = res["hardware"]
    L.append(
        f"Hardware: {hw['cpu']}, torch CPU capability {hw['cpu_capability']}, {hw['threads']} "
        f"threads{', GPU ' + hw['gpu'] if 'gpu' in hw else ''}; torch {hw['torch']}; "
        f"training precision here: {res.get('step', {}).get('machine_precision', '?')} "
        f"({hw['cpu_precision_choice']})."
    )
    fmt = lambda s: f"{s['median']:.3f} ({s['min']:.3f}–{s['max']:.3f})"  # noqa: E731
    if "step" in res:
        step = res["step"]
        L += [
            "",
            "**Training step** (2 labeled + 2 unlabeled patches, fwd + bwd + AdamW; s, "
            "median (min–max))",
            "",
            "| module | precision | patch | s / step | patches/s | vs fp32 |",
            "|---|---|---|---|---|---|",
        ]
        fp32 = {
            r["experiment"]: r["step_s"]["median"] for r in step["rows"] if r["precision"] == "fp32"
        }
        for r in step["rows"]:
            ref = fp32.get(r["experiment"])
            L.append(
                f"| {r['name']} | {r['precision']} | {'x'.join(map(str, r['patch']))} | "
                f"{fmt(r['step_s'])} | {r['patches_per_s']:.1f} | "
                f"{r['step_s']['median'] / ref:.2f} |"
                if ref
                else f"| {r['name']} | {r['precision']} | {'x'.join(map(str, r['patch']))} | "
                f"{fmt(r['step_s'])} | {r['patches_per_s']:.1f} | – |"
            )
        L += [
            "",
            f"peak RSS of the section: {step['peak_rss_mb']:.0f} MB"
            + (f", peak CUDA {step['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in step else ""),
        ]
        rows = {(r["experiment"], r["precision"]): r["step_s"]["median"] for r in step["rows"]}
        auto = step["machine_precision"]
        pairs = [
            ("multi-tensor EMA update (foreach)", f"{auto} per-tensor EMA", auto),
            ("channels-last-3D, fp32", "fp32", "fp32+cl"),
            ("channels-last-3D, bf16", "bf16", "bf16+cl"),
            ("bf16 autocast (vs fp32)", "fp32", "bf16"),
            ("bf16 + channels-last (vs fp32)", "fp32", "bf16+cl"),
        ]
        L += [
            "",
            "**Optimisations, before / after in this run** (mean teacher + SCDL step; "
            "after / before < 1 is faster)",
            "",
            "| change | before s | after s | after / before |",
            "|---|---|---|---|",
        ]
        for name, before, after in pairs:
            b, a = rows.get(("phantom_scdl", before)), rows.get(("phantom_scdl", after))
            if b and a:
                L.append(f"| {name} | {b:.3f} | {a:.3f} | {a / b:.2f} |")
        L += [
            "",
            "**SCDL overhead** (mean teacher + SCDL / backbone-only mean teacher, same precision; target <= 1.15)",
            "",
            "| precision | ratio | verdict |",
            "|---|---|---|",
        ]
        for p in sorted({p for _, p in rows}):
            if ("phantom_scdl", p) in rows and ("phantom_mt", p) in rows:
                ratio = rows[("phantom_scdl", p)] / rows[("phantom_mt", p)]
                L.append(f"| {p} | {ratio:.2f} | {verdict(ratio <= 1.15)} |")
    if "lightning" in res:
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
    if "scdl" in res:
        L += [
            "",
            "**SCDL module alone** (forward + backward, 2 volumes of grid^3 tokens; ms)",
            "",
            "| grid | tokens | S | ms |",
            "|---|---|---|---|",
        ]
        for r in res["scdl"]["rows"]:
            L.append(
                f"| {r['grid']} | {r['tokens']} | {r['S']} | {r['fwd_bwd_s']['median'] * 1e3:.1f} |"
            )
    if "data" in res:
        L += [
            "",
            "**Data pipeline** (training DataLoader, class-balanced crops; target delivered >= 2x consumed)",
            "",
            "| data | workers | delivered patches/s | consumed patches/s | ratio | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for r in res["data"]["rows"]:
            L.append(
                f"| {r['setting']} | {r['num_workers']} | {r['delivered_patches_per_s']:.1f} | "
                f"{r['consumed_patches_per_s']:.2f} | {r['ratio']:.1f} | {verdict(r['ratio'] >= 2)} |"
            )
        L.append(f"\npeak RSS of the section: {res['data']['peak_rss_mb']:.0f} MB")
    if "inference" in res:
        inf = res["inference"]
        L += [
            "",
            f"**Sliding-window inference** (window {inf['window']}, overlap {inf['overlap']}, "
            f"{inf['precision']}; target eval.py / MONAI <= 1.05)",
            "",
            "| volume | eval.py path s | MONAI direct s | Mvoxels/s | ratio | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for r in inf["rows"]:
            L.append(
                f"| {'x'.join(map(str, r['shape']))} | {fmt(r['ours_s'])} | {fmt(r['monai_s'])} | "
                f"{r['voxels_per_s'] / 1e6:.2f} | {r['ratio']:.3f} | {verdict(r['ratio'] <= 1.05)} |"
            )
    if "prepare" in res:
        prep = res["prepare"]
        L += [
            "",
            f"**Check + preprocessing** ({prep['cases']} CT-sized cases, "
            f"{'x'.join(map(str, prep['shape']))} int16 NIfTI, to 1.5 x 1.5 x 2 mm; "
            f"{prep['cores']} cores; caches byte-identical: {prep['identical']})",
            "",
            "| workers | cases/s | vs 1 worker |",
            "|---|---|---|",
        ]
        base = prep["rows"][0]["cases_per_s"]
        for r in prep["rows"]:
            L.append(
                f"| {r['workers']} | {r['cases_per_s']:.3f} | {r['cases_per_s'] / base:.2f}x |"
            )
    if "flops" in res:
        L += [
            "",
            "**Achieved throughput** (VNet mean-teacher step, FLOPs from torch.utils.flop_counter; "
            "peak = best measured square matmul of that dtype)",
            "",
            "| precision | GFLOP / step | GFLOP/s | matmul peak GFLOP/s | of peak |",
            "|---|---|---|---|---|",
        ]
        for r in res["flops"]["rows"]:
            L.append(
                f"| {r['precision']} | {r['gflop_per_step']:.1f} | {r['achieved_gflops']:.1f} | "
                f"{r['matmul_peak_gflops']:.1f} | {r['fraction_of_peak']:.0%} |"
            )
    if "profile" in res:
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
    L.append("")
    L.append(
        "seconds per section: "
        + ", ".join(
            f"{k} {v['seconds']:.0f}"
            for k, v in res.items()
            if isinstance(v, dict) and "seconds" in v
        )
    )
    return "\n".join(L)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)  # child process
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
