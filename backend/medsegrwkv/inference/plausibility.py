"""Whether an input or a result lies outside what the models saw, said as warnings.

The models were trained on ACDC short-axis studies (shared copy: in-plane field of view 224-450 mm,
pixels 1.2-1.9 mm; reference volumes RV cavity 10-294 mL, LV myocardium 33-298 mL, LV cavity
19-374 mL over end-diastole and end-systole). Outside those, a result can be wrong without
looking wrong — an empty LV from a 2048x2048 image, for instance — so the user is told. The
limits below leave a margin around the training ranges; a warning never stops the work.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from medsegrwkv import LABELS
from medsegrwkv.preprocess.orientation import canonical_layout

FIELD_OF_VIEW_MM = (150.0, 600.0)  # in-plane extent, each side (training: 224-450)
PIXEL_MM = (0.5, 3.0)  # training: 1.2-1.9
# label value -> (name, lowest, highest plausible volume in mL) for a whole heart in the image
VOLUME_ML = {1: (LABELS[1], 5.0, 500.0), 2: (LABELS[2], 15.0, 450.0), 3: (LABELS[3], 5.0, 600.0)}


def label_volumes_ml(labels: sitk.Image) -> dict[int, float]:
    """Volume in mL of each ACDC label (1 RV cavity, 2 LV myocardium, 3 LV cavity) of a labelmap."""
    # A voxel count (ITK's shape statistics, which also measure perimeters, took 0.15 s a phase)
    counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel().astype(np.intp, copy=False),
                         minlength=max(VOLUME_ML) + 1)
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    return {v: float(counts[v]) * voxel_ml for v in VOLUME_ML}


def input_warnings(image: sitk.Image) -> list[str]:
    """Sentences about an input whose in-plane field of view or pixel size the models never saw."""
    order, _ = canonical_layout(np.array(image.GetDirection()).reshape(3, 3), image.GetSpacing())
    in_plane = [int(a) for a in order[:2]]
    size = [image.GetSize()[a] for a in in_plane]
    spacing = [image.GetSpacing()[a] for a in in_plane]
    extent = [n * s for n, s in zip(size, spacing)]
    warnings = []
    if not all(FIELD_OF_VIEW_MM[0] <= e <= FIELD_OF_VIEW_MM[1] for e in extent):
        warnings.append(f"The image covers {extent[0]:.0f} x {extent[1]:.0f} mm in plane ({size[0]} x {size[1]} "
                        "pixels), far from the 224-450 mm of the studies the models were trained on; check the "
                        "result (and the pixel spacing in the header).")
    if not all(PIXEL_MM[0] <= s <= PIXEL_MM[1] for s in spacing):
        warnings.append(f"The pixels are {spacing[0]:.3g} x {spacing[1]:.3g} mm, far from the 1.2-1.9 mm of the "
                        "studies the models were trained on; check the result.")
    return warnings


def result_warnings(labels: sitk.Image, phase: int, volumes: dict[int, float] | None = None) -> list[str]:
    """Sentences about a segmentation of one phase with no heart, or volumes no heart has
    (`volumes`: its label_volumes_ml, when the caller has them already)."""
    volumes = volumes if volumes is not None else label_volumes_ml(labels)
    if not any(volumes.values()):
        return [f"Phase {phase}: no heart was found (the labelmap is empty); check that this is a short-axis "
                "cardiac study."]
    if not volumes[3]:
        return [f"Phase {phase}: no left ventricle cavity was found; check the result."]
    outside = [f"{name} {volumes[v]:.1f} mL" for v, (name, low, high) in VOLUME_ML.items()
               if volumes[v] and not low <= volumes[v] <= high]
    if outside:
        return [f"Phase {phase}: {', '.join(outside)} lie outside the range of real hearts; check the result."]
    return []
