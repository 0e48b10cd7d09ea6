"""The config resolvers: named arithmetic (``div``, ``min``, ``max``) on hand cases, the configs'
derived values, and the legacy ``${eval:...}`` of saved run configs evaluated without Python's
``eval`` (anything but arithmetic refused)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import compose_cfg
from scdl.utils.config import register_resolvers, safe_arithmetic


def _resolve(yaml: str):
    register_resolvers()
    return OmegaConf.to_container(OmegaConf.create(yaml), resolve=True)


def test_named_arithmetic():
    out = _resolve(
        "p: [96, 96, 64]\nn: 2\nsteps: 17001\n"
        "cube: ${div:${p},${n}}\nramp: ${div:${steps},4}\n"
        "grid: ${max:1,${div:${min:${p}},8}}\ntiny: ${max:1,${div:${min:[4,8,8]},8}}\n"
        "lo: ${min:3,1,2}\nhi: ${max:${p}}\n"
    )
    assert out["cube"] == [48, 48, 32] and out["ramp"] == 4250
    assert out["grid"] == 8 and out["tiny"] == 1 and out["lo"] == 1 and out["hi"] == 96


@pytest.mark.parametrize(
    ("overrides", "cube", "grid", "ramp"),
    [
        (["experiment=phantom_magicnet_scdl"], [16, 16, 16], 6, None),
        (["experiment=phantom_scdl", "trainer.max_steps=1001"], None, 6, 250),
        (["experiment=amos_scdl", "data.module.patch_size=[96,96,64]"], None, 8, 4250),
    ],
)
def test_derived_values_of_the_configs(overrides, cube, grid, ramp, tmp_path):
    cfg = compose_cfg(overrides, output_dir=tmp_path)
    if cube is not None:
        assert list(cfg.model.cube_size) == cube
    assert cfg.scdl.token_grid == grid
    if ramp is not None:
        assert cfg.framework.rampup_steps == ramp


def test_legacy_eval_of_saved_configs_still_resolves():
    """What runs saved before the named resolvers: the same values."""
    out = _resolve(
        "p: [96, 96, 64]\nn: 2\nsteps: 17001\n"
        "cube: ${eval:'[s // ${n} for s in ${p}]'}\n"
        "ramp: ${eval:'${steps} // 4'}\n"
        "grid: ${eval:'max(1, min(${p}) // 8)'}\n"
    )
    assert out["cube"] == [48, 48, 32] and out["ramp"] == 4250 and out["grid"] == 8
    assert safe_arithmetic("-(2 ** 3) + 10 % 4 + abs(-1) + round(2.6) + int(1.9)") == -1


@pytest.mark.parametrize(
    "expr",
    [
        "().__class__.__bases__",
        "__import__('os').system('true')",
        "open('/etc/passwd')",
        "[1, 2][0]",
        "undefined_name",
        "[x for x in [1] if x]",
        "min(*[1, 2])",
        "'text'",
    ],
)
def test_legacy_eval_refuses_anything_but_arithmetic(expr):
    with pytest.raises(ValueError, match="not plain arithmetic"):
        safe_arithmetic(expr)
