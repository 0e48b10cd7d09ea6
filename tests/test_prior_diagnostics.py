"""The long-budget diagnostics' measurements on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scdl.reporting.prior_diagnostics import (
    central_patch,
    foreground_dice,
    markdown,
    token_class_accuracy,
)


def test_foreground_dice_averages_the_classes_present_on_either_side():
    label = np.array([0, 1, 1, 2, 2, 0])
    pred = np.array([0, 1, 0, 2, 2, 3])
    # class 1: 2*1/3, class 2: 1, class 3 (only predicted): 0, class 4 absent on both: skipped
    assert foreground_dice(pred, label, 5) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert np.isnan(foreground_dice(np.zeros(3, int), np.zeros(3, int), 3))


def test_prior_class_accuracy_compares_the_assignment_with_the_majority_label():
    """A 4^3 label split in two halves along x (class 1 | class 2), grid 2: the 8 tokens' majority
    classes are 1 for x-index 0 and 2 for x-index 1 (tokens x-major)."""
    label = torch.zeros(4, 4, 4, dtype=torch.long)
    label[:2], label[2:] = 1, 2
    right = torch.zeros(1, 8, 3)
    right[0, :4, 1], right[0, 4:, 2] = 1.0, 1.0
    assert token_class_accuracy(right, label, 3, 2) == 1.0
    assert token_class_accuracy(right.flip(1), label, 3, 2) == 0.0


def test_central_patch_and_the_table():
    where = central_patch(torch.zeros(1, 1, 10, 4, 8), 4)
    assert where == (slice(3, 7), slice(0, 4), slice(2, 6))
    rows = {"full": [{"step": 100, "labeled_dice": 0.5, "val_dice": 0.25, "val_prior_ratio": 0.7}]}
    text = markdown(rows)
    assert "| full | 100 | 50.0 | – | 25.0 | – | 0.70 | – / – |" in text
