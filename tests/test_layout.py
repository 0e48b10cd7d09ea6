"""The package layout keeps imports flowing one way: data -> models -> frameworks (+ plug-ins) ->
inference -> evaluation -> training; a framework without a plug-in never imports SCDL."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _imported_after(module: str) -> set[str]:
    code = (
        f"import sys; import {module}; "
        "print('\\n'.join(m for m in sys.modules if m == 'scdl' or m.startswith('scdl.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("scdl.evaluation", ("scdl.training",)),
        ("scdl.evaluation.checkpoint", ("scdl.training",)),
        (
            "scdl.frameworks.mean_teacher",
            ("scdl.evaluation", "scdl.training", "scdl.models.scdl", "scdl.plugins"),
        ),
        (
            "scdl.frameworks.cps",
            ("scdl.evaluation", "scdl.training", "scdl.models.scdl", "scdl.plugins"),
        ),
        ("scdl.inference", ("scdl.evaluation", "scdl.frameworks", "scdl.training")),
        ("scdl.models", ("scdl.frameworks", "scdl.evaluation", "scdl.training", "scdl.data")),
        ("scdl.data", ("scdl.models", "scdl.frameworks", "scdl.evaluation", "scdl.training")),
        ("scdl.build", ("scdl.training", "scdl.evaluation")),
    ],
)
def test_imports_flow_one_way(module, forbidden):
    loaded = _imported_after(module)
    bad = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden))
    assert not bad, f"importing {module} imports {bad}"
