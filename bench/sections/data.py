"""The ``data`` section of ``bench/suite.py``.

Patches/s delivered by the training DataLoader (workers as configured) vs consumed by the
step, on the phantom and on an AMOS-sized fixture (160 x 160 x 80, 16 classes): >= 2x."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from common import (
    build,
    compose,
    fixed_batch,
    load_partial,
    machine_precision,
    precisions,
    say,
    step_fn,
    timed,
    verdict,
)

POSITION = 3  # its place in the run and in the report


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


def _consumed_at(patch: list[int], device: str) -> float:
    """Patches/s the mean-teacher + SCDL step consumes at ``patch`` (machine precision)."""
    auto = machine_precision(device)
    dtype, cl = precisions(device)[auto]
    module, _, opt, _, cfg = build("phantom_scdl", cl, device, f"data.module.patch_size={patch}")
    batch = fixed_batch(patch, int(cfg.data.num_classes or 14), device)
    fn = step_fn(module, batch, opt, device, dtype)
    fn()
    return 4 / timed(fn, device)


def run(args) -> dict:
    """Training DataLoader throughput (patches/s) against what the step consumes."""
    from scdl.data.datamodule import SemiSupervisedDataModule

    step = load_partial("step")
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


def render(res: dict) -> list[str]:
    """The section's tables (Markdown lines) from the suite's results ``res``."""
    L: list[str] = []
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
    return L
