"""Checks of a composed config that name the key, the bad value and the fix.

:func:`validate_config` runs at the start of :func:`scdl.training.train` (and works on any partial
config: sections that are absent are skipped), so a typo fails in a second with one line such as::

    data.module.patch_size=[48, 48]: expected 3 positive integers (X, Y, Z), ...

instead of a traceback from deep inside the data module or the optimiser. The errors are
:class:`ConfigError`, a ``ValueError`` that Hydra prints without a traceback.

What Hydra itself fails on before any of our code runs (a missing launcher plugin, an unquoted
value) is checked on the command line, by :mod:`scdl.command_line`.

What the code already states is read from it, not restated: the precision values from Lightning's
own type, the choices of a plug-in or module from the ``Literal`` annotations of its constructor,
the patch multiple from the backbone's ``size_divisor`` (the classes are imported, nothing is
built). Only omegaconf / hydra are imported at module level: torch and Lightning load when a check
needs them.
"""

from __future__ import annotations

import importlib.util
import numbers
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from scdl.utils.config import conf_dir
from scdl.utils.errors import ConfigError

_MISSING = object()

ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "hpu", "auto")

SCDL_WEIGHTS = ("w_aux", "w_proxy", "w_sac", "w_kl", "lr_scale")


def precisions() -> tuple:
    """The ``trainer.precision`` values Lightning accepts (its own ``_PRECISION_INPUT`` type,
    read here so a Lightning upgrade needs no edit), plus ``auto`` (chosen per accelerator by
    :mod:`scdl.training`) and null (Lightning's default, 32-true)."""
    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT

    values = [v for part in typing.get_args(_PRECISION_INPUT) for v in typing.get_args(part)]
    return (*values, "auto", None)


def literal_choices(target: str) -> dict[str, tuple]:
    """Constructor parameters of the class ``target`` (a ``_target_``) annotated with a
    ``Literal``: name -> the allowed values. The class is imported, not built; {} when it cannot
    be imported (the builder reports that)."""
    module, _, attr = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - unknown / unimportable target
        return {}
    return {
        name: typing.get_args(hint)
        for name, hint in hints.items()
        if typing.get_origin(hint) is typing.Literal
    }


def group_options(group: str) -> list[str]:
    """Names of the selectable configs of a group (``conf/<group>/*.yaml``; ``common.yaml`` holds
    shared keys and is not an option on its own)."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml") if p.stem != "common")


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    """A value as it would be written in an override (``[48, 48]``, ``'abc'``, ``0.01``)."""
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=False)
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


class _Checker:
    """Collects problems of one config; every check skips keys the config does not have."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.problems: list[str] = []

    def get(self, key: str) -> Any:
        """The resolved value at ``key``; ``_MISSING`` when the key (or ``???``) is absent."""
        try:
            value = OmegaConf.select(self.cfg, key, default=_MISSING, throw_on_missing=True)
        except MissingMandatoryValue:  # ???: reported by whatever needs the value
            return _MISSING
        except Exception as err:  # noqa: BLE001 - interpolation that cannot resolve
            self.problems.append(f"{key}: cannot be resolved ({type(err).__name__}: {err})")
            return _MISSING
        if isinstance(value, DictConfig | ListConfig):
            try:
                value = OmegaConf.to_container(value, resolve=True)
            except Exception as err:  # noqa: BLE001
                self.problems.append(f"{key}: cannot be resolved ({type(err).__name__}: {err})")
                return _MISSING
        return value

    def add(self, key: str, value: Any, expected: str, example: str | float | None = None) -> None:
        fix = f"; e.g. {key}={example}" if example is not None else ""
        self.problems.append(f"{key}={_show(value)}: expected {expected}{fix}")

    # --- typed checks ---------------------------------------------------------------------------

    def number(self, key: str, *, minimum: float = 0.0, strict: bool = False, example=None):
        v = self.get(key)
        if v is _MISSING or v is None:
            return
        if not _is_number(v) or (v <= minimum if strict else v < minimum):
            self.add(key, v, f"a number {'>' if strict else '>='} {minimum:g}", example)

    def integer(self, key: str, *, minimum: int = 1, allow_null: bool = True, example=None):
        v = self.get(key)
        if v is _MISSING or (v is None and allow_null):
            return
        if not _is_int(v) or v < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            self.add(key, v, what, example)

    def boolean(self, key: str) -> None:
        v = self.get(key)
        if v is not _MISSING and v is not None and not isinstance(v, bool):
            self.add(key, v, "true or false")

    def choice(self, key: str, allowed: Iterable, example=None) -> None:
        v = self.get(key)
        allowed = tuple(allowed)
        if v is _MISSING or v in allowed:
            return
        shown = " | ".join(dict.fromkeys(a if isinstance(a, str) else _show(a) for a in allowed))
        self.add(key, v, f"one of {shown}", example)

    def target(self, key: str, fix: str) -> None:
        node = OmegaConf.select(self.cfg, key, default=_MISSING, throw_on_missing=False)
        if node is _MISSING or node is None:
            self.problems.append(f"{key}: missing; {fix}")
        elif not isinstance(node, DictConfig) or "_target_" not in node:
            shown = _show(node)
            shown = shown if len(shown) <= 80 else shown[:76] + " ..."
            self.problems.append(f"{key}: has no _target_ (got {shown}); {fix}")


