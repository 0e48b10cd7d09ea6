"""Documentation: the method specification ships with the repository and every "§" pointer into it
resolves (docs/method.md)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"
# Pointers to a specification outside the checkout, which users do not have.
FORBIDDEN = ("../" + "shared", "scdl-" + "method.md")
SECTION_REF = re.compile(r"§(\d+)(?:\.(\d+))?")


def _repo_text_files() -> list[Path]:
    """Tracked files plus untracked, not ignored ones (what a commit or a copy of the tree holds)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    files = []
    for name in sorted({n for n in out.decode().split("\0") if n}):
        path = ROOT / name
        if name == "tests/test_docs.py" or not path.is_file():
            continue
        files.append(path)
    return files


def _read_text(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_no_pointer_outside_the_repository() -> None:
    offenders = []
    for path in _repo_text_files():
        text = _read_text(path)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if any(s in line for s in FORBIDDEN):
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()[:100]}")
    assert not offenders, "pointers to a file outside the repository:\n" + "\n".join(offenders)


def _sections() -> tuple[set[str], set[int]]:
    """Headings "## N." / "### N.M" of docs/method.md, and the item numbers of the §8 list."""
    text = METHOD.read_text(encoding="utf-8")
    headings = set(re.findall(r"^##+ (\d+(?:\.\d+)?)\.? ", text, flags=re.M))
    part8 = text.split("\n## 8.", 1)[1].split("\n## 9.", 1)[0]
    items = {int(n) for n in re.findall(r"^(\d+)\. ", part8, flags=re.M)}
    return headings, items


def test_method_spec_has_its_sections() -> None:
    assert METHOD.is_file()
    headings, items8 = _sections()
    for n in range(1, 10):
        assert str(n) in headings, f"docs/method.md lacks '## {n}.'"
    for sub in ("1.1", "1.2", "1.3", "2.1", "2.2", "2.3", "3.1", "3.2", "3.4", "3.5", "3.6"):
        assert sub in headings, f"docs/method.md lacks '### {sub}'"
    for sub in ("4.1", "4.2", "4.3", "4.4", "4.5"):
        assert sub in headings, f"docs/method.md lacks '### {sub}'"
    assert items8 >= set(range(1, 20)), "the §8 list must keep its items 1-19"


def test_section_pointers_resolve() -> None:
    """Every "§N" / "§N.M" on a line that names method.md (and inside it) exists there; "§8.M" is
    item M of the §8 list."""
    headings, items8 = _sections()
    broken = []
    for path in [*_repo_text_files(), METHOD]:
        text = _read_text(path)
        if text is None:
            continue
        own = path == METHOD
        for lineno, line in enumerate(text.splitlines(), 1):
            if not own and "method.md" not in line:
                continue
            for major, minor in SECTION_REF.findall(line):
                ok = (
                    major in headings
                    if not minor
                    else f"{major}.{minor}" in headings or (major == "8" and int(minor) in items8)
                )
                if not ok:
                    ref = f"§{major}" + (f".{minor}" if minor else "")
                    broken.append(f"{path.relative_to(ROOT)}:{lineno}: {ref}")
    assert not broken, "pointers to missing sections of docs/method.md:\n" + "\n".join(broken)


def test_pre_commit_hooks_are_local_and_match_make_lint() -> None:
    """The pre-commit hooks need no download (local, the environment's tools) and lint what
    ``make lint`` lints."""
    import yaml

    cfg = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    assert [r["repo"] for r in cfg["repos"]] == ["local"]
    hooks = {h["id"]: h for h in cfg["repos"][0]["hooks"]}
    assert {"ruff-check", "ruff-format", "mypy", "nbstripout", "check-yaml"} <= set(hooks)
    assert all(h["language"] == "system" for h in hooks.values())
    make_lint = (ROOT / "Makefile").read_text().split("\nlint:", 1)[1].split("\n\n", 1)[0]
    for hook in ("ruff-check", "ruff-format"):
        assert hooks[hook]["files"].strip("^/()").split("|") == ["src", "tests", "bench"]
        assert "src tests bench" in make_lint
    # the type checker: the same command (settings in pyproject.toml) in both
    assert hooks["mypy"]["entry"] == "mypy" and hooks["mypy"]["pass_filenames"] is False
    assert "$(BIN)/mypy\n" in make_lint + "\n"
