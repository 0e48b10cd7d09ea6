"""The package layout keeps imports flowing one way (the layers of ``LAYERS`` below: data -> models
-> losses/metrics -> frameworks/plug-ins -> training parts -> inference -> evaluation -> reporting
-> entry), without a circle; a framework without a plug-in never imports SCDL."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("scdl.evaluation", ("scdl.training",)),
        ("scdl.inference.checkpoint", ("scdl.training",)),
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
    """What importing ``module`` can load, read from the source: every import it or anything it
    imports makes, at module level or inside a function, with the packages' ``__init__`` on the
    way (stricter than importing it, which runs the module-level ones only)."""
    loaded = _closure(module)
    bad = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden))
    assert not bad, f"{module} can import {bad}"


# ------------------------------------------------------------------------------------------------
# The layer order, read from the source: every import (module level or inside a function)
# ------------------------------------------------------------------------------------------------

SRC = Path(__file__).resolve().parents[1] / "src"

#: lowest first; a module may import its own layer or a lower one. The sliding window is a leaf the
#: frameworks use for validation; the rest of inference (checkpoints, native grid, predict) sits
#: above training's parts (callbacks, loggers, resume) and below evaluation. The training entry
#: (fit, test, post-evaluation), the sweeps and the cross-group config checks orchestrate all.
LAYERS = (
    ("scdl", "scdl.utils"),
    ("scdl.runs", "scdl.data"),
    ("scdl.models",),
    ("scdl.losses", "scdl.metrics"),
    ("scdl.inference.sliding_window",),
    ("scdl.frameworks", "scdl.plugins", "scdl.build"),
    ("scdl.loggers", "scdl.callbacks", "scdl.resume"),
    ("scdl.inference",),
    ("scdl.evaluation",),
    ("scdl.reporting",),
    ("scdl.config_checks", "scdl.command_line", "scdl.training", "scdl.sweeps"),
    ("scdl.commands",),  # the console commands and src/*.py: nothing imports them
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "scdl").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The scdl modules ``name`` imports anywhere in its source (``from a import b`` names the
    module ``a.b`` when that is a module)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            out |= {
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            }
    return {m for m in out if m in modules and m != name}


def _layer(name: str) -> int:
    best = (-1, -1)  # (length of the longest matching prefix, layer)
    for rank, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > best[0]:
                best = (len(p), rank)
    assert best[1] >= 0, f"{name} is in no layer of tests/test_layout.py LAYERS: add it"
    return best[1]


@functools.cache  # the source is read once for every test of this file
def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _closure(module: str) -> set[str]:
    """The scdl modules ``module`` can reach through imports (and their parent packages)."""
    graph = _graph()
    seen: set[str] = set()
    todo = [module]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            parts = dep.split(".")
            for reached in (".".join(parts[:i]) for i in range(2, len(parts) + 1)):
                if reached in graph and reached not in seen:
                    seen.add(reached)
                    todo.append(reached)
    return seen


def test_no_module_imports_a_higher_layer():
    bad = [
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, deps in sorted(_graph().items())
        for b in sorted(deps)
        if _layer(b) > _layer(a)
    ]
    assert not bad, "\n".join(bad)


def test_no_import_circle():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_reading_results_loads_no_torch():
    """``python -m scdl.reporting.summary`` and the run-folder reader stay light."""
    code = (
        "import sys, scdl.reporting.summary, scdl.runs, scdl.evaluation; "
        "print(' '.join(m for m in ('torch', 'nibabel', 'lightning') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []


def test_data_in_stages():
    """data/: the cache reader is a leaf, the checks are validators that neither prepare nor
    orchestrate, and only the catalog orchestrates (nothing below imports it)."""
    graph = _graph()
    assert graph["scdl.data.cache"] == set()
    assert not graph["scdl.data.checks"] & {"scdl.data.prepare", "scdl.data.catalog"}
    users = sorted(m for m, deps in graph.items() if "scdl.data.catalog" in deps)
    assert all(not m.startswith("scdl.data.") for m in users), users
