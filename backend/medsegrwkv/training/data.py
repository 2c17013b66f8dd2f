"""Training samples: ACDC frames prepared exactly as inference prepares them, then augmented.

2D models train on slices, 3D models on crops of the stack. Augmentation covers what real studies
from other sites and vendors vary in: the dihedral orientations they come in (flips, 90-degree
rotations), rotation, heart size (scaling by 0.7-1.3: children to dilated hearts), acquired
resolution (down- then up-sampling, as a 2.6 mm acquisition looks after resampling to the
network's 1.5625 mm), and contrast (intensity scale and shift, gamma 0.6-1.8, a non-linear
histogram shift, bias field, Rician noise, blur and Gibbs ringing). That is the "wide"
augmentation, the default; "mild" keeps the orientations, small rotations and scales and light
intensity changes: in short fine-tuning cycles from the bundled weights it scored 0.3 points of
validation Dice higher, at no measured cost under the simulated scanners (docs/medsegrwkv.md).
"appearance" is "mild"'s geometry with "wide"'s scanner looks, and "geometry" "wide"'s rotations and
scales with "mild"'s looks: together they separate what the looks cost from what the larger
rotations and scales cost.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk
from monai.data import Dataset
from monai.transforms import (
    Compose, RandAdjustContrastd, RandAffined, RandBiasFieldd, RandCropByPosNegLabeld, RandFlipd,
    RandGaussianNoised, RandGaussianSmoothd, RandGibbsNoised, RandHistogramShiftd, RandLambdad, RandRicianNoised,
    RandRotate90d, RandScaleIntensityd, RandShiftIntensityd, RandSimulateLowResolutiond, SpatialPadd,
)
from tqdm import tqdm

from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.preprocess import neighbour_slices, prepare_image, prepare_labels
from medsegrwkv.training.acdc import Case

KEYS = ("image", "label")


def load_volumes(cases: list[Case], preprocessing: dict[str, Any] | None = None,
                 show_progress: bool = True) -> list[dict[str, np.ndarray]]:
    """Each case on the network grid: {"image": (z, y, x) float32, "label": (z, y, x) uint8}."""
    volumes = []
    for case in tqdm(cases, desc="load", unit="vol", disable=not show_progress):
        prepared = prepare_image(sitk.ReadImage(str(case.image), sitk.sitkFloat32), preprocessing)
        labels = prepare_labels(sitk.ReadImage(str(case.label)), prepared)
        volumes.append({"image": prepared.array, "label": labels})
    return volumes


AUGMENTATIONS = ("wide", "mild", "appearance", "geometry")


def check_augmentation(strength: str) -> None:
    if strength not in AUGMENTATIONS:
        raise MedSegError(f"Unknown augmentation '{strength}'; choose {' or '.join(AUGMENTATIONS)}.",
                          code=ErrorCode.BAD_ARGUMENT)


def augmentation(spatial_dims: int, crop: tuple[int, ...], context: int = 0, strength: str = "wide") -> Compose:
    """`strength` "wide" adds to "mild" (the orientations, rotation by up to 15 degrees, scaling by
    0.85-1.15, light intensity changes, which trained the bundled default) what other sites' studies
    vary in: larger rotations and scales, lower resolution, gamma 0.6-1.8, histogram shift, Rician
    noise and Gibbs ringing. `context` > 0: a 2.5D input whose neighbour channels are also reversed
    at random, since the slice order of a study (base to apex or back) depends on how its in-plane
    axes were flipped. "appearance" takes "mild"'s geometry and "wide"'s scanner looks, "geometry"
    "wide"'s geometry and "mild"'s looks."""
    check_augmentation(strength)
    wide_geometry = strength in ("wide", "geometry")
    looks = strength in ("wide", "appearance")  # the other scanners' looks
    inplane = (0, 1) if spatial_dims == 2 else (1, 2)  # spatial axes of the (C, [D,] H, W) arrays
    angle, zoom = (np.pi / 6, 0.3) if wide_geometry else (np.pi / 12, 0.15)
    rotate = (angle,) if spatial_dims == 2 else (angle, 0.0, 0.0)  # 3D: about the slice axis
    scale = (zoom, zoom) if spatial_dims == 2 else (0.0, zoom, zoom)
    spatial = [
        SpatialPadd(KEYS, spatial_size=crop),
        RandCropByPosNegLabeld(KEYS, label_key="label", spatial_size=crop, pos=2, neg=1, num_samples=1),
        RandFlipd(KEYS, prob=0.5, spatial_axis=inplane[0]),
        RandFlipd(KEYS, prob=0.5, spatial_axis=inplane[1]),
        RandRotate90d(KEYS, prob=0.75, max_k=3, spatial_axes=inplane),
        RandAffined(KEYS, prob=0.6 if wide_geometry else 0.5, rotate_range=rotate, scale_range=scale,
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
    ]
    # "mild" is the "wide" list without the other scanners' looks, with gentler settings
    intensity = [
        *([RandSimulateLowResolutiond("image", prob=0.25, zoom_range=(0.6, 1.0),
                                      upsample_mode="bilinear" if spatial_dims == 2 else "trilinear")] if looks else []),
        # the polynomial sums over every axis, so the same coefficients bend a 3D crop far more
        RandBiasFieldd("image", prob=0.3 if looks else 0.2, coeff_range=(0.0, 0.2 if spatial_dims == 2 else 0.1)),
        RandScaleIntensityd("image", factors=0.2 if looks else 0.15, prob=0.5),
        RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        RandAdjustContrastd("image", prob=0.4 if looks else 0.3, gamma=(0.6, 1.8) if looks else (0.7, 1.5)),
        *([RandHistogramShiftd("image", num_control_points=(5, 10), prob=0.2)] if looks else []),
        RandGaussianSmoothd("image", prob=0.1, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0)),
        RandRicianNoised("image", prob=0.2, std=0.04, relative=False) if looks else
        RandGaussianNoised("image", prob=0.2, std=0.03),
        *([RandGibbsNoised("image", prob=0.15, alpha=(0.0, 0.6))] if looks else []),
    ]
    reverse = [RandLambdad("image", func=lambda x: x.flip(0), prob=0.5)] if context else []
    return Compose(spatial + intensity + reverse)


def training_dataset(volumes: list[dict[str, np.ndarray]], spatial_dims: int, crop: tuple[int, ...],
                     context: int = 0, strength: str = "wide") -> Dataset:
    """Slices (2D; with `context` neighbours a side as further channels) or whole stacks (3D), each
    with a channel axis, behind the augmentation."""
    if spatial_dims == 2:
        items = [{"image": stack[z], "label": v["label"][z][None]}
                 for v in volumes for stack in [neighbour_slices(v["image"], context)] for z in range(len(stack))]
    else:
        items = [{"image": v["image"][None], "label": v["label"][None]} for v in volumes]
    return Dataset(items, transform=augmentation(spatial_dims, crop, context, strength))
