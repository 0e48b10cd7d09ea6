"""SCDL module: losses against hand-written formulas (docs/method.md §3.2-3.3), gradients, shapes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scdl.models.scdl import (
    SCDL,
    ClassProxies,
    TokenEncoder,
    labels_to_token_dist,
    mean_proxy_similarity,
    symmetric_kl,
)
from scdl.models.scdl.encoder import relu_dropout

C, XD, ZD, S = 3, 4, 5, 3


def _tiny(**kw) -> SCDL:
    torch.manual_seed(123)
    return SCDL(num_classes=C, x_dim=XD, z_dim=ZD, sample_num=S, dropout=0.0, **kw)


def _ref_encode(m: SCDL, x: torch.Tensor) -> torch.Tensor:
    l1, l2, l3 = m.encoder[0], m.encoder[3], m.encoder[6]
    h = torch.relu(x @ l1.weight.T + l1.bias)
    h = torch.relu(h @ l2.weight.T + l2.bias)
    return h @ l3.weight.T + l3.bias


def _nrm(t: torch.Tensor) -> torch.Tensor:
    return t / t.norm(dim=-1, keepdim=True)


def _reference(m: SCDL, x: torch.Tensor, y_dist: torch.Tensor | None, seed: int) -> dict:
    """Plain-formula SCDL forward; materialises the full (B, L, C, S) similarity tensor."""
    with torch.no_grad():
        z_hat = _nrm(_ref_encode(m, x))
        mu = m.proxies.weight[:, :ZD]
        sigma = torch.log1p(torch.exp(m.proxies.weight[:, ZD:]))
        torch.manual_seed(seed)
        eps = torch.randn(C, S, ZD)  # the module's first random draw (no dropout, no SAC)
        p_hat = _nrm(mu[:, None] + sigma[:, None] * eps)
        a = torch.einsum("blz,csz->blcs", z_hat, p_hat)
        a_bar = a.mean(-1)
        mu_hat = _nrm(mu)
        g = z_hat @ mu_hat.T  # (B, L, C)
        e2p = torch.softmax(g / m.tau_e2p, -1)
        if m.p2e_axis == "class":
            raw = torch.softmax(g / m.tau_p2e, -1).transpose(1, 2)  # (B, C, L) as released
        else:
            raw = torch.softmax(g / m.tau_p2e, 1).transpose(1, 2)  # p(token | class), (B, C, L)
        p2e = raw / raw.sum(1, keepdim=True)  # per-token over classes (no-op for "class")
        p2e = p2e.transpose(1, 2)
        pc, qc = p2e.clamp_min(1e-8), e2p.clamp_min(1e-8)
        kl = F.kl_div(qc.log(), pc, reduction="batchmean") + F.kl_div(
            pc.log(), qc, reduction="batchmean"
        )
        bi = e2p * p2e / ((e2p * p2e).sum(-1, keepdim=True) + 1e-6)
        w = y_dist if y_dist is not None else bi
        l_pc = torch.exp(-(2 * w - 1) * a_bar).mean(dim=(0, 1)).mean()  # per class, then classes
        l_dist = (w * (1 - a_bar)).sum(-1).mean()
        prior = _nrm(torch.einsum("bcl,cz->blz", raw, mu_hat))  # from the un-normalised p2e
    return dict(
        proxy=l_pc + 0.1 * l_dist, kl=kl, e2p=e2p, bi=bi, prior=prior, z_hat=z_hat, a_bar=a_bar
    )


@pytest.mark.parametrize("p2e_axis", ["class", "token"])
@pytest.mark.parametrize("labeled", [True, False])
def test_losses_match_hand_computation(p2e_axis, labeled):
    m = _tiny(p2e_axis=p2e_axis, tau_p2e=0.1)
    x = torch.randn(2, 4, XD)
    y_dist = torch.softmax(torch.randn(2, 4, C), -1) if labeled else None
    torch.manual_seed(7)
    out = m(x, y_dist)
    ref = _reference(m, x, y_dist, seed=7)
    torch.testing.assert_close(out.proxy_loss, ref["proxy"])
    torch.testing.assert_close(out.kl_loss, ref["kl"])
    torch.testing.assert_close(out.e2p, ref["e2p"])
    torch.testing.assert_close(out.bi_sim, ref["bi"])
    torch.testing.assert_close(out.prior_tokens, ref["prior"])
    torch.testing.assert_close(out.embeddings, ref["z_hat"])
    torch.testing.assert_close(out.loss_pc + 0.1 * out.loss_dist, out.proxy_loss)
    assert out.kl_loss > 0.01


def test_mean_similarity_identity_is_exact():
    z_hat = _nrm(torch.randn(2, 6, 8, dtype=torch.float64))
    samples = torch.randn(3, 50, 8, dtype=torch.float64)
    full = torch.einsum("blz,csz->blcs", z_hat, _nrm(samples)).mean(-1)
    torch.testing.assert_close(mean_proxy_similarity(z_hat, samples), full, rtol=1e-12, atol=1e-12)


def test_kl_zero_for_class_axis_equal_temperatures_and_positive_for_token_axis():
    x = torch.randn(2, 27, XD)
    kl_class = _tiny()(x).kl_loss.detach()
    kl_token = _tiny(p2e_axis="token")(x).kl_loss.detach()
    assert abs(float(kl_class)) < 1e-6
    assert float(kl_token) > 1e-2


def test_symmetric_kl_is_batchmean_of_both_directions():
    p = torch.softmax(torch.randn(3, 5, 4), -1)
    q = torch.softmax(torch.randn(3, 5, 4), -1)
    ref = F.kl_div(q.log(), p, reduction="batchmean") + F.kl_div(p.log(), q, reduction="batchmean")
    torch.testing.assert_close(symmetric_kl(p, q), ref)
    assert float(symmetric_kl(p, p)) == 0.0


def test_sac_value_and_gradient_reaches_only_proxy_means():
    m = _tiny()
    x = torch.randn(2, 4, XD)
    x_cls = torch.randn(4, XD)
    ids = torch.tensor([0, 2, 2, 0])
    out = m(x, cls_tokens=x_cls, cls_ids=ids)
    with torch.no_grad():
        u = _nrm(_ref_encode(m, x_cls))
        mu_hat = _nrm(m.proxies.mean)
        anchors = {c: _nrm(u[ids == c].mean(0)) for c in (0, 2)}
        expected = sum(1 - anchors[c] @ mu_hat[c] for c in (0, 2)) / 2
    torch.testing.assert_close(out.sac_loss, expected)

    m.zero_grad(set_to_none=True)
    out.sac_loss.backward()
    for p in m.encoder.parameters():
        assert p.grad is None or not p.grad.any()
    grad = m.proxies.weight.grad
    assert grad[:, ZD:].abs().max() == 0  # scale half untouched
    assert grad[0, :ZD].abs().sum() > 0 and grad[2, :ZD].abs().sum() > 0
    assert grad[1].abs().max() == 0  # absent class


def test_sac_without_background_and_without_tokens():
    m = _tiny(sac_include_background=False)
    x = torch.randn(1, 4, XD)
    x_cls = torch.randn(3, XD)
    out = m(x, cls_tokens=x_cls, cls_ids=torch.tensor([0, 1, 0]))
    with torch.no_grad():
        expected = 1 - _nrm(_ref_encode(m, x_cls[1])) @ _nrm(m.proxies.mean[1])
    torch.testing.assert_close(out.sac_loss, expected)
    assert float(m(x, cls_tokens=x_cls[[0]], cls_ids=torch.tensor([0])).sac_loss) == 0.0
    no_cls = m(x).sac_loss
    assert no_cls.shape == () and float(no_cls) == 0.0
    # (N, L_c, D) class tokens are averaged over L_c
    m_bg = _tiny()
    torch.testing.assert_close(
        m_bg(
            x, cls_tokens=x_cls.view(3, 1, XD).expand(3, 2, XD), cls_ids=torch.tensor([0, 1, 2])
        ).sac_loss,
        m_bg(x, cls_tokens=x_cls, cls_ids=torch.tensor([0, 1, 2])).sac_loss,
    )


def test_proxy_loss_gradients_reach_encoder_proxies_and_tokens():
    torch.manual_seed(0)
    m = SCDL(num_classes=4, x_dim=6, z_dim=8, sample_num=5).train()
    x = torch.randn(2, 8, 6, requires_grad=True)
    for y_dist in (torch.softmax(torch.randn(2, 8, 4), -1), None):
        m.zero_grad(set_to_none=True)
        x.grad = None
        m(x, y_dist).proxy_loss.backward()
        for name, p in m.encoder.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert m.proxies.weight.grad[:, :8].abs().sum() > 0  # means
        assert m.proxies.weight.grad[:, 8:].abs().sum() > 0  # scales (reparameterised samples)
        assert x.grad is not None and x.grad.abs().sum() > 0
        assert m.sigma_emb.grad is None  # embedding samples feed no loss


def test_deterministic_under_fixed_seed():
    m = SCDL(num_classes=5, x_dim=16, z_dim=32).train()  # dropout active
    x = torch.randn(2, 27, 16)
    x_cls, ids = torch.randn(4, 16), torch.tensor([0, 1, 3, 3])
    torch.manual_seed(42)
    a = m(x, cls_tokens=x_cls, cls_ids=ids)
    torch.manual_seed(42)
    b = m(x, cls_tokens=x_cls, cls_ids=ids)
    for field in (
        "proxy_loss",
        "sac_loss",
        "kl_loss",
        "prior_tokens",
        "e2p",
        "z_samples",
        "embeddings",
    ):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    torch.manual_seed(43)
    assert not torch.equal(m(x).proxy_loss, a.proxy_loss)


def test_output_shapes_and_parameter_count_with_defaults():
    m = SCDL(num_classes=14)
    assert sum(p.numel() for p in m.parameters()) == 410_112  # §3.1
    assert m.proxies.weight.shape == (14, 512) and m.sigma_emb.shape == (1, 1, 1, 256)
    out = m(torch.randn(2, 27, 16))
    assert out.prior_tokens.shape == (2, 27, 256)
    assert out.e2p.shape == out.p2e.shape == out.bi_sim.shape == (2, 27, 14)
    assert out.z_samples is not None and out.z_samples.shape == (2, 27, 2, 256)
    assert out.embeddings.shape == (2, 27, 256)
    for t in (out.prior_tokens, out.z_samples, out.embeddings):
        torch.testing.assert_close(t.norm(dim=-1), torch.ones(t.shape[:-1]))
    torch.testing.assert_close(out.e2p.sum(-1), torch.ones(2, 27))
    assert all(t.shape == () for t in (out.proxy_loss, out.sac_loss, out.kl_loss))
    assert m(torch.randn(1, 8, 16), sample_embeddings=False).z_samples is None
    with pytest.raises(ValueError):
        m(torch.randn(2, 8, 15))
    with pytest.raises(ValueError):
        m(torch.randn(2, 8, 16), y_dist=torch.rand(2, 8, 13))
    with pytest.raises(ValueError):
        m(torch.randn(2, 8, 16), cls_tokens=torch.randn(3, 16))


def test_sanity_values_at_init():
    """§3.2 step 9: L_proxy ~ 1.10 at init (labeled and unlabeled), L_KL ~ 0 (class axis)."""
    torch.manual_seed(0)
    m = SCDL(num_classes=14)
    x = torch.randn(2, 1728, 16)
    y_dist = labels_to_token_dist(torch.randint(0, 14, (2, 24, 24, 24)), 14, 12)
    with torch.no_grad():
        lab, unl = m(x, y_dist, sample_embeddings=False), m(x, sample_embeddings=False)
    assert abs(float(lab.proxy_loss) - 1.10) < 0.03 and abs(float(unl.proxy_loss) - 1.10) < 0.03
    assert abs(float(lab.kl_loss)) < 1e-4


@pytest.mark.parametrize("encoder_autocast", [False, True])
def test_bf16_autocast_inputs_give_float32_losses(encoder_autocast):
    torch.manual_seed(0)
    m = SCDL(num_classes=4, x_dim=16, z_dim=32, encoder_autocast=encoder_autocast).eval()
    x = torch.randn(2, 27, 16).bfloat16()
    y_dist = torch.softmax(torch.randn(2, 27, 4), -1).bfloat16()
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, y_dist, cls_tokens=x[0, :3], cls_ids=torch.tensor([0, 1, 2]))
    torch.manual_seed(5)
    ref = m(x.float(), y_dist.float(), cls_tokens=x[0, :3].float(), cls_ids=torch.tensor([0, 1, 2]))
    for field in ("proxy_loss", "sac_loss", "kl_loss", "prior_tokens", "e2p"):
        got = getattr(out, field)
        assert got.dtype == torch.float32, field
        if encoder_autocast:  # bf16 matmuls in the encoder only
            torch.testing.assert_close(got, getattr(ref, field), atol=3e-2, rtol=3e-2)
        else:  # bit-identical to the float32 run
            assert torch.equal(got, getattr(ref, field)), field


def test_bf16_tokens_without_autocast():
    m = SCDL(num_classes=4, x_dim=16, z_dim=32).eval()
    x = torch.randn(1, 8, 16).bfloat16()
    torch.manual_seed(0)
    out = m(x)
    torch.manual_seed(0)
    assert torch.equal(out.proxy_loss, m(x.float()).proxy_loss)


def test_class_proxies():
    torch.manual_seed(0)
    prox = ClassProxies(3, 4)
    bound = math.sqrt(6 / (3 + 8))  # Xavier-uniform, gain 1, on the (C, 2z) matrix
    assert prox.weight.abs().max() <= bound
    torch.testing.assert_close(prox.scale, F.softplus(prox.weight[:, 4:]))
    assert prox.sample(7).shape == (3, 7, 4)
    with torch.no_grad():
        prox.weight[:, 4:] = -200.0  # sigma ~ 0: samples collapse onto the means
    torch.testing.assert_close(prox.sample(2), prox.mean[:, None].expand(3, 2, 4))


def test_encoder_layout_and_fast_dropout():
    enc = TokenEncoder(16, 8)
    assert [k for k in enc.state_dict()] == [
        f"{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")
    ]  # released key layout
    torch.manual_seed(0)
    x = torch.randn(4000, 64, requires_grad=True)
    y = relu_dropout(x, 0.2, training=True)
    kept = y != 0
    rate = kept.sum() / (x > 0).sum()
    assert abs(float(rate) - 0.8) < 0.01
    scale = 1 / (1 - round(0.2 * 2**16) / 2**16)
    torch.testing.assert_close(y[kept], x[kept] * scale)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * scale)
    assert torch.equal(relu_dropout(x, 0.2, training=False), torch.relu(x))
    enc.eval()
    xs = torch.randn(5, 16)
    torch.testing.assert_close(enc(xs), torch.nn.Sequential(*enc)(xs))


def test_loads_released_state_dict_layout():
    src, dst = _tiny(), SCDL(num_classes=C, x_dim=XD, z_dim=ZD)
    sd = src.state_dict()
    sd["proxies"] = sd.pop("proxies.weight")  # released: bare ``proxies`` tensor
    dst.load_state_dict(sd)
    assert torch.equal(dst.proxies.weight, src.proxies.weight)


def test_proxy_scale_init_sets_sigma_and_keeps_the_means():
    torch.manual_seed(0)
    ref = ClassProxies(3, 4)
    torch.manual_seed(0)
    prox = ClassProxies(3, 4, scale_init=0.05)
    torch.testing.assert_close(prox.scale, torch.full((3, 4), 0.05))
    torch.testing.assert_close(prox.mean, ref.mean)
    with pytest.raises(ValueError, match="> 0"):
        ClassProxies(3, 4, scale_init=0.0)


def test_released_proxy_init_makes_samples_mostly_noise():
    """Why the proxy loss is flat at the start (README, SCDL vs mean teacher): with the released
    init an embedding equal to its class mean has a low mean similarity to that class's samples;
    a small initial scale makes it high."""
    torch.manual_seed(0)
    released = ClassProxies(14, 256)
    small = ClassProxies(14, 256, scale_init=0.05)
    with torch.no_grad():
        small.weight[:, :256] = released.mean
    z_hat = F.normalize(released.mean, dim=-1)  # (14, 256), one token per class on its mean

    def own_class_similarity(prox: ClassProxies) -> float:
        sims = mean_proxy_similarity(z_hat[None], prox.sample(50))  # (1, 14 tokens, 14 classes)
        return sims[0].diagonal().mean().item()

    # |sigma * eps| vs |mu| ~= 1: released ~11 -> cos ~0.09; 0.05 -> 0.8 -> cos ~0.78
    assert own_class_similarity(released) < 0.2
    assert own_class_similarity(small) > 0.7
