"""Lightning callbacks: checkpoints and figures of what the model learns."""

from scdl.callbacks.checkpoints import BestCheckpoint, LastCheckpoint
from scdl.callbacks.proxy_plot import ProxyEmbeddingPlot

__all__ = ["BestCheckpoint", "LastCheckpoint", "ProxyEmbeddingPlot"]
