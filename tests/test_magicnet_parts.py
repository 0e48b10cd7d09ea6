"""MagicNet building blocks: cube operations, blending weights, schedule, VNetMagic and the released
key layout (fast, hand-built tensors)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scdl.frameworks.magicnet_cubes import (
    check_cube_grid,
    merge_cubes,
    partition_cross_image,
    recover_cross_image,
    shuffle_cubes,
    split_cubes,
    transpose_cube_grid,
)
from scdl.losses.magicnet import ClassFrequencyWeights, magicnet_consistency_weight
from scdl.models.contracts import check_backbone
from scdl.models.magicnet_weights import convert_released_magicnet, split_released_magicnet
from scdl.models.scdl import SCDL
from scdl.models.vnet_magic import VNetMagic, location_head_in_features
from scdl.plugins.scdl_plugin import SCDLPlugin


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- cube operations -------------------------------------------------------------------------
def test_partition_mixes_cubewise_and_recovery_is_identity():
    n, s, b = 3, 2, 4
    # every voxel of volume b holds b, so a mixed cube shows which volume it came from
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1, 1).expand(b, 1, 3 * s, 3 * s, 3 * s)
    mixed, perms = partition_cross_image(x, n, _gen(1))
    assert perms.shape == (27, b)
    assert (perms.sort(dim=1).values == torch.arange(b)).all()  # one permutation per cube position
    for k in range(27):
        i, j, m = k // 9, (k // 3) % 3, k % 3
        cube = mixed[:, 0, i * s : (i + 1) * s, j * s : (j + 1) * s, m * s : (m + 1) * s]
        assert (cube == perms[k].view(b, 1, 1, 1).float()).all()
    assert not all((perms[k] == torch.arange(b)).all() for k in range(27))  # it does mix

    # features = identity map of the mixed input: recovery gives the input back
    x = torch.randn(b, 2, 6, 9, 12)
    mixed, perms = partition_cross_image(x, n, _gen(2))
    assert torch.equal(recover_cross_image(mixed, perms, n), x)
    # any channel count: a 5-channel map of the mixed batch is un-mixed the same way
    feats = torch.cat([mixed, -mixed, mixed[:, :1] * 2], dim=1)
    rec = recover_cross_image(feats, perms, n)
    assert torch.equal(rec, torch.cat([x, -x, x[:, :1] * 2], dim=1))


def test_split_merge_identity_and_order():
    x = torch.randn(2, 3, 8, 4, 6)
    cubes = split_cubes(x, 2)
    assert cubes.shape == (16, 3, 4, 2, 3)
    # row b * 8 + k is cube k = i * 4 + j * 2 + l of volume b
    assert torch.equal(cubes[8 + 6], x[1, :, 4:8, 2:4, 0:3])  # k = 6 -> (1, 1, 0)
    assert torch.equal(cubes[3], x[0, :, 0:4, 2:4, 3:6])  # k = 3 -> (0, 1, 1)
    assert torch.equal(merge_cubes(cubes, 2), x)
    with pytest.raises(ValueError, match="multiple of n"):
        merge_cubes(cubes[:5], 2)


def test_transpose_cube_grid_reproduces_released_order():
    x = torch.randn(1, 2, 6, 6, 6)
    t = transpose_cube_grid(x, 3)
    assert torch.equal(t[..., 4:6, 0:2, 0:2], x[..., 0:2, 0:2, 4:6])  # (0, 0, 2) -> (2, 0, 0)
    assert torch.equal(t[..., 2:4, 4:6, 2:4], x[..., 2:4, 4:6, 2:4])  # i == l: stays
    assert torch.equal(transpose_cube_grid(t, 3), x)


def test_shuffle_labels_match():
    cubes = torch.arange(27.0).view(27, 1, 1, 1, 1) * torch.ones(27, 2, 1, 1, 1)
    shuffled, labels = shuffle_cubes(cubes, _gen(3))
    assert sorted(labels.tolist()) == list(range(27))
    assert labels.tolist() != list(range(27))
    assert (shuffled[:, 0, 0, 0, 0] == labels.float()).all()  # slot k holds the cube from labels[k]


def test_cube_grid_validation():
    assert check_cube_grid((48, 48, 48), 3) == (16, 16, 16)
    assert check_cube_grid((96, 96, 96), 3, size_divisor=16) == (32, 32, 32)
    with pytest.raises(ValueError, match=r"data\.module\.patch_size .*n=3"):
        check_cube_grid((48, 48, 40), 3)
    with pytest.raises(ValueError, match=r"data\.module\.patch_size .*n=3.*size_divisor 16"):
        check_cube_grid((72, 72, 72), 3, size_divisor=16)  # 24^3 cubes
    with pytest.raises(ValueError, match="n=3"):
        partition_cross_image(torch.zeros(2, 1, 8, 9, 9), 3)


# --- blending weights and schedule -------------------------------------------------------------
def _labels_with_counts(counts: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])


def test_class_frequency_weights():
    w = ClassFrequencyWeights(num_classes=4, temperature=1.0, update_every=20)
    assert torch.equal(w.class_weights(), torch.zeros(4))  # no histogram yet: pure teacher
    w.observe(_labels_with_counts([160, 10, 0, 40]), iteration=0)  # refreshed at iteration 0
    # d = [160, 10, 0, 40] / 210, then / max: [1, 10/160, 0, 40/160]
    assert torch.allclose(w.class_weights(), torch.tensor([1.0, 0.0625, 0.0, 0.25]))
    # iterations 1..19 accumulate without changing the weights; 20 replaces the histogram
    w.observe(_labels_with_counts([1, 0, 8, 0]), iteration=1)
    assert torch.allclose(w.class_weights(), torch.tensor([1.0, 0.0625, 0.0, 0.25]))
    w.observe(_labels_with_counts([1, 2, 0, 0]), iteration=20)
    assert torch.allclose(w.class_weights(), torch.tensor([0.25, 0.25, 1.0, 0.0]))  # [2, 2, 8, 0]

    t2 = ClassFrequencyWeights(num_classes=4, temperature=2.0)
    t2.observe(_labels_with_counts([160, 10, 0, 40]), iteration=0)
    # sqrt: [4 sqrt(10), sqrt(10), 0, 2 sqrt(10)] -> / max: [1, 0.25, 0, 0.5]
    weights = torch.tensor([1.0, 0.25, 0.0, 0.5])
    assert torch.allclose(t2.class_weights(), weights)

    # weight map = d[teacher argmax]; blend = (1 - w) teacher + w mix
    teacher = torch.zeros(1, 4, 2, 1, 1)
    teacher[0, 1, 0] = 5.0  # voxel 0 -> class 1 (w 0.25)
    teacher[0, 3, 1] = 5.0  # voxel 1 -> class 3 (w 0.5)
    wmap = t2(teacher)
    assert wmap.shape == (1, 1, 2, 1, 1)
    assert torch.allclose(wmap.flatten(), torch.tensor([0.25, 0.5]))
    mix = torch.ones_like(teacher)
    blend = t2.blend(teacher, mix)
    assert torch.allclose(blend[0, 1, 0], torch.tensor(0.75 * 5.0 + 0.25))
    assert torch.allclose(blend[0, 0, 1], torch.tensor(0.5))
    assert torch.allclose(blend[0, 3, 1], torch.tensor(0.5 * 5.0 + 0.5))
    # buffers travel with the state dict
    fresh = ClassFrequencyWeights(num_classes=4, temperature=2.0)
    fresh.load_state_dict(t2.state_dict())
    assert torch.allclose(fresh.class_weights(), weights)


def test_consistency_weight_schedule():
    assert magicnet_consistency_weight(0) == pytest.approx(0.1 * math.exp(-5.0))  # 6.738e-4
    assert magicnet_consistency_weight(349) == pytest.approx(0.1 * math.exp(-5.0))
    # 350 // 350 = 1: phase 1 - 1/200 = 0.995
    assert magicnet_consistency_weight(350) == pytest.approx(0.1 * math.exp(-5.0 * 0.995**2))
    assert magicnet_consistency_weight(350) == pytest.approx(7.0825e-4, rel=1e-4)
    # 35000 // 350 = 100: phase 0.5 -> 0.1 e^-1.25
    assert magicnet_consistency_weight(35000) == pytest.approx(0.1 * math.exp(-1.25))
    assert magicnet_consistency_weight(35000) == pytest.approx(0.028650, rel=1e-4)
    assert magicnet_consistency_weight(70000) == pytest.approx(0.1)
    assert magicnet_consistency_weight(90000) == pytest.approx(0.1)


# --- VNetMagic ------------------------------------------------------------------------------
def test_location_head_size():
    assert location_head_in_features(256, 32) == 2048  # 96^3 patch, 3^3 cubes: 2^3 bottleneck
    assert location_head_in_features(256, 16) == 256  # 48^3 patch, 3^3 cubes: 1^3 bottleneck
    assert VNetMagic(cube_size=32).fc_layer[0].in_features == 2048
    assert VNetMagic(cube_size=32).fc_layer[-1].out_features == 27
    with pytest.raises(ValueError, match="size_divisor"):
        location_head_in_features(256, 24)


@pytest.mark.parametrize("patch", [48, 96])
def test_vnet_magic_shapes(patch):
    torch.manual_seed(0)
    f, n = 2, 3
    cube = patch // n
    # 16^3 cubes have a 1^3 bottleneck, which InstanceNorm (MagicNet's norm) cannot normalise
    norm = "instancenorm" if patch == 96 else "batchnorm"
    if patch == 48:
        with pytest.raises(ValueError, match="1\\^3 bottleneck"):
            VNetMagic(base_filters=f, cube_size=cube)
    net = VNetMagic(
        num_classes=5, base_filters=f, normalization=norm, cube_size=cube, cubes_per_axis=n
    )
    net = check_backbone(net)
    assert (net.num_classes, net.feature_channels, net.bottleneck_channels) == (5, f, 16 * f)
    assert VNetMagic.size_divisor == 16
    x = torch.randn(1, 1, patch, patch, patch)
    with torch.no_grad():
        skips = net.encode(x)
        assert [s.shape[1] for s in skips] == [f, 2 * f, 4 * f, 8 * f, 16 * f]
        assert skips[-1].shape[2:] == (patch // 16,) * 3
        feats = net.decode(skips)
        assert feats.shape == (1, f, patch, patch, patch)
        logits = net.head(feats)
        assert logits.shape == (1, 5, patch, patch, patch)
        assert torch.allclose(net(x), logits)
        # within-image: the 27 cubes through the encoder, location logits, reassembled features
        cubes = split_cubes(x, n)
        cube_skips = net.encode(cubes)
        assert cube_skips[-1].shape == (27, 16 * f, cube // 16, cube // 16, cube // 16)
        shuffled, labels = shuffle_cubes(cube_skips[-1], _gen(0))
        loc = net.locate(shuffled)
        assert loc.shape == (27, 27)
        local = net.head(merge_cubes(net.decode(cube_skips), n))
        assert local.shape == (1, 5, patch, patch, patch)
        with pytest.raises(ValueError, match="location head"):
            net.locate(skips[-1])


def test_vnet_magic_decoder_prior_hooks():
    torch.manual_seed(0)
    net = VNetMagic(num_classes=3, base_filters=2, cube_size=32, decoder_prior_channels=6).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    prior = torch.zeros(1, 6, 3, 3, 3)
    with torch.no_grad():
        skips = net.encode(x)
        assert torch.allclose(net.decode(skips, prior), net.decode(skips))  # zero prior: no change
        assert not torch.allclose(net.decode(skips, prior + 1.0), net.decode(skips))
    with pytest.raises(ValueError, match="decoder_prior_channels"):
        VNetMagic(base_filters=2, cube_size=32).decode(skips, prior)


# --- the released key layout ----------------------------------------------------------------
def _stage(n_convs: int, c_in: int, c_out: int) -> nn.Module:
    """A released-style block: ``.conv`` = n x (conv 3^3, non-affine InstanceNorm, ReLU)."""
    block = nn.Module()
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers += [nn.Conv3d(c_in if i == 0 else c_out, c_out, 3, padding=1)]
        layers += [nn.InstanceNorm3d(c_out), nn.ReLU()]
    block.conv = nn.Sequential(*layers)
    return block


def _resample(c_in: int, c_out: int, up: bool) -> nn.Module:
    block = nn.Module()
    conv = nn.ConvTranspose3d if up else nn.Conv3d
    block.conv = nn.Sequential(conv(c_in, c_out, 2, stride=2), nn.InstanceNorm3d(c_out), nn.ReLU())
    return block


class _ReleasedLayout(nn.Module):
    """Stand-in with the released parameter names and shapes (written from the documented layout):
    ``encoder.block_<word>[_dw]``, ``decoder.block_<word>[_up]``, ``decoder.out_conv``,
    ``decoder.p12 ... p96``, ``fc_layer.fc_layer``, ``x4_to_xdim``, ``prior_to_feat`` (Synapse) or
    ``prior_proj5`` (AMOS Prior5)."""

    def __init__(self, f: int, classes: int, cube: int, n: int, prior_z: int, prior5: bool = False):
        super().__init__()
        enc, dec = nn.Module(), nn.Module()
        for word, convs, mult in [("one", 1, 1), ("two", 2, 2), ("three", 3, 4), ("four", 3, 8)]:
            c_in = 1 if word == "one" else mult * f
            setattr(enc, f"block_{word}", _stage(convs, c_in, mult * f))
            setattr(enc, f"block_{word}_dw", _resample(mult * f, 2 * mult * f, up=False))
        enc.block_five = _stage(3, 16 * f, 16 * f)
        dec.block_five_up = _resample(16 * f, 8 * f, up=True)
        for word, convs, mult in [("six", 3, 8), ("seven", 3, 4), ("eight", 2, 2), ("nine", 1, 1)]:
            setattr(dec, f"block_{word}", _stage(convs, mult * f, mult * f))
            if word != "nine":
                setattr(dec, f"block_{word}_up", _resample(mult * f, mult * f // 2, up=True))
        dec.out_conv = nn.Conv3d(f, classes, 1)
        for name, mult in [("p12", 8), ("p24", 4), ("p48", 2), ("p96", 1)]:
            setattr(dec, name, nn.Conv3d(prior_z, mult * f, 1, bias=False))
        self.encoder, self.decoder = enc, dec
        self.fc_layer = nn.Module()
        self.fc_layer.fc_layer = nn.Sequential(
            nn.Linear(16 * f * (cube // 16) ** 3, 4096),
            nn.BatchNorm1d(4096),
            nn.LeakyReLU(0.2),
            nn.Linear(4096, n**3),
        )
        if prior5:
            self.prior_proj5 = nn.Conv3d(2 * prior_z, 16 * f, 1, bias=False)
        else:
            self.x4_to_xdim = nn.Conv3d(8 * f, 16, 1, bias=False)
            self.prior_to_feat = nn.Conv3d(prior_z, f, 1, bias=False)

    def forward(self, x):
        e, d = self.encoder, self.decoder
        x1 = e.block_one.conv(x)
        x2 = e.block_two.conv(e.block_one_dw.conv(x1))
        x3 = e.block_three.conv(e.block_two_dw.conv(x2))
        x4 = e.block_four.conv(e.block_three_dw.conv(x3))
        x5 = e.block_five.conv(e.block_four_dw.conv(x4))
        y = d.block_six.conv(d.block_five_up.conv(x5) + x4)
        y = d.block_seven.conv(d.block_six_up.conv(y) + x3)
        y = d.block_eight.conv(d.block_seven_up.conv(y) + x2)
        y = d.block_nine.conv(d.block_eight_up.conv(y) + x1)
        return d.out_conv(y), x5


def test_released_magicnet_state_dict_loads_strictly():
    torch.manual_seed(0)
    f, classes, cube, n, z = 2, 4, 32, 2, 8
    ref = _ReleasedLayout(f, classes, cube, n, prior_z=z).eval()
    with torch.no_grad():
        bn = ref.fc_layer.fc_layer[1]
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    state = {"module." + k: v for k, v in ref.state_dict().items()}  # a DataParallel checkpoint
    # the released SCDL ("eprl") layout: the project's names with a bare ``proxies`` tensor
    eprl = {
        k.replace("proxies.weight", "proxies"): v
        for k, v in SCDL(classes, f, z).state_dict().items()
    }
    parts = split_released_magicnet({"model": state, "eprl": eprl})
    assert sorted(parts.dropped) == [
        f"decoder.{p}.weight" for p in ("p12", "p24", "p48", "p96")
    ] + ["x4_to_xdim.weight"]

    net = VNetMagic(num_classes=classes, base_filters=f, cube_size=cube, cubes_per_axis=n).eval()
    net.load_state_dict(parts.backbone, strict=True)
    assert convert_released_magicnet(state).keys() == parts.backbone.keys()
    x = torch.randn(2, 1, 64, 64, 64)
    with torch.no_grad():
        ref_logits, ref_x5 = ref(x)
        assert torch.allclose(net(x), ref_logits, atol=1e-5)
        cubes = net.encode(split_cubes(x[:1], n))[-1]
        assert torch.allclose(net.locate(cubes), ref.fc_layer.fc_layer(cubes.flatten(1)), atol=1e-5)

    plugin = SCDLPlugin(SCDL(classes, f, z), prior_feedback="head")
    plugin.load_state_dict(parts.plugin, strict=True)
    assert torch.equal(plugin.prior_to_feat.weight, ref.prior_to_feat.weight)
    assert torch.equal(plugin.scdl.proxies.weight, eprl["proxies"])

    # keeping the decoder prior hooks
    kept = convert_released_magicnet(state, keep_decoder_priors=True)
    hooked = VNetMagic(
        num_classes=classes,
        base_filters=f,
        cube_size=cube,
        cubes_per_axis=n,
        decoder_prior_channels=z,
    )
    hooked.load_state_dict(kept, strict=True)
    assert torch.equal(hooked.decoder_priors[3].weight, ref.decoder.p96.weight)


def test_released_prior5_projection_maps_to_plugin():
    torch.manual_seed(0)
    f, classes, cube, n, z = 2, 4, 32, 3, 8
    ref = _ReleasedLayout(f, classes, cube, n, prior_z=z, prior5=True)
    parts = split_released_magicnet(ref.state_dict())
    net = VNetMagic(num_classes=classes, base_filters=f, cube_size=cube, cubes_per_axis=n)
    net.load_state_dict(parts.backbone)
    plugin = SCDLPlugin(
        SCDL(classes, f, z), prior_feedback="bottleneck", bottleneck_channels=16 * f
    )
    missing, unexpected = plugin.load_state_dict(parts.plugin, strict=False)
    assert not unexpected and all(k.startswith("scdl.") for k in missing)  # AMOS ships no SCDL
    assert torch.equal(plugin.prior_to_bottleneck.weight, ref.prior_proj5.weight)
    with pytest.raises(KeyError, match="not a released MagicNet key"):
        split_released_magicnet({"something.else": torch.zeros(1)})
