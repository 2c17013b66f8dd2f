"""Everything between a read volume and the network input, and the way back."""

from medsegrwkv.preprocess.intensity import normalize_intensity
from medsegrwkv.preprocess.orientation import Canonical, from_canonical, slice_layout, slices_first, to_canonical
from medsegrwkv.preprocess.pipeline import (
    DEFAULT_PREPROCESSING, Prepared, neighbour_slices, prepare_image, prepare_labels,
)
from medsegrwkv.preprocess.resample import resample_inplane, resample_probabilities
from medsegrwkv.preprocess.roi import (
    Roi, crop_to_roi, parse_voxel_roi, paste_from_roi, resolve_roi, roi_from_ras_box,
)

__all__ = [
    "DEFAULT_PREPROCESSING", "Canonical", "Prepared", "Roi", "crop_to_roi", "from_canonical",
    "neighbour_slices", "normalize_intensity", "parse_voxel_roi", "paste_from_roi", "prepare_image", "prepare_labels",
    "resample_inplane", "resample_probabilities", "resolve_roi", "roi_from_ras_box", "slice_layout", "slices_first",
    "to_canonical",
]
