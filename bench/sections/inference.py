"""The ``inference`` section of ``bench/suite.py``.

Voxels/s of ``eval.py``'s path vs a direct MONAI ``sliding_window_inference`` with the same
model, window and overlap (ratio <= 1.05), and time against volume size."""

from __future__ import annotations

import torch
from common import (
    autocast,
    build,
    fmt,
    interleaved,
    machine_precision,
    precisions,
    say,
    verdict,
)

POSITION = 5  # its place in the run and in the report


def run(args) -> dict:
    """eval.py's sliding window (SemiSupervisedModule.predict_volume via segment_volume) against a
    direct MONAI call with the same network, window, overlap and blending."""
    from monai.inferers import sliding_window_inference

    from scdl.inference.segment import segment_volume

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


def render(res: dict) -> list[str]:
    """The section's tables (Markdown lines) from the suite's results ``res``."""
    L: list[str] = []
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
    return L
