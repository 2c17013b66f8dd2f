"""Region of interest: crop before inference, paste the result back into the full image."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from medsegrwkv.errors import ErrorCode, MedSegError


@dataclass(frozen=True)
class Roi:
    """A voxel box in the input's (i, j, k) index space: `start` inclusive, `stop` exclusive."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    def clipped(self, size: tuple[int, ...]) -> "Roi":
        """The part inside an image of `size`; an empty or fully outside box is an error."""
        if any(b <= a for a, b in zip(self.start, self.stop)):
            raise MedSegError(f"The ROI {self} is empty: each stop index must exceed its start index.",
                              code=ErrorCode.BAD_ROI)
        start = tuple(max(0, a) for a in self.start)
        stop = tuple(min(n, b) for b, n in zip(self.stop, size))
        if any(b <= a for a, b in zip(start, stop)):
            raise MedSegError(f"The ROI {self} lies outside the image (size {tuple(size)}).", code=ErrorCode.BAD_ROI)
        return Roi(start, stop)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return ",".join(str(v) for v in (*self.start, *self.stop))


def parse_voxel_roi(text: str) -> Roi:
    """Parse `i0,j0,k0,i1,j1,k1` (start inclusive, stop exclusive)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 6:
        raise MedSegError(f"The ROI '{text}' must be six integers i0,j0,k0,i1,j1,k1.", code=ErrorCode.BAD_ROI)
    return Roi(tuple(values[:3]), tuple(values[3:]))  # type: ignore[arg-type]


def roi_from_ras_box(image: sitk.Image, ras_min: tuple[float, float, float],
                     ras_max: tuple[float, float, float]) -> Roi:
    """The voxel box covering a box given in RAS millimetres (as Slicer's markups ROI gives it)."""
    if not np.isfinite([*ras_min, *ras_max]).all():
        raise MedSegError(f"The RAS ROI {(*ras_min, *ras_max)} holds a value that is not a finite number.",
                          code=ErrorCode.BAD_ROI)
    corners = itertools.product(*zip(ras_min, ras_max))
    indices = np.array([image.TransformPhysicalPointToContinuousIndex((-r, -a, s)) for r, a, s in corners])
    if not np.isfinite(indices).all():
        raise MedSegError(f"The RAS ROI {(*ras_min, *ras_max)} lies outside the image.", code=ErrorCode.BAD_ROI)
    start = tuple(int(math.floor(v + 0.5)) for v in indices.min(axis=0))
    stop = tuple(int(math.floor(v + 0.5)) + 1 for v in indices.max(axis=0))
    return Roi(start, stop).clipped(image.GetSize())  # type: ignore[arg-type]


def crop_to_roi(image: sitk.Image, roi: Roi) -> sitk.Image:
    """The sub-image inside `roi` with its own (exact) geometry."""
    (i0, j0, k0), (i1, j1, k1) = roi.start, roi.stop
    return image[i0:i1, j0:j1, k0:k1]


def paste_from_roi(labels: sitk.Image, roi: Roi, reference: sitk.Image) -> sitk.Image:
    """Place a labelmap of the ROI into an all-background labelmap with `reference`'s geometry."""
    full = np.zeros(reference.GetSize()[::-1], dtype=np.uint8)
    (i0, j0, k0), (i1, j1, k1) = roi.start, roi.stop
    full[k0:k1, j0:j1, i0:i1] = sitk.GetArrayViewFromImage(labels)
    out = sitk.GetImageFromArray(full)
    out.CopyInformation(reference)
    return out


def resolve_roi(image: sitk.Image, voxels: Sequence[int] | None = None,
                ras: Sequence[float] | None = None) -> Roi | None:
    """The ROI of a request, given either as a voxel box `i0,j0,k0,i1,j1,k1` (stop exclusive) or as
    a box in RAS millimetres `r0,a0,s0,r1,a1,s1`, clipped to the image; None when neither is given."""
    if voxels is not None and ras is not None:
        raise MedSegError("Give the ROI either as voxels or in RAS millimetres, not both.", code=ErrorCode.BAD_ROI)
    if voxels is not None:
        if len(voxels) != 6 or not all(isinstance(v, int) and not isinstance(v, bool) for v in voxels):
            raise MedSegError("A voxel ROI must be six integers i0,j0,k0,i1,j1,k1.", code=ErrorCode.BAD_ROI)
        return Roi(tuple(voxels[:3]), tuple(voxels[3:])).clipped(image.GetSize())  # type: ignore[arg-type]
    if ras is not None:
        if len(ras) != 6 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ras):
            raise MedSegError("A RAS ROI must be six numbers r0,a0,s0,r1,a1,s1 in millimetres.",
                              code=ErrorCode.BAD_ROI)
        values = [float(v) for v in ras]
        return roi_from_ras_box(image, tuple(values[:3]), tuple(values[3:]))  # type: ignore[arg-type]
    return None
