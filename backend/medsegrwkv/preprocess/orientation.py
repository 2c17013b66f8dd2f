"""Canonical orientation: the network sees every study with the same axis layout.

Files store the same anatomy with permuted or flipped axes and arbitrary (oblique) direction
cosines. `to_canonical` permutes and flips the voxel axes, which is exact (no interpolation),
so that
- the slice axis (the one with the largest spacing, i.e. between short-axis slices; axis k when
  spacing is near isotropic) becomes z,
- x is the in-plane axis (with sign) closest to the patient's left (+x in LPS),
- y is the other in-plane axis, signed to point posterior (+y in LPS; superior when it is
  perpendicular to that),
- z is signed so that (x, y, z) is right-handed, which fixes the slice order.
The result depends only on the physical image, not on how the file stores it; ACDC (identity
direction, slices on k) is already canonical. `from_canonical` undoes it for the labelmap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

_ANISOTROPY = 1.2  # a spacing this much larger than the finest marks the slice axis


@dataclass(frozen=True)
class Canonical:
    image: sitk.Image
    order: tuple[int, int, int]  # canonical axis n is original axis order[n]
    flips: tuple[bool, bool, bool]  # flips applied after the permutation (canonical axes)


def _slice_axis(spacing: tuple[float, ...]) -> int:
    if max(spacing) > _ANISOTROPY * min(spacing):
        best = max(spacing)
        return max(i for i, s in enumerate(spacing) if s == best)
    return 2


def canonical_layout(direction: np.ndarray, spacing: tuple[float, ...]) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Permutation and flips that make an image with these direction columns canonical."""
    z = _slice_axis(spacing)
    a, b = [i for i in range(3) if i != z]
    # x: the in-plane axis most aligned (either sign) with patient left.
    x = a if abs(direction[0, a]) >= abs(direction[0, b]) else b
    y = b if x == a else a
    flip_x = direction[0, x] < 0
    reference = np.array([0.0, 1.0, 1e-3])  # posterior, tie-broken towards superior
    flip_y = float(direction[:, y] @ reference) < 0
    ex = direction[:, x] * (-1 if flip_x else 1)
    ey = direction[:, y] * (-1 if flip_y else 1)
    flip_z = float(np.cross(ex, ey) @ direction[:, z]) < 0
    return (x, y, z), (bool(flip_x), bool(flip_y), bool(flip_z))


def slice_layout(image: sitk.Image) -> tuple[int, bool]:
    """The image's index axis (0 i, 1 j, 2 k) across the short-axis slices, and whether the
    canonical slice order (right-handed frame) runs against the image's index order on it."""
    order, flips = canonical_layout(np.array(image.GetDirection()).reshape(3, 3), image.GetSpacing())
    return int(order[2]), bool(flips[2])


def slices_first(image: sitk.Image) -> tuple[np.ndarray, int]:
    """The image's voxels (a view, valid while the image lives) with the short-axis slices along
    numpy axis 0, and the numpy axis they lie on in `sitk.GetArrayViewFromImage(image)` (to move
    an edited copy back)."""
    axis = 2 - slice_layout(image)[0]
    return np.moveaxis(sitk.GetArrayViewFromImage(image), axis, 0), axis


def to_canonical(image: sitk.Image) -> Canonical:
    direction = np.array(image.GetDirection()).reshape(3, 3)
    order, flips = canonical_layout(direction, image.GetSpacing())
    canonical = sitk.Flip(sitk.PermuteAxes(image, list(order)), list(flips), flipAboutOrigin=False)
    return Canonical(canonical, order, flips)


def from_canonical(labels: sitk.Image, canonical: Canonical, reference: sitk.Image) -> sitk.Image:
    """Map an image on the canonical grid back to `reference`'s voxel layout and geometry."""
    inverse = [canonical.order.index(i) for i in range(3)]
    restored = sitk.PermuteAxes(sitk.Flip(labels, list(canonical.flips), flipAboutOrigin=False), inverse)
    if restored.GetSize() != reference.GetSize():
        raise AssertionError("canonical round trip changed the image size")
    restored.CopyInformation(reference)
    return restored
