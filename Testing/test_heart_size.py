"""Heart-size normalisation on real ACDC volumes: the measure, the decision, and a heart shown
larger or smaller than every training heart segmented as well as at its own size."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medsegrwkv.inference.heart_size import (
    FACTOR_RANGE, SCALE_MARGIN, labelmap_lv_diameter_mm, lv_diameter_mm, size_factor, training_range_mm,
)
from medsegrwkv.training.metrics import structure_metrics

CASE = "patient016/patient016_frame01"  # a dilated (DCM) heart at end-diastole


@pytest.fixture(scope="module")
def pair(acdc: Path) -> tuple[sitk.Image, sitk.Image]:
    return (sitk.ReadImage(str(acdc / f"{CASE}.nii.gz"), sitk.sitkFloat32),
            sitk.ReadImage(str(acdc / f"{CASE}_gt.nii.gz")))


def test_lv_diameter_is_the_largest_epicardial_section_in_any_voxel_layout(pair):
    _, reference = pair
    labels = sitk.GetArrayFromImage(reference)
    sx, sy, _ = reference.GetSpacing()
    largest = max(int(np.isin(labels[k], (2, 3)).sum()) for k in range(labels.shape[0]))
    expected = 2 * math.sqrt(largest * sx * sy / math.pi)
    assert lv_diameter_mm(labels, sx * sy) == pytest.approx(expected)
    assert 80 < expected < 100  # a dilated heart: ACDC's DCM hearts measure 76-96 mm
    assert labelmap_lv_diameter_mm(reference) == pytest.approx(expected)
    permuted = sitk.PermuteAxes(reference, [2, 0, 1])  # slices on the first index axis
    assert labelmap_lv_diameter_mm(permuted) == pytest.approx(expected)
    assert lv_diameter_mm(np.zeros_like(labels), sx * sy) is None
    assert training_range_mm([labels, labels[:, ::2, ::2]], sx * sy)[1] == pytest.approx(expected, abs=0.05)


def test_size_factor_moves_a_heart_to_the_nearest_trained_size():
    trained = [46.1, 95.6]
    assert size_factor(70.0, trained) == size_factor(None, trained) == size_factor(70.0, None) == 1.0
    assert size_factor(95.6 * SCALE_MARGIN, trained) == size_factor(46.1 / SCALE_MARGIN, trained) == 1.0
    assert size_factor(143.4, trained) == pytest.approx(1.5)
    assert size_factor(23.05, trained) == pytest.approx(0.5)
    assert size_factor(400.0, trained) == FACTOR_RANGE[1] and size_factor(5.0, trained) == FACTOR_RANGE[0]


def _scored(segmenter, image: sitk.Image, reference: sitk.Image, notes: list[str]) -> dict:
    labels = segmenter.segment_phases([image], notes=notes)[0]
    return structure_metrics(sitk.GetArrayViewFromImage(labels), sitk.GetArrayViewFromImage(reference),
                             tuple(reversed(reference.GetSpacing())))


def test_a_heart_larger_than_every_training_heart_is_segmented_at_a_trained_size(pair, default_segmenter):
    """The dilated heart shown 1.6x as large (its spacing scaled): the default's myocardium collapses
    without the normalisation and stays within about a point of the real size with it."""
    image, reference = pair
    notes: list[str] = []
    own = _scored(default_segmenter, image, reference, notes)
    assert not notes  # a heart inside the trained sizes is segmented once
    large_image, large_reference = sitk.Image(image), sitk.Image(reference)
    for volume in (large_image, large_reference):
        sx, sy, sz = volume.GetSpacing()
        volume.SetSpacing((1.6 * sx, 1.6 * sy, sz))
    normalised = _scored(default_segmenter, large_image, large_reference, notes)
    assert len(notes) == 1 and "outside the 46-96 mm" in notes[0] and "mm pixels" in notes[0]
    plain = copy.copy(default_segmenter)
    plain.manifest = {**default_segmenter.manifest,
                      "preprocessing": {k: v for k, v in default_segmenter.manifest["preprocessing"].items()
                                        if k != "heart_size_mm"}}
    unchanged = _scored(plain, large_image, large_reference, [])
    for name in ("RV", "Myo", "LV"):
        assert normalised[name]["dice"] > own[name]["dice"] - 0.015, name
    assert unchanged["Myo"]["dice"] < normalised["Myo"]["dice"] - 0.05
