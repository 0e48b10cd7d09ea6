"""Lightning callbacks: figures of what the model learns."""

from scdl.callbacks.proxy_plot import ProxyEmbeddingPlot

__all__ = ["ProxyEmbeddingPlot"]
