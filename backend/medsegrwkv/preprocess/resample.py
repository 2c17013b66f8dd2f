"""In-plane resampling to the model's pixel spacing and back (slice positions never move)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def resample_inplane(image: sitk.Image, spacing_xy: tuple[float, float],
                     interpolator: int = sitk.sitkLinear) -> sitk.Image:
    """Resample a canonical image (slices along z) to `spacing_xy`, covering the same field of view."""
    old = image.GetSpacing()
    if np.allclose(old[:2], spacing_xy, rtol=1e-4):
        return image
    size = image.GetSize()
    new_spacing = (float(spacing_xy[0]), float(spacing_xy[1]), old[2])
    new_size = [max(1, int(round(size[i] * old[i] / new_spacing[i]))) for i in range(2)] + [size[2]]
    # Keep the field-of-view edges aligned: voxel centres shift by half the spacing change.
    direction = np.array(image.GetDirection()).reshape(3, 3)
    shift = np.zeros(3)
    for i in range(2):
        shift += direction[:, i] * 0.5 * (new_spacing[i] - old[i])
    origin = tuple(np.array(image.GetOrigin()) + shift)
    return sitk.Resample(image, new_size, sitk.Transform(), interpolator, origin, new_spacing,
                         image.GetDirection(), 0.0, image.GetPixelID())


def resample_probabilities(probabilities: np.ndarray, source: sitk.Image, target: sitk.Image) -> np.ndarray:
    """Resample class probabilities (C, z, y, x) on `source`'s grid onto `target`'s grid (linear)."""
    if source.GetSize() == target.GetSize() and np.allclose(source.GetSpacing(), target.GetSpacing()):
        return probabilities
    vector = sitk.GetImageFromArray(np.moveaxis(probabilities, 0, -1).astype(np.float32), isVector=True)
    vector.CopyInformation(source)
    resampled = sitk.Resample(vector, target, sitk.Transform(), sitk.sitkLinear, 0.0)
    return np.moveaxis(sitk.GetArrayFromImage(resampled), -1, 0)
