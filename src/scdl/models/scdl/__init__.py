"""SCDL: Semantic Class Distribution Learning (docs/method.md §3), pure PyTorch.

Shapes: ``B`` batch, ``D`` = ``x_dim`` token size (VNet ``x9`` channels, 16), ``t`` token grid per
axis (12), ``L = t**3`` tokens, ``C`` classes incl. background, ``z`` embedding size (256), ``S`` proxy
samples, ``E`` embedding samples, ``N`` class tokens.

Token construction (:mod:`.tokens`)::

    feature_map_to_tokens(features (B,D,X,Y,Z), grid) -> (B, L, D)           # adaptive avg pool
    labels_to_token_dist(labels (B,X,Y,Z) long, num_classes, grid, mode="area"|"trilinear")
        -> (B, L, C) soft labels, each token sums to 1 ("area" = exact class proportions)
    class_tokens_from_token_dist(tokens (B,L,D), y_dist (B,L,C), min_mass=1e-6,
        include_background=True) -> (x_cls (N,D), y_cls (N,))                 # mass-weighted means
    tokens_to_grid(tokens (B,L,Z), grid) -> (B, Z, t, t, t)

Module (:mod:`.module`)::

    scdl = SCDL(num_classes, x_dim=16, z_dim=256, sample_num=50, sample_num_emb=2,
                sigma_emb_init=0.05, tau_e2p=0.2, tau_p2e=0.2, p2e_axis="class", dist_weight=0.1,
                dropout=0.2, sac_include_background=True, encoder_autocast=True)
    out = scdl(tokens (B,L,D), y_dist=None | (B,L,C), cls_tokens=None | (N,D), cls_ids=None | (N,))
    out.proxy_loss, out.sac_loss, out.kl_loss       # float32 scalars (sac_loss = 0 without cls)
    out.prior_tokens (B,L,z), out.e2p / out.p2e / out.bi_sim (B,L,C),
    out.z_samples (B,L,E,z), out.embeddings (B,L,z)

Typical training use (labeled half with soft labels and SAC, unlabeled half with bi_sim weights)::

    tokens = feature_map_to_tokens(x9, 12)
    y_dist = labels_to_token_dist(labels, C, 12)
    x_cls, y_cls = class_tokens_from_token_dist(tokens[:bl], y_dist)
    lab = scdl(tokens[:bl], y_dist=y_dist, cls_tokens=x_cls, cls_ids=y_cls)
    unl = scdl(tokens[bl:])

Building blocks (:mod:`.proxies`, :mod:`.encoder`, :mod:`.alignment`, :mod:`.anchors`,
:mod:`.prior`) are exported for tests and variants.
"""

from __future__ import annotations

from .alignment import (
    P2EAxis,
    bidirectional_similarity,
    cdba_assignments,
    mean_proxy_similarity,
    proxy_alignment_loss,
    symmetric_kl,
)
from .anchors import semantic_anchor_loss
from .encoder import TokenEncoder
from .module import SCDL, SCDLOutput
from .prior import prior_tokens
from .proxies import ClassProxies
from .tokens import (
    TokenDistMode,
    class_tokens_from_token_dist,
    feature_map_to_tokens,
    labels_to_token_dist,
    tokens_to_grid,
)

__all__ = [
    "SCDL",
    "ClassProxies",
    "P2EAxis",
    "SCDLOutput",
    "TokenDistMode",
    "TokenEncoder",
    "bidirectional_similarity",
    "cdba_assignments",
    "class_tokens_from_token_dist",
    "feature_map_to_tokens",
    "labels_to_token_dist",
    "mean_proxy_similarity",
    "prior_tokens",
    "proxy_alignment_loss",
    "semantic_anchor_loss",
    "symmetric_kl",
    "tokens_to_grid",
]
