"""The authors' released weights as a self-contained checkpoint of this project.

``python src/import_released.py experiment=<...> data.root=... released=<.pth> output=<file.ckpt>``
builds the experiment's module exactly as training would (:func:`scdl.build.build_module`), loads
the released weights into it and writes a checkpoint carrying the resolved config and split (the
format training writes), so ``eval.py`` / ``predict.py`` evaluate it through the project's own
inference path. For GA-MagicNet + SCDL on Synapse that path is the released ``VNetWithPrior``
(decoder features -> 12^3 tokens -> SCDL prior -> ``prior_to_feat`` -> added before the head);
for the AMOS Prior5 model inference is prior-free, as released.

Supported: GA-MagicNet (+ SCDL) checkpoints (``{model, eprl}`` or a plain state dict, with or
without ``module.``; :mod:`scdl.models.magicnet_weights`) and GA-CPS pairs ``released=[A, B]``
(:mod:`scdl.models.reference_weights`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

log = logging.getLogger(__name__)


def _load(path: str | Path) -> dict:
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - name the file and why
        raise ValueError(f"released={path}: cannot be read weights-only ({err})") from err


def load_released(
    module,
    released: str | Sequence[str],
    eprl: str | None = None,
    keep_decoder_priors: bool = False,
) -> dict:
    """Loads released weights into ``module`` (student and EMA teacher alike for MagicNet);
    returns a report ``{"missing": [...], "dropped": [...]}`` of the plug-in keys not in the file
    and of the released keys with no counterpart here."""
    from scdl.frameworks.cps import CPSModule
    from scdl.frameworks.magicnet import MagicNetModule

    if isinstance(module, CPSModule):
        if isinstance(released, str) or len(released) != 2:
            raise ValueError("framework=cps takes released=[<net A .pth>, <net B .pth>]")
        module.load_reference_weights(_load(released[0]), _load(released[1]))
        return {"missing": [], "dropped": []}
    if not isinstance(module, MagicNetModule):
        raise ValueError(
            f"released weights exist for GA-MagicNet and GA-CPS, not {type(module).__name__}: use "
            "an experiment with framework=magicnet or framework=cps"
        )
    from scdl.models.magicnet_weights import split_released_magicnet

    if not isinstance(released, str):
        raise ValueError("framework=magicnet takes one file: released=<.pth>")
    parts = split_released_magicnet(
        _load(released), _load(eprl) if eprl else None, keep_decoder_priors=keep_decoder_priors
    )
    cast(nn.Module, module.student).load_state_dict(parts.backbone, strict=True)
    module.teacher.module.load_state_dict(parts.backbone, strict=True)
    missing: list[str] = []
    if module.plugin is not None:
        result = cast(nn.Module, module.plugin).load_state_dict(parts.plugin, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"released plug-in keys with no place here: {result.unexpected_keys}")
        missing = list(result.missing_keys)
        if missing:
            log.warning(
                "%d plug-in tensors not in the released file (kept as initialised): %s",
                len(missing),
                missing[:8],
            )
    elif parts.plugin:
        log.warning("the experiment has no plug-in: released keys %s ignored", sorted(parts.plugin))
    return {"missing": missing, "dropped": parts.dropped}


def import_released(cfg: DictConfig) -> Path:
    """Builds ``cfg``'s module, loads ``cfg.released`` into it and writes ``cfg.output``."""
    from scdl.build import build_module, setup_data

    datamodule = setup_data(cfg)  # fills data.num_classes / class_names, draws the split
    module = build_module(cfg)
    released = cfg.released
    if isinstance(released, ListConfig):
        released = [str(r) for r in released]
    report = load_released(
        module, released, cfg.get("released_eprl"), bool(cfg.get("keep_decoder_priors"))
    )
    run_config = cast(dict, OmegaConf.to_container(cfg, resolve=True))
    run_config["split"] = datamodule.split.to_dict()
    out = Path(cfg.output).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "run_config": run_config,
        "global_step": 0,
        "released_from": str(released),
        "released_report": report,
    }
    tmp = out.with_name(out.name + ".tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(out)
    log.info(
        "wrote %s (from %s); evaluate with: python src/eval.py ckpt_path=%s", out, released, out
    )
    return out
