"""Every ``python src/<entry>.py ...`` command the README and docs/ show composes: its overrides
name existing groups, options and keys of that entry's config (what ``--cfg job`` would print),
so a renamed key or group cannot leave a command in the docs that fails on its first line."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from scdl.utils.config import conf_dir, register_resolvers

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"python3? src/(\w+)\.py((?:[^`\n]|\\\n)*)")
# Commands that name a file the user writes first (docs/extending.md: your own backbone or method):
# their config option does not exist in this checkout.
USER_FILES = ("my_net", "my_method", "my_data")
PLACEHOLDER = re.compile(r"<[^<>]+>")  # <run>, <name>: a value the reader fills in
OPTIONAL_SUFFIX = re.compile(r"\[(_\w+)\]")  # phantom_magicnet[_scdl]: with and without


def _commands() -> list[tuple[str, str, list[str]]]:
    """(where, entry, overrides) of every command in the README and docs/*.md."""
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for m in COMMAND.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            args = m.group(2).replace("\\\n", " ")
            try:
                tokens = shlex.split(args, comments=True)
            except ValueError:  # an unbalanced quote in prose: not a command line
                continue
            found.append((f"{path.relative_to(ROOT)}:{line}", m.group(1), tokens))
    return found


def _is_group(key: str) -> bool:
    return (conf_dir() / key.lstrip("+~")).is_dir()


def _overrides(tokens: list[str], with_suffix: bool = False) -> list[str] | None:
    """The Hydra overrides of a command line as one job would get them: flags (``-m``,
    ``--cfg job``), ``...`` and ``[optional ...]`` arguments dropped, a sweep's comma list reduced
    to its first value, a ``<placeholder>`` filled with a word (dropped where it would choose a
    config group option); None for a command that names a file the user writes first."""
    out, skip = [], False
    for t in tokens:
        if skip:
            skip = False
            continue
        if t in ("--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-dir", "-cd"):
            skip = True
            continue
        if t.startswith(("-", "[")) or t == "..." or t in ("|", "&&", ";"):
            continue
        if "=" not in t:  # the rest of a shell line (a pipe, another program)
            break
        t = OPTIONAL_SUFFIX.sub(r"\1" if with_suffix else "", t)
        key, _, value = t.partition("=")
        if PLACEHOLDER.search(value):
            if _is_group(key):
                continue
            value = PLACEHOLDER.sub("placeholder", value)
        if "," in value and not value.startswith(("[", "{", "'", '"')) and "(" not in value:
            value = value.split(",")[0]  # a multirun sweep: one job's value
        out.append(f"{key}={value}")
    if any(name in t for t in out for name in USER_FILES):
        return None
    return out


COMMANDS = _commands()


def test_the_docs_show_commands():
    entries = {entry for _, entry, _ in COMMANDS}
    assert len(COMMANDS) > 30 and {"train", "eval", "predict"} <= entries


@pytest.fixture(scope="module")
def hydra_conf():
    """One Hydra initialisation for every command (composing is what is tested)."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


@pytest.mark.parametrize(("where", "entry", "tokens"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_documented_command_composes(where, entry, tokens, hydra_conf):
    assert (ROOT / "src" / f"{entry}.py").is_file(), f"{where}: no src/{entry}.py"
    variants = {tuple(o) for s in (False, True) if (o := _overrides(tokens, s)) is not None}
    if not variants:
        pytest.skip("names a file the user writes first")
    for overrides in sorted(variants):
        try:
            compose(entry, overrides=list(overrides), return_hydra_config=True)
        except Exception as err:  # noqa: BLE001 - reported with the command
            shown = " ".join(tokens)
            pytest.fail(f"{where}: python src/{entry}.py {shown}\n  does not compose: {err}")


def test_documented_modules_exist():
    """Every ``python -m scdl.<module>`` the README and docs show names a module with a main."""
    import importlib

    found = set()
    for path in DOCS:
        found |= set(re.findall(r"python3? -m (scdl(?:\.\w+)+)", path.read_text(encoding="utf-8")))
    assert len(found) >= 4
    for name in sorted(found):
        module = importlib.import_module(name)
        assert callable(getattr(module, "main", None)), f"{name} has no main()"
