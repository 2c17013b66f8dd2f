"""Geometry between Slicer's world (RAS, mm) and the volume's voxel indices (IJK), with the
same vtkMatrix4x4 objects Slicer hands out.

The worker receives the ROI as a voxel box of the file it reads. Slicer writes a volume with
the IJK order of its image data, so IJK here is the file's index order. The corner rule matches
the backend's `roi_from_ras_box` (each corner goes to its nearest voxel, both ends included),
so a box sent as voxels and the same box sent in RAS give one labelmap.

A markups ROI is an oriented box: `Size` along the axes of its Object frame, centred on the
Object origin; `GetObjectToWorldMatrix()` places it in the world.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from vtkmodules.vtkCommonMath import vtkMatrix4x4

Vec3 = Tuple[float, float, float]


class RoiError(ValueError):
    """An ROI that selects no voxel; the message is one sentence for the user."""


@dataclass(frozen=True)
class VoxelBox:
    start: Tuple[int, int, int]  # inclusive
    stop: Tuple[int, int, int]  # exclusive

    def as_list(self) -> List[int]:
        return [*self.start, *self.stop]

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop))  # type: ignore[return-value]


def transform_point(matrix: vtkMatrix4x4, point: Sequence[float]) -> Vec3:
    x, y, z, w = matrix.MultiplyPoint((float(point[0]), float(point[1]), float(point[2]), 1.0))
    return (x / w, y / w, z / w)


def inverted(matrix: vtkMatrix4x4) -> vtkMatrix4x4:
    out = vtkMatrix4x4()
    vtkMatrix4x4.Invert(matrix, out)
    return out


def multiplied(a: vtkMatrix4x4, b: vtkMatrix4x4) -> vtkMatrix4x4:
    """a * b (apply b first)."""
    out = vtkMatrix4x4()
    vtkMatrix4x4.Multiply4x4(a, b, out)
    return out


def roi_corners_world(object_to_world: vtkMatrix4x4, size: Sequence[float]) -> List[Vec3]:
    half = [float(s) / 2.0 for s in size]
    return [transform_point(object_to_world, (sx * half[0], sy * half[1], sz * half[2]))
            for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]


def roi_to_voxel_box(world_to_ijk: vtkMatrix4x4, object_to_world: vtkMatrix4x4, size: Sequence[float],
                     dims: Sequence[int]) -> VoxelBox:
    """The voxel box covering a (possibly rotated) ROI, clipped to a volume of `dims` voxels."""
    if any(float(s) <= 0 for s in size):
        raise RoiError("The ROI has zero size along an axis; resize it or choose no ROI.")
    ijk = [transform_point(world_to_ijk, corner) for corner in roi_corners_world(object_to_world, size)]
    start = [max(0, math.floor(min(c[a] for c in ijk) + 0.5)) for a in range(3)]
    stop = [min(int(dims[a]), math.floor(max(c[a] for c in ijk) + 0.5) + 1) for a in range(3)]
    if any(b <= a for a, b in zip(start, stop)):
        raise RoiError("The ROI lies outside the input volume; move it onto the heart or choose no ROI.")
    return VoxelBox(tuple(start), tuple(stop))  # type: ignore[arg-type]


def fit_roi_to_volume(ijk_to_world: vtkMatrix4x4, dims: Sequence[int]) -> Tuple[vtkMatrix4x4, Vec3]:
    """ObjectToWorld matrix and size of the ROI that covers the whole volume, aligned with its
    voxel axes (so an oblique short-axis stack gets a tight box, not its RAS bounding box)."""
    columns = [[ijk_to_world.GetElement(r, c) for r in range(3)] for c in range(3)]
    spacing = [math.sqrt(sum(v * v for v in col)) for col in columns]
    axes = [[v / s for v in col] for col, s in zip(columns, spacing)]
    cross = (axes[0][1] * axes[1][2] - axes[0][2] * axes[1][1], axes[0][2] * axes[1][0] - axes[0][0] * axes[1][2],
             axes[0][0] * axes[1][1] - axes[0][1] * axes[1][0])
    if sum(a * b for a, b in zip(cross, axes[2])) < 0:  # a left-handed voxel frame: the box is symmetric,
        axes[2] = [-v for v in axes[2]]  # so flipping one axis keeps it and makes the frame a rotation
    centre = transform_point(ijk_to_world, [(int(d) - 1) / 2.0 for d in dims])
    object_to_world = vtkMatrix4x4()
    for c in range(3):
        for r in range(3):
            object_to_world.SetElement(r, c, axes[c][r])
        object_to_world.SetElement(c, 3, centre[c])
    size = tuple(int(d) * s for d, s in zip(dims, spacing))
    return object_to_world, size  # type: ignore[return-value]


def slice_centre_world(ijk_to_world: vtkMatrix4x4, dims: Sequence[int], axis: int, index: int) -> Vec3:
    """World position of the centre of slice `index` along voxel axis `axis` (to jump views there)."""
    if not 0 <= index < int(dims[axis]):
        raise ValueError(f"slice {index} is outside 0..{int(dims[axis]) - 1}")
    ijk = [(int(d) - 1) / 2.0 for d in dims]
    ijk[axis] = float(index)
    return transform_point(ijk_to_world, ijk)
