"""Checks of the command line before Hydra parses it: the fix where Hydra itself would fail first.

``src/<entry>.py`` calls :func:`exit_on_bad_command_line` before ``main()``: a launcher / sweeper
whose plugin package is not installed (:func:`missing_hydra_plugins`, the pip package and the
extra named) and values with spaces or non-ASCII characters left unquoted
(:func:`unquoted_values`, the quoted form shown). Checks of the composed config are
:mod:`scdl.config_checks`.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from typing import cast

from omegaconf import OmegaConf

from scdl.utils.config import conf_dir

# ----------------------------------------------------------------------------------------------
# Hydra launcher / sweeper plugins
# ----------------------------------------------------------------------------------------------

# (hydra group, option) -> (plugin module, pip package, extra of pyproject.toml)
HYDRA_PLUGINS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("hydra/launcher", "submitit_slurm"): (
        "hydra_plugins.hydra_submitit_launcher",
        "hydra-submitit-launcher",
        "slurm",
    ),
    ("hydra/launcher", "submitit_local"): (
        "hydra_plugins.hydra_submitit_launcher",
        "hydra-submitit-launcher",
        "slurm",
    ),
    ("hydra/launcher", "joblib"): (
        "hydra_plugins.hydra_joblib_launcher",
        "hydra-joblib-launcher",
        "joblib",
    ),
    ("hydra/sweeper", "optuna"): (
        "hydra_plugins.hydra_optuna_sweeper",
        "hydra-optuna-sweeper",
        "hpo",
    ),
}
# groups of conf/ whose configs may select a launcher / sweeper in their defaults list
_SELECTING_GROUPS = ("launcher", "sweep", "experiment")


def plugin_available(module: str) -> bool:
    """Whether a Hydra plugin module can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # parent package (hydra_plugins) absent
        return False


def _parse_override(arg: str) -> tuple[str, list[str]] | None:
    if arg.startswith("-") or "=" not in arg:
        return None
    key, _, value = arg.lstrip("+~").partition("=")
    key = key.strip().strip("/")
    if key.startswith("override "):
        key = key[len("override ") :].strip("/ ")
    values = [v.strip() for v in value.split(",") if v.strip() and v.strip() != "null"]
    return key, values


def _selections_of(group: str, option: str, depth: int = 0) -> list[tuple[str, str, str]]:
    """(hydra group, option, how it was selected) of a ``conf/<group>/<option>.yaml``'s defaults."""
    if depth > 4:
        return []
    path = conf_dir() / group / f"{option}.yaml"
    try:
        defaults = cast(dict, OmegaConf.to_container(OmegaConf.load(path))).get("defaults") or []
    except Exception:  # noqa: BLE001 - unknown option: Hydra reports it
        return []
    found = []
    for entry in defaults:
        if isinstance(entry, str):  # same-group parent (experiment: phantom_scdl -> phantom_mt)
            found += _selections_of(group, entry, depth + 1)
            continue
        if not isinstance(entry, dict):
            continue
        for raw_key, value in entry.items():
            key = raw_key.replace("override", "").strip().strip("/")
            if value is None:
                continue
            if key in ("hydra/launcher", "hydra/sweeper"):
                found.append((key, str(value), f"{group}={option}"))
            elif key in _SELECTING_GROUPS:
                found += [
                    (g, o, f"{group}={option}")
                    for g, o, _ in _selections_of(key, str(value), depth + 1)
                ]
    return found


def missing_hydra_plugins(argv: Sequence[str] | None = None) -> list[str]:
    """Messages for the launcher / sweeper plugins that the command line selects (directly with
    ``hydra/launcher=...`` / ``hydra/sweeper=...``, or through ``launcher=slurm``, a ``sweep=`` or
    an ``experiment=`` config) but that are not installed."""
    argv = sys.argv[1:] if argv is None else argv
    wanted: list[tuple[str, str, str]] = []
    for arg in argv:
        parsed = _parse_override(arg)
        if parsed is None:
            continue
        key, values = parsed
        for value in values:
            if key in ("hydra/launcher", "hydra/sweeper"):
                wanted.append((key, value, f"{key}={value}"))
            elif key in _SELECTING_GROUPS:
                wanted += [(g, o, f"{key}={value}") for g, o, _ in _selections_of(key, value)]
    messages = []
    for group, option, how in wanted:
        plugin = HYDRA_PLUGINS.get((group, option))
        if plugin is None or plugin_available(plugin[0]):
            continue
        module, package, extra = plugin
        msg = (
            f"{how} needs the Hydra plugin {package} ({group}={option}), which is not installed "
            f'(no module {module}). Install it with: pip install -e ".[{extra}]"'
        )
        if msg not in messages:
            messages.append(msg)
    return messages


def exit_if_missing_hydra_plugins(argv: Sequence[str] | None = None) -> None:
    """Prints the install hint and exits with status 2 when a selected plugin is missing (Hydra
    would otherwise fail with ``Could not find 'hydra/launcher/submitit_slurm'``)."""
    messages = missing_hydra_plugins(argv)
    if messages:
        for msg in messages:
            print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(2)


def unquoted_values(argv: Sequence[str] | None = None) -> list[str]:
    """Messages for overrides whose value holds spaces or non-ASCII characters without quotes:
    Hydra's override grammar fails on them with ``LexerNoViableAltException``."""
    argv = sys.argv[1:] if argv is None else argv
    messages = []
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.partition("=")
        if not value or value[0] in "'\"" or value.startswith(("[", "{", "${")):
            continue
        if any(ch.isspace() or ord(ch) > 127 for ch in value):
            messages.append(
                f"{key}={value}: a value with spaces or non-ASCII characters must be quoted for "
                f"Hydra. Write it as \"{key}='{value}'\" (double quotes for the shell, single "
                "quotes for Hydra)"
            )
    return messages


def exit_on_bad_command_line(argv: Sequence[str] | None = None) -> None:
    """What Hydra fails on before any of our code runs, said with the fix: unquoted values with
    spaces or non-ASCII characters, and launcher / sweeper plugins that are not installed. Prints
    the messages and exits with status 2."""
    messages = unquoted_values(argv) + missing_hydra_plugins(argv)
    if messages:
        for msg in messages:
            print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(2)