# ----------------------------------------------------------------------------------------------
# Section checks
# ----------------------------------------------------------------------------------------------


def _size_divisor(target: str) -> int | None:
    """The ``size_divisor`` class attribute of the ``_target_`` class (imported by name, nothing
    is built); None when the class cannot be imported or declares none."""
    module, _, attr = target.rpartition(".")
    try:
        divisor = getattr(importlib.import_module(module), attr).size_divisor
    except Exception:  # noqa: BLE001 - unknown / unimportable target: the builder reports it
        return None
    return divisor if _is_int(divisor) and divisor > 0 else None


def _model_multiple(cfg: DictConfig) -> tuple[int, str]:
    """The factor every patch side must be a multiple of, and why: the ``size_divisor`` class
    attribute of ``model._target_`` (SegmentationBackbone), else 16 (four 2x down-samplings) for a model that declares nothing."""
    target = str(OmegaConf.select(cfg, "model._target_", default="") or "")
    if not target:
        return 1, ""
    name = target.rsplit(".", 1)[-1]
    divisor = _size_divisor(target)
    if divisor is None:
        return 16, f"model {name} declares no size_divisor; 16 assumed"
    why = f"model {name}: size_divisor {divisor}"
    downs = divisor.bit_length() - 1
    if divisor == 2**downs:
        why += f", the {name} halves the resolution {downs} times"
    return divisor, why


def _check_patch(c: _Checker, key: str, allow_null: bool = False) -> None:
    v = c.get(key)
    if v is _MISSING or (v is None and allow_null):
        return
    multiple, why = _model_multiple(c.cfg)
    ok = (
        isinstance(v, list | tuple)
        and len(v) == 3
        and all(_is_int(p) and p > 0 and p % multiple == 0 for p in v)
    )
    if not ok:
        rule = f", each a multiple of {multiple} ({why})" if multiple > 1 else ""
        example = (
            f"[{3 * multiple},{3 * multiple},{3 * multiple}]" if multiple > 1 else "[64,64,64]"
        )
        c.add(key, v, f"3 positive integers (X, Y, Z){rule}", example)


def _check_cubes(c: _Checker) -> None:
    """GA-MagicNet cuts each patch into ``model.cubes_per_axis`` cubes per axis that go through
    the encoder alone: each cube side a multiple of the model's divisor; with InstanceNorm the
    cube's bottleneck needs more than one voxel (a 16^3 cube has a 1^3 one)."""
    n, patch = c.get("model.cubes_per_axis"), c.get("data.module.patch_size")
    if not (_is_int(n) and n > 0 and isinstance(patch, list) and all(_is_int(p) for p in patch)):
        return
    divisor, _ = _model_multiple(c.cfg)
    side = n * divisor
    norm = c.get("model.normalization")
    if norm == "instancenorm":
        side *= 2
    if all(p % (n * divisor) == 0 and p >= side for p in patch):
        return
    why = f"model.cubes_per_axis={n} cubes per axis, each a multiple of {divisor}"
    if norm == "instancenorm":
        why += (
            " and at least twice that with InstanceNorm, whose bottleneck needs more than one "
            f"voxel; model.normalization=batchnorm allows {n * divisor}"
        )
    c.add(
        "data.module.patch_size",
        patch,
        f"sides that are multiples of {n * divisor} and at least {side} ({why})",
        f"[{side},{side},{side}]",
    )


