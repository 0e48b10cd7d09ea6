"""Data: raw layouts, phantom, preprocessing cache, splits and the semi-supervised data module."""
