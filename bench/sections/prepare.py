"""The ``prepare`` section of ``bench/suite.py``.

Cases/s of checking + preprocessing CT-sized NIfTI fixtures (512 x 512 x 120 int16,
0.8 x 0.8 x 2.5 mm, to 1.5 x 1.5 x 2 mm) with 1 and with N worker processes
(``data.prepare_workers``), run alternately; the caches are compared byte for byte."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from common import (
    say,
)

POSITION = 4  # its place in the run and in the report


def run(args) -> dict:
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


def render(res: dict) -> list[str]:
    """The section's tables (Markdown lines) from the suite's results ``res``."""
    L: list[str] = []
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
        L.append(f"| {r['workers']} | {r['cases_per_s']:.3f} | {r['cases_per_s'] / base:.2f}x |")
    return L