def _check_split_keys(c: _Checker) -> None:
    """A split file fixes the labeled cases: ``labeled_ratio`` / ``num_labeled`` beside it would
    be ignored without a word, and the run named after the file (``amos_cps_5p``) would not say
    what the user asked for."""
    split_file = c.get("data.module.split_file")
    given_keys = {key: c.get(f"data.module.{key}") for key in ("labeled_ratio", "num_labeled")}
    drawn = {key: v for key, v in given_keys.items() if v not in (None, _MISSING)}
    tag = c.get("data.labeled")
    if split_file not in (None, _MISSING) and drawn:
        given = ", ".join(f"data.module.{k}={_show(v)}" for k, v in drawn.items())
        folder = Path(str(split_file)).parent
        names = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
        choice = f"data.labeled={'|'.join(names)}" if names and tag is not _MISSING else None
        c.problems.append(
            f"{given} would be ignored: data.module.split_file={split_file} fixes the labeled "
            "cases. Fix: "
            + (f"pick a split file with {choice}, or " if choice else "")
            + "draw the split with data.module.split_file=null"
            + (" and name it with data.labeled=<name> (it names the run)" if choice else "")
        )
    elif split_file is None and tag not in (None, _MISSING) and drawn:
        split_dir = conf_dir() / "data" / "splits" / str(c.get("data.name"))
        if (split_dir / f"{tag}.json").is_file():
            given = ", ".join(f"data.module.{k}={_show(v)}" for k, v in drawn.items())
            c.problems.append(
                f"data.labeled={tag} names the split file {split_dir / f'{tag}.json'}, but the "
                f"split is drawn ({given}, data.module.split_file=null): the run would be named "
                f"after {tag}. Fix: data.labeled=<a name for this split> (e.g. "
                f"data.labeled=drawn{drawn.get('num_labeled') or drawn.get('labeled_ratio')})"
            )


def _check_data(c: _Checker) -> None:
    _check_patch(c, "data.module.patch_size")
    _check_cubes(c)
    _check_split_keys(c)
    c.integer("data.module.labeled_bs", allow_null=False, example=2)
    c.integer("data.module.unlabeled_bs", minimum=0, allow_null=False, example=2)
    c.integer("data.module.iters_per_epoch", allow_null=False, example=100)
    c.integer("data.module.num_workers", minimum=0, allow_null=False, example=0)
    c.integer("data.num_classes", minimum=2)


def _check_optimizer(c: _Checker) -> None:
    if "optimizer" not in c.cfg or c.cfg.optimizer is None:
        return
    c.target("optimizer", f"select one with optimizer={'|'.join(group_options('optimizer'))}")
    c.number("optimizer.lr", strict=True, example=0.01)
    c.number("optimizer.weight_decay", example=1.0e-4)
    c.number("optimizer.momentum", example=0.9)


def _check_trainer(c: _Checker) -> None:
    if "trainer" not in c.cfg:
        return
    c.integer("trainer.max_steps", allow_null=False, example=1000)
    allowed = precisions()
    c.choice("trainer.precision", allowed, example="bf16-mixed")
    # CPU precision auto-selection (conf/trainer/cpu.yaml) may keep its choice in its own key
    for key in ("trainer.cpu_precision", "cpu_precision"):
        c.choice(key, allowed, example="bf16-mixed")
    c.choice("trainer.accelerator", ACCELERATORS, example="cpu")
    c.integer("trainer.log_every_n_steps", allow_null=False)


def _check_run(c: _Checker) -> None:
    v = c.get("seed")
    if v is not _MISSING and v is not None and not (_is_int(v) and 0 <= v < 2**32):
        c.add("seed", v, f"an integer in 0..{2**32 - 1} (or null: a random seed)", 1337)
    from scdl.inference.sliding_window import window_problems  # the checks of the class itself

    window = {key: c.get(f"framework.inference.{key}") for key in ("overlap", "sw_batch_size")}
    c.problems += window_problems(
        "framework.inference.", **{k: v for k, v in window.items() if v is not _MISSING}
    )


def _check_parts(c: _Checker) -> None:
    if "model" in c.cfg:
        c.target("model", f"select one with model={'|'.join(group_options('model'))}")
    if "framework" in c.cfg:
        c.target("framework", f"select one with framework={'|'.join(group_options('framework'))}")
        # the window follows the patch (${data.module.patch_size}): only a value of its own counts
        if c.get("framework.inference.roi_size") != c.get("data.module.patch_size"):
            _check_patch(c, "framework.inference.roi_size", allow_null=True)
    if "loss" in c.cfg:
        losses = c.cfg.loss
        fix = f"select a loss group with loss={'|'.join(group_options('loss'))}"
        if not isinstance(losses, DictConfig):
            c.problems.append(f"loss={_show(losses)}: expected sup/unsup loss configs; {fix}")
            return
        for part in ("sup", "unsup"):
            c.target(f"loss.{part}", fix)
        if losses.get("sup_b") is not None:
            c.target("loss.sup_b", fix)


