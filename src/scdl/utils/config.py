"""Hydra / OmegaConf helpers: resolvers, instantiation of callback and logger groups, W&B mode."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def project_root() -> Path:
    """The folder whose ``data/`` and ``logs/`` the configs default to (``paths.root_dir``):
    ``SCDL_HOME`` (or the older ``PROJECT_ROOT``) when set; else the checkout this package runs
    from (an editable install: the folder holding ``pyproject.toml`` and ``src/scdl``); else
    ``~/scdl`` (an installed wheel). Never the current directory: a command run from another
    folder finds the same data."""
    for variable in ("SCDL_HOME", "PROJECT_ROOT"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser().resolve()
    package = Path(__file__).resolve().parents[1]
    checkout = package.parents[1]
    if (checkout / "pyproject.toml").is_file() and package.parent.name == "src":
        return checkout
    return Path.home() / "scdl"


def conf_dir() -> Path:
    """The Hydra config folder, inside the package (``scdl/conf``, ``pkg://scdl.conf``)."""
    return Path(__file__).resolve().parents[1] / "conf"


def register_resolvers() -> None:
    """``${project_root:}``, ``${conf_dir:}`` (the package's config folder), the arithmetic ``${div:a,b}`` (floor division, element-wise for a
    list ``a``), ``${min:...}`` / ``${max:...}`` (of their arguments or of one list),
    ``${cpu_precision:}`` / ``${cpu_channels_last:}`` (:func:`scdl.utils.hardware.cpu_precision_choice`),
    ``${gpu_precision:}`` (:func:`scdl.utils.hardware.gpu_precision_choice`)
    and ``${if_multirun:A,B}`` (A in a Hydra multirun job, else B: W&B run names and groups).

    ``${eval:...}`` is kept for the configs saved by runs before 2026-12-03 (their
    ``.hydra/config.yaml`` and checkpoints still hold it): :func:`safe_arithmetic`, which evaluates
    numbers, lists, ``+ - * // / %``, comprehensions and ``min/max/int/round/abs`` and refuses
    everything else (names, attributes, calls of anything else)."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(project_root()))
    if not OmegaConf.has_resolver("conf_dir"):  # split files shipped with the configs
        OmegaConf.register_new_resolver("conf_dir", lambda: str(conf_dir()))
    if not OmegaConf.has_resolver("cpu_precision"):  # conf/trainer/cpu.yaml: by the CPU's bf16
        from scdl.utils.hardware import cpu_precision_choice

        OmegaConf.register_new_resolver(
            "cpu_precision", lambda: cpu_precision_choice().precision, use_cache=True
        )
        OmegaConf.register_new_resolver(
            "cpu_channels_last", lambda: cpu_precision_choice().channels_last, use_cache=True
        )
    if not OmegaConf.has_resolver("gpu_precision"):  # conf/trainer/gpu.yaml: by the GPUs' bf16
        from scdl.utils.hardware import gpu_precision_choice

        OmegaConf.register_new_resolver(
            "gpu_precision", lambda: gpu_precision_choice().precision, use_cache=True
        )
    if not OmegaConf.has_resolver("if_multirun"):  # conf/logger/wandb.yaml: name and group
        OmegaConf.register_new_resolver("if_multirun", _if_multirun)
    if not OmegaConf.has_resolver("short_hash"):  # folder names from long override lists
        import hashlib

        OmegaConf.register_new_resolver(
            "short_hash", lambda text: hashlib.sha1(str(text).encode()).hexdigest()[:10]
        )
    if not OmegaConf.has_resolver("div"):
        OmegaConf.register_new_resolver("div", _div)
        OmegaConf.register_new_resolver("min", lambda *a: min(_numbers(a)))
        OmegaConf.register_new_resolver("max", lambda *a: max(_numbers(a)))
    if not OmegaConf.has_resolver("eval"):  # configs saved by earlier runs
        OmegaConf.register_new_resolver("eval", safe_arithmetic)


def _numbers(args: tuple) -> list:
    """The arguments of ``${min:...}`` / ``${max:...}``: several numbers, or one list."""
    if len(args) == 1 and isinstance(args[0], ListConfig | list | tuple):
        return list(args[0])
    return list(args)


def _div(a: Any, b: Any) -> Any:
    """``${div:a,b}``: ``a // b``; element-wise when ``a`` is a list (a patch size per axis)."""
    if isinstance(a, ListConfig | list | tuple):
        return [int(x) // int(b) for x in a]
    return int(a) // int(b)


_SAFE_CALLS: dict[str, Callable[..., Any]] = {
    "min": min,
    "max": max,
    "int": int,
    "round": round,
    "abs": abs,
}


def safe_arithmetic(expr: str) -> Any:
    """Evaluates an arithmetic expression of a legacy ``${eval:...}`` config value: numbers,
    lists, tuples, ``+ - * / // % **``, unary minus, list comprehensions over lists, and calls of
    ``min max int round abs``. Anything else (a name that is not a comprehension variable, an
    attribute, a subscript, another call) raises ``ValueError`` naming it: not Python's ``eval``."""
    import ast
    import operator

    ops = {
        ast.Add: operator.add,
        ast.Sub: operator.sub,
        ast.Mult: operator.mul,
        ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv,
        ast.Mod: operator.mod,
        ast.Pow: operator.pow,
    }

    def ev(node: ast.AST, names: dict) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body, names)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.List | ast.Tuple):
            return [ev(e, names) for e in node.elts]
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](ev(node.left, names), ev(node.right, names))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            value = ev(node.operand, names)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Name) and node.id in names:
            return names[node.id]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _SAFE_CALLS
            and not node.keywords
        ):
            return _SAFE_CALLS[node.func.id](*(ev(a, names) for a in node.args))
        if isinstance(node, ast.ListComp) and len(node.generators) == 1:
            gen = node.generators[0]
            if isinstance(gen.target, ast.Name) and not gen.ifs and not gen.is_async:
                return [ev(node.elt, {**names, gen.target.id: v}) for v in ev(gen.iter, names)]
        raise ValueError(f"${{eval:{expr}}}: {ast.dump(node)[:80]} is not plain arithmetic")

    return ev(ast.parse(str(expr), mode="eval"), {})


def in_multirun() -> bool:
    """Whether this process runs one job of a Hydra multirun (its folder is fixed by the sweep)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - not under Hydra
        return False


def _if_multirun(multi: Any, single: Any) -> Any:
    """``${if_multirun:A,B}``: A inside a Hydra multirun job, else B."""
    return multi if in_multirun() else single


def instantiate_dict(group: DictConfig | None) -> list:
    """Instantiates every entry with a ``_target_`` of a config group dict (callbacks, loggers)."""
    from hydra.utils import instantiate

    if not group:
        return []
    return [instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def wandb_mode() -> str:
    """W&B mode to use: ``WANDB_MODE`` if set, else ``online`` with an API key, else ``offline``."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """``conf/<config_name>.yaml`` composed with ``overrides`` as its entry script would, from
    inside a running Hydra app (a training job evaluating its checkpoint) or outside one."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=overrides)
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)
