"""Load the released GA-MagicNet (+ SCDL) checkpoints ([SCDL]/[GA] ``networks/magicnet.py``
``VNet_Magic``, ``networks/magicnet_SCDL_prior5.py``) into :class:`scdl.models.vnet_magic.VNetMagic`
and :class:`scdl.plugins.scdl_plugin.SCDLPlugin` (docs/method.md §2.2-2.4).

Released key layout (``f`` = 16; checkpoints saved from ``nn.DataParallel`` add ``module.``) -> ours:

* VNetMagic (:func:`convert_released_magicnet`, strict):
  ``encoder.<block>.conv.<i>.*`` and ``decoder.<block>.conv.<i>.*`` -> the VNet names of
  :func:`scdl.models.reference_weights.reference_key_to_ours` (``encoder.block_one.conv.0.weight``
  -> ``block1.0.weight``, ``encoder.block_two_dw.conv.0.bias`` -> ``down2.0.bias``,
  ``decoder.block_five_up.conv.0.weight`` -> ``up5.0.weight``, ``decoder.out_conv.weight`` ->
  ``out_conv.weight``); ``fc_layer.fc_layer.{0,1,3}.*`` -> ``fc_layer.{0,1,3}.*`` (with the
  BatchNorm1d buffers); ``decoder.p12/p24/p48/p96.weight`` -> ``decoder_priors.0/1/2/3.weight``
  only with ``keep_decoder_priors`` (otherwise dropped).
* SCDLPlugin: ``prior_to_feat.weight`` (256 -> 16, Synapse) -> ``prior_to_feat.weight``
  (``prior_feedback: head``); ``prior_proj5.weight`` (512 -> 256, AMOS Prior5) ->
  ``prior_to_bottleneck.weight`` (``prior_feedback: bottleneck``); the ``eprl`` SCDL state ->
  ``scdl.<key>``, same names except the bare ``proxies`` -> ``scdl.proxies.weight``.
* dropped: ``x4_to_xdim.weight`` (128 -> 16; no released code path uses it).

The non-affine InstanceNorm layers hold no tensors, so the ``conv.<i>`` indices of the convolutions
(0, 3, 6 in a stage; 0 in a down/up block) are the same in both layouts. The SCDL module
(:class:`scdl.models.scdl.SCDL`) has the released parameter names except the proxies: the released
bare ``proxies`` (C, 2z) tensor is ``proxies.weight`` here (the module's load hook also accepts the
bare name).

Prior5 applies ``prior_proj5`` after resizing the 512-channel prior to the bottleneck, the plug-in
resizes after the projection; a bias-free 1x1x1 convolution commutes with trilinear interpolation, so
both give the same map.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from scdl.models.reference_weights import reference_key_to_ours

DECODER_PRIOR_KEYS = {"p12": 0, "p24": 1, "p48": 2, "p96": 3}
PLUGIN_KEYS = {
    "prior_to_feat.weight": "prior_to_feat.weight",
    "prior_proj5.weight": "prior_to_bottleneck.weight",
}
UNUSED_KEYS = ("x4_to_xdim.weight",)
_FC = re.compile(r"^fc_layer\.fc_layer\.(.+)$")
_DECODER_PRIOR = re.compile(r"^decoder\.(p12|p24|p48|p96)\.(.+)$")


@dataclass
class ReleasedMagicNet:
    """A released MagicNet checkpoint split by destination.

    Attributes:
        backbone: state dict for :class:`~scdl.models.vnet_magic.VNetMagic` (``strict=True`` with
            ``decoder_prior_channels`` set iff the decoder priors were kept).
        plugin: state dict for :class:`~scdl.plugins.scdl_plugin.SCDLPlugin`: the prior projection
            (``prior_to_feat`` or ``prior_to_bottleneck``) and, if the checkpoint has ``eprl``, the
            SCDL module under ``scdl.``. Load with ``strict=True`` when it holds both, else
            ``strict=False``.
        dropped: released keys with no counterpart here (``x4_to_xdim``, unkept decoder priors).
    """

    backbone: dict[str, torch.Tensor] = field(default_factory=dict)
    plugin: dict[str, torch.Tensor] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)


def _unwrap(state: Mapping, wrappers: tuple[str, ...]) -> Mapping:
    for wrapper in wrappers:
        if wrapper in state and isinstance(state[wrapper], Mapping):
            return state[wrapper]
    return state


def released_magicnet_key(key: str, keep_decoder_priors: bool = False) -> tuple[str, str | None]:
    """One released model key (without ``module.``) -> ``(destination, our key)``; destination is
    ``backbone``, ``plugin`` or ``dropped`` (our key None).

    Raises:
        KeyError: not a key of the released ``VNet_Magic`` / ``VNet_Magic_SCDL_Prior5``.
    """
    if key in PLUGIN_KEYS:
        return "plugin", PLUGIN_KEYS[key]
    if key in UNUSED_KEYS:
        return "dropped", None
    m = _FC.match(key)
    if m:
        return "backbone", f"fc_layer.{m.group(1)}"
    m = _DECODER_PRIOR.match(key)
    if m:
        if not keep_decoder_priors:
            return "dropped", None
        return "backbone", f"decoder_priors.{DECODER_PRIOR_KEYS[m.group(1)]}.{m.group(2)}"
    for part in ("encoder.", "decoder."):
        if key.startswith(part):
            return "backbone", reference_key_to_ours(key.removeprefix(part))
    raise KeyError(f"not a released MagicNet key: {key!r}")


def scdl_key_to_ours(key: str) -> str:
    """Released SCDL (``eprl``) key -> :class:`~scdl.models.scdl.SCDL` key: identical except the
    bare ``proxies`` tensor, which is ``proxies.weight`` here."""
    return "proxies.weight" if key == "proxies" else key


def split_released_magicnet(
    checkpoint: Mapping[str, torch.Tensor | Mapping],
    eprl: Mapping[str, torch.Tensor] | None = None,
    keep_decoder_priors: bool = False,
) -> ReleasedMagicNet:
    """Split a released MagicNet checkpoint.

    Args:
        checkpoint: the model state dict (optionally ``module.``-prefixed), or a dict wrapping it
            under ``model`` / ``state_dict`` / ``net`` (the Synapse ``{model, eprl}`` file); its
            ``eprl`` entry, if any, is the SCDL state.
        eprl: a separate SCDL state dict (the released inference's ``--eprl_path``); overrides the
            checkpoint's own.
        keep_decoder_priors: map ``decoder.p12 ... p96`` to ``decoder_priors.*`` (build the backbone
            with ``decoder_prior_channels=256``) instead of dropping them.
    """
    if eprl is None and isinstance(checkpoint.get("eprl"), Mapping):
        eprl = checkpoint["eprl"]  # type: ignore[assignment]
    model = _unwrap(checkpoint, ("model", "state_dict", "net"))
    out = ReleasedMagicNet()
    for key, value in model.items():
        key = key.removeprefix("module.")
        dest, ours = released_magicnet_key(key, keep_decoder_priors)
        if dest == "backbone":
            out.backbone[ours] = value  # type: ignore[index]
        elif dest == "plugin":
            out.plugin[ours] = value  # type: ignore[index]
        else:
            out.dropped.append(key)
    if eprl is not None:
        for key, value in _unwrap(eprl, ("eprl", "state_dict")).items():
            out.plugin["scdl." + scdl_key_to_ours(key.removeprefix("module."))] = value
    return out


def convert_released_magicnet(
    state_dict: Mapping[str, torch.Tensor | Mapping], keep_decoder_priors: bool = False
) -> dict[str, torch.Tensor]:
    """Released ``VNet_Magic`` state dict (or a checkpoint wrapping it) -> a state dict that loads
    into :class:`~scdl.models.vnet_magic.VNetMagic` with ``strict=True``; the plug-in's parts and the
    unused ``x4_to_xdim`` are left out (see :func:`split_released_magicnet`)."""
    return split_released_magicnet(state_dict, keep_decoder_priors=keep_decoder_priors).backbone
