"""The ``step`` section of ``bench/suite.py``.

Training step (fwd + bwd + optimiser) and patches/s of the full modules built by the project's
builder at the experiment's patch size: mean teacher + SCDL and the backbone-only mean teacher in
every precision (fp32, fp32 + channels-last-3D, bf16 autocast, bf16 + channels-last), every
framework at the precision training picks for this machine; the SCDL overhead (full module /
backbone-only step <= 1.15) and the optimisations before / after, from the same run."""

from __future__ import annotations

from common import (
    FRAMEWORKS,
    build,
    fmt,
    interleaved,
    machine_precision,
    per_tensor_updates,
    precisions,
    say,
    step_fn,
    verdict,
)

POSITION = 0  # its place in the run and in the report


def run(args) -> dict:
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


def render(res: dict) -> list[str]:
    """The section's tables (Markdown lines) from the suite's results ``res``."""
    L: list[str] = []
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
    return L
