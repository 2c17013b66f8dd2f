"""Intensity normalisation: real scanner data has arbitrary units, so clip at percentiles and scale."""

from __future__ import annotations

import numpy as np

FLOAT32_SAFE = float(np.finfo(np.float32).max) / 1e3  # room for the percentile arithmetic


def normalize_intensity(array: np.ndarray, lower: float = 1.0, upper: float = 99.0) -> np.ndarray:
    """Clip to the [lower, upper] percentiles of the whole volume and scale to [0, 1] (float32).

    The shared ACDC copy was prepared the same way (clip at p99, scale), so training and real
    studies meet the network in the same range. A constant volume maps to zeros.
    """
    array = np.asarray(array)
    if array.size and array.dtype == np.float64:  # values near 1e300 would become Inf in float32; the
        peak = float(np.abs(array).max())  # result does not depend on the scale, so shrink them to fit
        if peak > FLOAT32_SAFE:
            array = array * (FLOAT32_SAFE / peak)
    array = np.array(array, dtype=np.float32)  # a writable copy (sitk array views are read-only)
    lo, hi = np.percentile(array, [lower, upper])
    if hi - lo <= 1e-6 * max(1.0, abs(float(hi))):
        return np.zeros_like(array)
    # imported here: MONAI's import takes seconds, and a command that rejects its input should not wait on it
    from monai.transforms import ScaleIntensityRangePercentiles

    scale = ScaleIntensityRangePercentiles(lower, upper, b_min=0.0, b_max=1.0, clip=True)
    return np.asarray(scale(array[None]))[0].astype(np.float32)
