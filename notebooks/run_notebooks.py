"""Execute the notebooks with papermill and export them as Markdown with nbconvert
(``make notebooks``).

    python notebooks/run_notebooks.py [--out docs/notebooks] [-p NAME VALUE ...] [NOTEBOOK ...]

Each notebook runs top to bottom in a fresh kernel (working directory: the repository root) with
the papermill parameters given (``-p LOGS logs/notebook_demo -p FIGURES docs``; each notebook's
``parameters`` cell names its own) and is written to ``<out>/<name>.md``, its figures to
``<out>/<name>_files/``. The stored notebooks are not changed (they stay without outputs).
Needs the ``notebooks`` extra: ``pip install -e ".[notebooks]"``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def execute(path: Path, parameters: dict | None = None, timeout: int = 1800, cwd: Path = ROOT):
    """The notebook at ``path`` executed by papermill with ``parameters`` (raises
    ``PapermillExecutionError`` naming the cell on an error)."""
    import papermill

    return papermill.execute_notebook(
        str(path),
        None,  # the executed notebook is returned, not written
        parameters=parameters or {},
        kernel_name="python3",
        cwd=str(cwd),
        progress_bar=False,
        execution_timeout=timeout,
    )


def to_markdown(nb, name: str, out_dir: Path) -> Path:
    """``out_dir/<name>.md`` by nbconvert's Markdown exporter, its figures in
    ``out_dir/<name>_files/`` (old figures removed first; terminal colour codes stripped)."""
    from nbconvert import MarkdownExporter

    files = out_dir / f"{name}_files"
    for old in files.glob("*") if files.is_dir() else []:
        old.unlink()
    for cell in nb.cells:  # progress bars and loggers may colour their stream output
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                output["text"] = ANSI.sub("", output["text"])
    body, resources = MarkdownExporter().from_notebook_node(
        nb, resources={"output_files_dir": files.name, "unique_key": name}
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    for relative, data in resources.get("outputs", {}).items():
        (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / relative).write_bytes(data)
    path = out_dir / f"{name}.md"
    path.write_text(body)
    return path


def notebooks(names: list[str] | None = None) -> list[Path]:
    """The notebooks to run: ``names`` (paths or stems), else every ``notebooks/*.ipynb``."""
    if not names:
        return sorted(HERE.glob("[0-9]*.ipynb"))
    return [Path(n) if n.endswith(".ipynb") else HERE / f"{n}.ipynb" for n in names]


def _value(text: str):
    """A command-line parameter as papermill's ``-p`` reads it: a number when it is one."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="paths or names (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "notebooks")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = parser.parse_args(argv)
    parameters = {name: _value(value) for name, value in args.p}
    for path in notebooks(args.notebooks):
        start = time.perf_counter()
        print(f"executing {path.name} ...", flush=True)
        nb = execute(path, parameters, args.timeout)
        md = to_markdown(nb, path.stem, args.out)
        print(f"  -> {md} ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
