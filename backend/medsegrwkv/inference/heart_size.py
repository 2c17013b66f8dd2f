"""Heart-size normalisation: a heart larger or smaller than every heart the model was trained on
is segmented again at a pixel size that shows it at a trained size.

Resampling to the model's pixel size makes a study's pixels alike, not its hearts: a dilated or a
child's heart still spans more or fewer pixels than any training heart, and the network has a size
prior: the default's mean Dice on the 40 ACDC validation volumes falls from 0.909 to 0.780 when
they are shown 1.6x as large and to 0.789 at 0.6x; segmented again at a trained size they score
0.854 and 0.825 (docs/medsegrwkv.md, "heart size"). The size measure is the LV's epicardial
equivalent diameter (cavity and myocardium) on the slice where it is largest; the model's
manifest gives the range of its training hearts (`preprocessing.heart_size_mm`)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from medsegrwkv.inference.postprocess import LV, MYO
from medsegrwkv.preprocess import slices_first

# the second pass's pixel size is the model's times this factor, kept within these bounds
FACTOR_RANGE = (0.5, 2.0)
# hearts up to this factor beyond the trained range are left alone: a second pass that changes the
# pixel size by less changes nothing measurable (docs/medsegrwkv.md, "inference pixel size"). A
# margin of the augmentation's 15% gave up half of the gain on hearts shown 0.6x and 1.6x their size.
SCALE_MARGIN = 1.05


def lv_diameter_mm(labels: np.ndarray, pixel_area_mm2: float) -> float | None:
    """Equivalent diameter of the largest LV epicardial cross-section of labels (z, y, x) whose
    slices run along z; None without an LV."""
    per_slice = ((labels == MYO) | (labels == LV)).reshape(labels.shape[0], -1).sum(1)
    largest = int(per_slice.max()) if per_slice.size else 0
    return 2.0 * math.sqrt(largest * pixel_area_mm2 / math.pi) if largest else None


def labelmap_lv_diameter_mm(labels: sitk.Image) -> float | None:
    """`lv_diameter_mm` of a labelmap in any voxel layout (its slice axis found as the pipeline finds it)."""
    array, axis = slices_first(labels)
    inplane = [s for i, s in enumerate(labels.GetSpacing()) if i != 2 - axis]
    return lv_diameter_mm(array, inplane[0] * inplane[1])


def training_range_mm(label_volumes: Sequence[np.ndarray], pixel_area_mm2: float) -> list[float] | None:
    """[smallest, largest] LV diameter over training labelmaps (z, y, x) on one grid."""
    sizes = [d for labels in label_volumes if (d := lv_diameter_mm(labels, pixel_area_mm2)) is not None]
    return [round(min(sizes), 1), round(max(sizes), 1)] if sizes else None


def size_factor(diameter_mm: float | None, trained_mm: Sequence[float] | None) -> float:
    """How much coarser (> 1) or finer (< 1) the pixels must be for a heart of `diameter_mm` to
    look like the nearest edge of the trained range; 1 within `SCALE_MARGIN` of that range or
    when either is unknown."""
    if diameter_mm is None or not trained_mm:
        return 1.0
    smallest, largest = trained_mm
    if smallest / SCALE_MARGIN <= diameter_mm <= largest * SCALE_MARGIN:
        return 1.0
    factor = diameter_mm / (largest if diameter_mm > largest else smallest)
    return float(min(max(factor, FACTOR_RANGE[0]), FACTOR_RANGE[1]))
