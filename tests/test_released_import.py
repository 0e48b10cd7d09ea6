"""Released GA-MagicNet + SCDL weights -> a self-contained checkpoint -> eval.py, through the same
inference path as the released script (state dicts written here in the released key layout)."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import compose_cfg, tiny_train_overrides

_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _released_key(ours: str) -> str:
    """Our VNetMagic key -> the released ``VNet_Magic`` key (the inverse of the converter)."""
    if ours.startswith("fc_layer."):
        return "fc_layer." + ours
    if ours.startswith("out_conv."):
        return "decoder." + ours
    m = re.match(r"^(block|down|up)(\d)\.(.+)$", ours)
    kind, n, rest = m.group(1), int(m.group(2)), m.group(3)
    suffix = {"block": "", "down": "_dw", "up": "_up"}[kind]
    part = "encoder" if (kind == "down" or (kind == "block" and n <= 5)) else "decoder"
    return f"{part}.block_{_WORDS[n - 1]}{suffix}.conv.{rest}"


def _cfg(cache, tmp_path, *extra):
    return compose_cfg(
        [
            "experiment=phantom_magicnet_scdl",
            *tiny_train_overrides(cache, tmp_path),
            "data.module.patch_size=[48,48,48]",
            *extra,
        ],
        config_name="import_released",
        output_dir=tmp_path / "import",
    )


def test_released_synapse_checkpoint_imports_and_evaluates(phantom_cache, tmp_path):
    from scdl.build import build_module, setup_data
    from scdl.evaluation.evaluate import evaluate
    from scdl.inference.released import import_released

    # "the authors' model": a module of the same architecture with other random weights
    src_cfg = _cfg(phantom_cache, tmp_path, "released=x", "output=x")
    setup_data(src_cfg)
    torch.manual_seed(123)
    source = build_module(src_cfg).eval()
    model = {
        "module." + _released_key(k): v.clone() for k, v in source.student.state_dict().items()
    }
    model["module.prior_to_feat.weight"] = source.plugin.prior_to_feat.weight.detach().clone()
    model["module.x4_to_xdim.weight"] = torch.randn(16, 128, 1, 1, 1)  # unused by any path
    eprl = {
        ("proxies" if k == "proxies.weight" else k): v.clone()
        for k, v in source.plugin.scdl.state_dict().items()
    }
    released = tmp_path / "iter_15000_dice_0.65_best.pth"
    torch.save({"model": model, "eprl": eprl}, released)

    out = tmp_path / "imported" / "model.ckpt"
    import_released(_cfg(phantom_cache, tmp_path, f"released={released}", f"output={out}"))
    state = torch.load(out, weights_only=True)
    assert state["released_report"]["dropped"] == ["x4_to_xdim.weight"]
    assert state["released_report"]["missing"] == []
    for key, value in source.state_dict().items():
        if key.startswith(("student.", "plugin.")):
            assert torch.equal(state["state_dict"][key], value), key

    # eval.py on the imported checkpoint: the VNetWithPrior path (prior at the head) of the source
    from scdl.inference.checkpoint import load_module_from_checkpoint

    imported, _ = load_module_from_checkpoint(out)
    x = torch.randn(1, 1, 48, 48, 48)
    with torch.no_grad():
        features = source.student.decode(source.student.encode(x))
        tokens_prior = source.plugin.inference_prior(features)
        expected = source.plugin.head_with_prior(features, tokens_prior, source.student.head)
        torch.testing.assert_close(imported.segment(x), expected)
    summary = evaluate(
        compose_cfg(
            [
                f"ckpt_path={out}",
                f"paths.log_dir={tmp_path}/logs",
                "logger=csv",
                "progress=false",
                "protocol=paper",
                "split=test",
                "inference.overlap=0",
            ],
            config_name="eval",
        )
    )
    assert 0.0 <= summary["overall"]["dice"]["mean"] <= 1.0


def test_released_file_for_the_wrong_framework_is_refused(phantom_cache, tmp_path):
    from scdl.build import build_module, setup_data
    from scdl.inference.released import load_released

    cfg = compose_cfg(
        ["experiment=phantom_scdl", *tiny_train_overrides(phantom_cache, tmp_path)],
        output_dir=tmp_path / "r",
    )
    setup_data(cfg)
    with pytest.raises(ValueError, match="GA-MagicNet and GA-CPS, not MeanTeacherModule"):
        load_released(build_module(cfg), "x.pth")


def test_released_amos_prior5_state_dict_imports_and_infers_prior_free(phantom_cache, tmp_path):
    from scdl.build import build_module, setup_data
    from scdl.inference.checkpoint import load_module_from_checkpoint
    from scdl.inference.released import import_released

    src_cfg = _cfg(phantom_cache, tmp_path, "scdl=amos", "released=x", "output=x")
    setup_data(src_cfg)
    torch.manual_seed(7)
    source = build_module(src_cfg).eval()
    plain = {_released_key(k): v.clone() for k, v in source.student.state_dict().items()}
    plain["prior_proj5.weight"] = source.plugin.prior_to_bottleneck.weight.detach().clone()
    released = tmp_path / "iter_17000_dice_0.549271_best.pth"
    torch.save(plain, released)  # a plain state dict, no `module.`, no SCDL state
    out = tmp_path / "amos.ckpt"
    import_released(
        _cfg(phantom_cache, tmp_path, "scdl=amos", f"released={released}", f"output={out}")
    )
    report = torch.load(out, weights_only=True)["released_report"]
    assert report["missing"] and all(k.startswith("scdl.") for k in report["missing"])
    imported, _ = load_module_from_checkpoint(out)
    x = torch.randn(1, 1, 48, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(imported.segment(x), source.student(x))
    assert torch.equal(
        imported.plugin.prior_to_bottleneck.weight, source.plugin.prior_to_bottleneck.weight
    )
