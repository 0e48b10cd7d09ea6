"""A 2-D picture of SCDL's class proxies and of token embeddings, drawn at every validation end.

The first validation volume's centre patch goes through the backbone and the SCDL encoder; each
token is coloured by its majority ground-truth class. Token embeddings and proxy means (both unit
vectors in the z-space) are projected on their first two principal components. Well-separated
clusters around their own proxy (star) mean CDBA works; small organs collapsing onto a large organ's
proxy is the failure SCDL is meant to prevent. Saved as ``<output>/figures/proxies_step<N>.png`` and
logged to W&B (``scdl/proxies``) when a W&B logger is attached.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from scdl.callbacks.wandb_media import logging_step
from scdl.models.scdl import labels_to_token_dist
from scdl.utils.display import pca_2d


def centre_crop(volume: torch.Tensor, size) -> torch.Tensor:
    """Centre crop (zero-padded where smaller) of the last three dims of ``volume``."""
    out = volume
    for dim, s in zip(range(-3, 0), size, strict=True):
        n = out.shape[dim]
        if n < s:
            pad = [0, 0] * 3
            pad[2 * (-dim - 1)] = (s - n) // 2
            pad[2 * (-dim - 1) + 1] = s - n - (s - n) // 2
            out = torch.nn.functional.pad(out, pad)
            n = s
        start = (n - s) // 2
        out = out.narrow(dim, start, s)
    return out


class ProxyEmbeddingPlot(L.Callback):
    """Draws proxies + token embeddings (PCA) at validation end; no-op for modules without SCDL.

    Args:
        max_tokens_per_class: tokens drawn per class (keeps small organs visible next to big ones).
        every_n_epochs: draw every n validation epochs.
    """

    def __init__(self, max_tokens_per_class: int = 60, every_n_epochs: int = 1) -> None:
        self.max_tokens_per_class = max_tokens_per_class
        self.every_n_epochs = every_n_epochs
        self._batch: dict | None = None

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        if batch_idx == 0 and hasattr(getattr(pl_module, "plugin", None), "scdl"):
            self._batch = {
                "image": batch["image"][:1].detach(),
                "label": batch["label"][:1].detach(),
            }

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._batch is None or not trainer.is_global_zero or trainer.sanity_checking:
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        # SCDL samples proxies from the global stream, on rank 0 only: a figure must not move the
        # training's random numbers (a resumed run and the other ranks would drift from it)
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self._plot(trainer, pl_module)

    def _plot(self, trainer, pl_module) -> None:
        plugin = pl_module.plugin  # an SCDLPlugin (checked in on_validation_batch_end)
        assert self._batch is not None  # checked by on_validation_epoch_end
        roi = pl_module.inference_cfg.roi_size
        image = centre_crop(self._batch["image"], roi).to(pl_module.device)
        label = centre_crop(self._batch["label"], roi).to(pl_module.device)
        features = pl_module.plugin_features(pl_module.to_memory_format(image)).float()
        tokens = plugin.tokens(features)
        y_dist = labels_to_token_dist(
            label, plugin.num_classes, plugin.token_grid, plugin.ydist_mode
        )
        out = plugin.scdl(tokens, y_dist=y_dist, sample_embeddings=False)
        emb = out.embeddings[0].cpu()
        cls = y_dist[0].argmax(-1).cpu()
        proxies = plugin.scdl.proxy_means().cpu()
        path = self.draw(emb, cls, proxies, pl_module.class_names, trainer)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):  # W&B panel "scdl/proxies" (offline runs too)
                logger.log_image(key="scdl/proxies", images=[str(path)], step=logging_step(trainer))
        self._batch = None

    def draw(self, emb, cls, proxies, class_names, trainer) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rng = np.random.default_rng(0)
        chosen: list[np.integer] = []
        for c in cls.unique().tolist():
            idx = torch.nonzero(cls == c).flatten().numpy()
            chosen.extend(rng.choice(idx, min(len(idx), self.max_tokens_per_class), replace=False))
        keep = torch.as_tensor(sorted(chosen))
        xy = pca_2d(torch.cat([emb[keep], proxies]))
        tok_xy, prox_xy = xy[: len(keep)].numpy(), xy[len(keep) :].numpy()
        colours = plt.get_cmap("tab20")
        fig, ax = plt.subplots(figsize=(7, 6))
        for c in cls[keep].unique().tolist():
            sel = (cls[keep] == c).numpy()
            xs, ys = tok_xy[sel].T  # the two PCA coordinates
            ax.scatter(xs, ys, s=8, alpha=0.5, color=colours(c % 20))
        for c, (px, py) in enumerate(prox_xy):
            ax.scatter(
                px, py, marker="*", s=220, color=colours(c % 20), edgecolor="black", zorder=3
            )
            ax.annotate(
                class_names[c], (px, py), fontsize=7, xytext=(4, 4), textcoords="offset points"
            )
        ax.set_title(f"SCDL proxies (stars) and token embeddings, step {trainer.global_step}")
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        out = (
            Path(trainer.default_root_dir)
            / "figures"
            / f"proxies_step{trainer.global_step:06d}.png"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out
