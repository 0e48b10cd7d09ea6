"""Execute the notebooks and export them as Markdown with their figures (``make notebooks``).

    python notebooks/run_notebooks.py [--out docs/notebooks] [--timeout 1800] [NOTEBOOK ...]

Each notebook runs top to bottom in a fresh kernel (nbclient, working directory: the repository
root) and is written to ``<out>/<name>.md``, its figures to ``<out>/<name>_files/*.png``. The
stored notebooks are not changed (they stay without outputs). The notebooks read their inputs from
``SCDL_NOTEBOOK_*`` environment variables (see their first code cell), e.g.
``SCDL_NOTEBOOK_LOGS=logs/notebook_demo SCDL_NOTEBOOK_FIGURES=docs make notebooks``.
Needs the ``notebooks`` extra: ``pip install -e ".[notebooks]"``.
"""

from __future__ import annotations

import argparse
import base64
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def execute(path: Path, timeout: int = 1800, cwd: Path = ROOT):
    """The notebook at ``path`` executed in a fresh ``python3`` kernel (raises on a cell error)."""
    import tempfile

    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    # local sockets (IPC) instead of TCP: no network port, no "running over TCP" warning
    with tempfile.TemporaryDirectory(prefix="scdl-kernel-") as sockets:
        km = KernelManager(kernel_name="python3", transport="ipc", ip=f"{sockets}/kernel")
        client = NotebookClient(
            nb, km=km, timeout=timeout, resources={"metadata": {"path": str(cwd)}}
        )
        try:
            client.execute()
        finally:  # a kernel manager passed in is not shut down by nbclient
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    return nb


def _text(value) -> str:
    return ANSI.sub("", "".join(value) if isinstance(value, list) else str(value))


def _fenced(text: str, lang: str = "text") -> str:
    text = text.rstrip("\n")
    return f"```{lang}\n{text}\n```" if text.strip() else ""


def to_markdown(nb, name: str, out_dir: Path) -> Path:
    """Writes ``out_dir/<name>.md`` (markdown cells, code, text outputs) and the PNG outputs as
    ``out_dir/<name>_files/<name>_<cell>_<k>.png``."""
    files = out_dir / f"{name}_files"
    if files.is_dir():
        for old in files.glob("*.png"):
            old.unlink()
    parts: list[str] = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            parts.append(cell.source)
            continue
        if cell.cell_type != "code":
            continue
        parts.append(_fenced(cell.source, "python"))
        for k, out in enumerate(cell.get("outputs", [])):
            kind = out.get("output_type")
            if kind == "stream":
                parts.append(_fenced(_text(out.get("text", ""))))
            elif kind == "error":
                parts.append(_fenced(_text("\n".join(out.get("traceback", [])))))
            elif kind in ("display_data", "execute_result"):
                data = out.get("data", {})
                if "image/png" in data:
                    files.mkdir(parents=True, exist_ok=True)
                    png = files / f"{name}_{i:02d}_{k}.png"
                    png.write_bytes(base64.b64decode(data["image/png"]))
                    parts.append(f"![{name} cell {i}]({files.name}/{png.name})")
                elif "text/markdown" in data:
                    parts.append(_text(data["text/markdown"]))
                elif "text/plain" in data:
                    parts.append(_fenced(_text(data["text/plain"])))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.md"
    header = (
        f"<!-- executed from notebooks/{name}.ipynb by notebooks/run_notebooks.py "
        "(make notebooks); do not edit -->"
    )
    path.write_text(header + "\n\n" + "\n\n".join(p for p in parts if p) + "\n")
    return path


def notebooks(names: list[str] | None = None) -> list[Path]:
    """The notebooks to run: ``names`` (paths or stems), else every ``notebooks/*.ipynb``."""
    if not names:
        return sorted(HERE.glob("[0-9]*.ipynb"))
    out = []
    for n in names:
        p = Path(n)
        out.append(p if p.suffix == ".ipynb" else HERE / f"{n}.ipynb")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="paths or names (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "notebooks")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)
    for path in notebooks(args.notebooks):
        start = time.perf_counter()
        print(f"executing {path.name} ...", flush=True)
        nb = execute(path, args.timeout)
        md = to_markdown(nb, path.stem, args.out)
        print(f"  -> {md} ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
