"""The benchmark suite's report: every figure printed with its target and the right verdict."""

from __future__ import annotations

import importlib.util

from conftest import REPO_ROOT


def _suite():
    spec = importlib.util.spec_from_file_location("suite", REPO_ROOT / "bench" / "suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HARDWARE = {
    "cpu": "X",
    "cpu_capability": "AVX2",
    "threads": 2,
    "torch": "2",
    "cpu_precision_choice": "no native bf16",
}


def _s(x: float) -> dict:
    return {"median": x, "min": x, "max": x, "n": 1}


def test_report_states_targets_and_verdicts():
    suite = _suite()
    res = {
        "hardware": HARDWARE,
        "step": {
            "machine_precision": "fp32",
            "peak_rss_mb": 100.0,
            "seconds": 1.0,
            "rows": [
                {
                    "experiment": "phantom_scdl",
                    "name": "mt + SCDL",
                    "precision": "fp32",
                    "step_s": _s(1.2),
                    "patches_per_s": 4 / 1.2,
                    "patch": [48, 48, 48],
                },
                {
                    "experiment": "phantom_mt",
                    "name": "mt",
                    "precision": "fp32",
                    "step_s": _s(1.0),
                    "patches_per_s": 4.0,
                    "patch": [48, 48, 48],
                },
            ],
        },
        "lightning": {
            "precision": "fp32",
            "lightning_s": _s(1.04),
            "plain_s": _s(1.0),
            "ratio": 1.04,
            "seconds": 1.0,
        },
        "data": {
            "peak_rss_mb": 1.0,
            "seconds": 1.0,
            "rows": [
                {
                    "setting": "phantom",
                    "num_workers": 0,
                    "delivered_patches_per_s": 3.0,
                    "consumed_patches_per_s": 2.0,
                    "ratio": 1.5,
                }
            ],
        },
    }
    text = suite.report(res)
    assert "AVX2" in text  # the capability is stated with the timings
    assert "| fp32 | 1.20 | NOT met |" in text  # SCDL overhead 1.2 > 1.15
    assert "| Trainer.fit | 1.040 (1.040–1.040) | 1.040 | met |" in text
    assert "| 1.5 | NOT met |" in text  # delivered < 2x consumed


def test_every_section_is_one_module_in_order():
    """A section is one file in bench/sections: found, ordered, runnable and rendered."""
    suite = _suite()
    names = list(suite.SECTIONS)
    assert names[:3] == ["step", "lightning", "scdl"] and "cpu_precision" in names
    assert all(callable(getattr(m, "run", None)) for m in suite.SECTIONS.values())
    res = {
        "hardware": HARDWARE,
        "cpu_precision": {
            "choice": "32-true (no native bf16)",
            "seconds": 1.0,
            "rows": [
                {"variant": "fp32", "step_s": _s(4.0)},
                {"variant": "fp32+ftz", "step_s": _s(2.0)},
                {"variant": "bf16+ftz+cl", "step_s": _s(6.0)},
            ],
        },
    }
    text = suite.report(res)
    assert "| fp32 | 4.000 (4.000–4.000) | 2.00 |" in text
    assert "| bf16+ftz+cl | 6.000 (6.000–6.000) | 3.00 |" in text
    assert "Training step" not in text  # only the sections the results hold