def _choice(group: str) -> str | None:
    """The option Hydra selected for ``group`` (None outside Hydra / when unset)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
        value = HydraConfig.get().runtime.choices.get(group)
    except Exception:  # noqa: BLE001 - not composed by Hydra
        return None
    return None if value in (None, "null") else str(value)


def scdl_variants(experiment: str) -> list[tuple[str, str]]:
    """``(experiment, scdl option)`` of the ``conf/experiment`` configs that extend ``experiment``
    with the SCDL plug-in (``phantom_mt`` -> ``[("phantom_scdl", "default")]``)."""
    found = []
    for path in sorted((conf_dir() / "experiment").glob("*.yaml")):
        try:
            defaults = (
                cast(dict, OmegaConf.to_container(OmegaConf.load(path))).get("defaults") or []
            )
        except Exception:  # noqa: BLE001 - unreadable file: no suggestion from it
            continue
        names = {d for d in defaults if isinstance(d, str)}
        scdl = [
            d["override /scdl"] for d in defaults if isinstance(d, dict) and "override /scdl" in d
        ]
        if experiment in names and scdl and scdl[0]:
            found.append((path.stem, str(scdl[0])))
    return found


def _check_scdl(c: _Checker) -> None:
    cfg = c.cfg
    node = cfg.get("scdl") if "scdl" in cfg else None
    ablation = str(cfg.get("ablation_name", "none"))  # every conf/ablation config sets it
    if not node:  # SCDL off: only an SCDL ablation is contradictory
        if ablation not in ("none", "baseline", "None"):
            c.problems.append(_no_scdl_message(cfg, ablation, node))
        return
    if not isinstance(node, DictConfig) or "_target_" not in node:
        c.problems.append(_no_scdl_message(cfg, ablation, node))
        return
    for key in SCDL_WEIGHTS:
        c.number(f"scdl.{key}", example=0.1)
    for key, allowed in literal_choices(str(node._target_)).items():
        c.choice(f"scdl.{key}", allowed)
    c.boolean("scdl.use_unlabeled")
    c.boolean("scdl.detach_prior")
    c.integer("scdl.token_grid", allow_null=False, example=8)
    c.integer("scdl.bottleneck_channels")
    c.integer("scdl.aux_rampup_steps", minimum=0, allow_null=False, example=100)
    if "scdl" in node:
        c.target("scdl.scdl", "restore it with scdl=default (conf/scdl/)")
        for key, allowed in literal_choices(str(node.scdl.get("_target_", ""))).items():
            c.choice(f"scdl.scdl.{key}", allowed)
        for key in ("z_dim", "sample_num", "sample_num_emb"):
            c.integer(f"scdl.scdl.{key}", allow_null=False)
        for key in ("tau_e2p", "tau_p2e"):
            c.number(f"scdl.scdl.{key}", strict=True, example=0.2)
        for key in ("dist_weight", "sigma_emb_init"):
            c.number(f"scdl.scdl.{key}")
        dropout = c.get("scdl.scdl.dropout")
        if dropout is not _MISSING and not (_is_number(dropout) and 0 <= dropout < 1):
            c.add("scdl.scdl.dropout", dropout, "a number in [0, 1)", 0.2)
        c.boolean("scdl.scdl.sac_include_background")


def _no_scdl_message(cfg: DictConfig, ablation: str, node: Any) -> str:
    try:
        name = str(cfg.get("experiment_name", "default"))
    except Exception:  # noqa: BLE001 - interpolation of another section
        name = "default"
    # the experiment config (amos_mt) behind its name (amos_mt_5p); a stale Hydra state of another
    # config (tests, eval) is ignored
    choice = _choice("experiment")
    experiment = choice if choice and name.startswith(choice) else name
    variants = scdl_variants(experiment)
    if variants:
        fix = " or ".join(f"experiment={v}" for v, _ in variants)
        fix += f" (= {experiment} + SCDL), or add scdl={variants[0][1]} to experiment={experiment}"
    else:
        fix = (
            f"pick an experiment with the plug-in (experiment=<...>_scdl, e.g. "
            f"experiment={experiment}_scdl if it exists) or add scdl=default"
        )
    got = "scdl is null" if not node else f"the composed scdl section {_show(node)} has no _target_"
    return (
        f"ablation={ablation} switches parts of the SCDL plug-in, but experiment '{name}' runs "
        f"without it ({got}). Fix: {fix}; ablation=baseline / no ablation for the plain framework"
    )


def validate_config(cfg: DictConfig) -> None:
    """Checks the main groups of a (training) config; raises :class:`ConfigError` listing every
    problem with its key, value and fix. Absent sections are skipped, so run configs of
    ``eval.py`` / ``predict.py`` can be checked too. Cheap: no model or data is built."""
    c = _Checker(cfg)
    _check_data(c)
    _check_run(c)
    _check_optimizer(c)
    _check_trainer(c)
    _check_parts(c)
    _check_scdl(c)
    if not c.problems:
        return
    if len(c.problems) == 1:
        raise ConfigError(f"config error: {c.problems[0]}")
    lines = "\n".join(f"  - {p}" for p in c.problems)
    raise ConfigError(f"config errors ({len(c.problems)}):\n{lines}")
