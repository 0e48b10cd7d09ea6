"""scdl: class-imbalanced semi-supervised 3D medical image segmentation (SCDL, CVPR 2026)."""

__version__ = "0.1.0"
