"""Segment one preprocessed volume with a trained module: sliding window, argmax, a label map."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from scdl.inference.runtime import inference_context

if TYPE_CHECKING:
    from scdl.frameworks.base import SemiSupervisedModule


def label_dtype(num_classes: int) -> np.dtype:
    """Smallest unsigned integer type holding labels ``0..num_classes-1``."""
    return np.dtype(np.uint8 if num_classes <= 256 else np.uint16)


def segment_volume(
    module: SemiSupervisedModule,
    image: np.ndarray | torch.Tensor,
    device: torch.device,
    precision: str | int | None = None,
) -> np.ndarray:
    """Whole-volume prediction on the preprocessed grid.

    ``image`` (X, Y, Z) float -> label map (X, Y, Z) (argmax of the module's sliding-window
    probabilities, :meth:`SemiSupervisedModule.predict_volume`; frameworks with two networks average
    inside their ``segment``).
    """
    x = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)[None, None].to(device)
    with inference_context(precision, device):
        probs = module.predict_volume(x)  # (1, C, X, Y, Z)
    labels = probs.argmax(dim=1)[0].to("cpu", torch.int64).numpy()
    return labels.astype(label_dtype(int(probs.shape[1])))


#: how far (in preprocessed voxels) a source voxel centre may fall outside the preprocessed grid
#: and still take the label of the edge voxel: resampling and resizing keep the field of view
#: only to within half a voxel, and a flip puts the edge at -1e-15
