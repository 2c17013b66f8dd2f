"""Evaluation metrics against values computed by hand."""

import math

import numpy as np
import pytest

from medsegrwkv.training.metrics import structure_metrics, summarize


def test_dice_and_hd95_by_hand():
    pred = np.zeros((4, 10, 10), np.uint8)
    ref = np.zeros_like(pred)
    # LV: reference 4x4 square on slice 1, prediction shifted by one column: overlap 4x3 = 12.
    ref[1, 2:6, 2:6] = 3
    pred[1, 2:6, 3:7] = 3
    # RV: single voxels 3 slices apart along z (10 mm spacing) -> disjoint, Hausdorff 30 mm.
    ref[0, 8, 8] = 1
    pred[3, 8, 8] = 1
    # Myo: identical.
    ref[2, 0:2, 0:3] = 2
    pred[2, 0:2, 0:3] = 2
    m = structure_metrics(pred, ref, (10.0, 1.5, 1.5))
    assert m["LV"]["dice"] == pytest.approx(2 * 12 / (16 + 16))
    assert m["RV"]["dice"] == 0.0
    assert m["RV"]["hd95"] == pytest.approx(30.0)
    assert m["Myo"]["dice"] == pytest.approx(1.0)
    assert m["Myo"]["hd95"] == pytest.approx(0.0)
    # A one-column shift of a square: every boundary point is at most one column (1.5 mm) away.
    assert 0.0 < m["LV"]["hd95"] <= 1.5 + 1e-6


def test_empty_structures_follow_the_documented_convention():
    ref = np.zeros((2, 5, 5), np.uint8)
    pred = ref.copy()
    pred[0, 1, 1] = 3
    m = structure_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert m["RV"] == {"dice": 1.0, "hd95": 0.0}  # both empty
    assert m["LV"]["dice"] == 0.0 and math.isnan(m["LV"]["hd95"])  # false positive only
    s = summarize([m, structure_metrics(ref, ref, (1.0, 1.0, 1.0))])
    assert s["LV_dice"] == pytest.approx(0.5)
    assert s["LV_hd95"] == pytest.approx(0.0)  # NaN left out of the mean
    assert s["mean_dice"] == pytest.approx((1.0 + 1.0 + 0.5) / 3)
