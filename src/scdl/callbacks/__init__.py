"""Lightning callbacks: checkpoints, figures of what the model learns and W&B validation media."""

from scdl.callbacks.checkpoints import BestCheckpoint, LastCheckpoint
from scdl.callbacks.progress import TrainingProgressLines, progress_bar
from scdl.callbacks.proxy_plot import ProxyEmbeddingPlot
from scdl.callbacks.wandb_media import WandbValidationMedia

__all__ = [
    "BestCheckpoint",
    "LastCheckpoint",
    "ProxyEmbeddingPlot",
    "TrainingProgressLines",
    "WandbValidationMedia",
    "progress_bar",
]
