"""Anatomical clean-up: one connected piece per structure, no holes inside cavities."""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import FillHoles, KeepLargestConnectedComponent

RV, MYO, LV = 1, 2, 3

_keep_largest = KeepLargestConnectedComponent(applied_labels=[RV, MYO, LV], is_onehot=False,
                                              independent=True, connectivity=3)
_fill_cavities = FillHoles(applied_labels=[RV, LV])


def postprocess(labels: np.ndarray) -> np.ndarray:
    """Labels (z, y, x) with slices along z.

    - Largest 3D component per structure (26-connectivity, so a slightly shifted slice stays).
    - Holes filled slice by slice (the stack is too sparse for 3D holes): inside the RV and LV
      cavities, and background enclosed by the myocardium ring becomes LV cavity (papillary
      muscles and trabeculae belong to the cavity in the ACDC convention).
    """
    out = np.asarray(_keep_largest(torch.as_tensor(labels[None]))[0]).astype(np.uint8)
    for z in range(out.shape[0]):
        slice_ = torch.as_tensor(out[z][None])
        out[z] = np.asarray(_fill_cavities(slice_)[0])
        epicardium = torch.as_tensor(((out[z] == MYO) | (out[z] == LV))[None].astype(np.uint8))
        enclosed = (np.asarray(FillHoles()(epicardium)[0]) > 0) & (out[z] == 0)
        out[z][enclosed] = LV
    return out
