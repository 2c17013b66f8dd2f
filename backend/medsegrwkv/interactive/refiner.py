"""Click refinement of one structure, slice by slice.

The refinement network (registry task "refinement", e.g. `unet2d-refine`) sees, per slice on the
network grid: the normalised image, the current mask of the structure (the automatic prediction,
later refinements and the user's own edits), the positive and negative click maps, and a one-hot
of which structure is being corrected. It answers that structure's mask on the slice.

`InteractiveImage` holds one prepared image (the engine caches it by id), maps clicks given as
voxel indices of the input to the network grid, and writes refined slices back into the mask in
the input's own voxel layout, leaving every other slice exactly as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.inference.device import resolve_device
from medsegrwkv.interactive.clicks import Click, changes_near_clicks, click_maps
from medsegrwkv import LABELS
from medsegrwkv.nets.registry import get_spec
from medsegrwkv.preprocess import from_canonical, prepare_image, resample_probabilities, to_canonical
from medsegrwkv.weights import load_model

STRUCTURES = tuple(value for value in LABELS if value)  # label values a refinement can correct: every structure
INPUT_CHANNELS = ("image", "mask", "positive clicks", "negative clicks", *(f"structure {v}" for v in STRUCTURES))


def refinement_input(image: np.ndarray, mask: np.ndarray, clicks: Sequence[Click], label: int) -> np.ndarray:
    """(len(INPUT_CHANNELS), H, W) float32 network input for one slice."""
    onehot = np.zeros((len(STRUCTURES), *image.shape), dtype=np.float32)
    onehot[STRUCTURES.index(label)] = 1.0
    return np.concatenate([image[None].astype(np.float32), mask[None].astype(np.float32),
                           click_maps(list(clicks), image.shape), onehot])


class Refiner:
    """A loaded refinement network on a device."""

    def __init__(self, model: torch.nn.Module, manifest: dict[str, Any], device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.manifest = manifest
        self.device = device
        self.pad_multiple = get_spec(manifest["architecture"]).pad_multiple

    @classmethod
    def from_pretrained(cls, name_or_dir: str, device: str | torch.device = "auto") -> "Refiner":
        dev = resolve_device(device) if isinstance(device, str) else device
        model, manifest = load_model(name_or_dir, dev)
        if manifest.get("task") != "refinement":
            raise MedSegError(f"Model '{name_or_dir}' is a {manifest.get('task', 'segmentation')} model, "
                              "not a click-refinement model.", code=ErrorCode.WRONG_TASK)
        return cls(model, manifest, dev)

    @torch.no_grad()
    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """Structure probability (B, H, W) for a batch of inputs (B, C, H, W)."""
        h, w = inputs.shape[-2:]
        m = self.pad_multiple
        ph, pw = (-h) % m, (-w) % m
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        x = F.pad(torch.from_numpy(np.ascontiguousarray(inputs)).to(self.device), pad)
        probs = torch.softmax(self.model(x).float(), dim=1)[:, 1, pad[2]:pad[2] + h, pad[0]:pad[0] + w]
        return probs.cpu().numpy()

    def refine_slice(self, image: np.ndarray, mask: np.ndarray, clicks: Sequence[Click], label: int) -> np.ndarray:
        """The structure's new mask (H, W) bool on one network-grid slice: the network's proposal
        where it changes a region that a click touches, the current mask elsewhere."""
        proposal = self.probabilities(refinement_input(image, mask, clicks, label)[None])[0] > 0.5
        return np.where(changes_near_clicks(mask, proposal, list(clicks)), proposal, mask)


@dataclass(frozen=True)
class VoxelClick:
    """A click as the user placed it: a continuous voxel index (i, j, k) of the input image."""

    ijk: tuple[float, float, float]
    positive: bool


class InteractiveImage:
    """One input volume prepared once for many refinements."""

    def __init__(self, image: sitk.Image, preprocessing: dict[str, Any] | None = None) -> None:
        if image.GetDimension() != 3:
            raise MedSegError("Click refinement needs one 3D volume (a single cardiac phase).",
                              code=ErrorCode.BAD_INPUT)
        self.image = image
        self.prepared = prepare_image(image, preprocessing)
        self.shape = tuple(reversed(image.GetSize()))  # numpy (k, j, i) order of the input

    def grid_click(self, click: VoxelClick) -> tuple[int, Click]:
        """(network-grid slice, click on that slice) for a click on the input; outside: MedSegError."""
        size = self.image.GetSize()
        if not all(-0.5 <= c <= s - 0.5 for c, s in zip(click.ijk, size)):
            raise MedSegError(f"The click at voxel {tuple(round(c, 1) for c in click.ijk)} lies outside the "
                              f"image (size {size}).", code=ErrorCode.BAD_CLICK)
        point = self.image.TransformContinuousIndexToPhysicalPoint([float(c) for c in click.ijk])
        x, y, z = self.prepared.network_grid.TransformPhysicalPointToContinuousIndex(point)
        depth = self.prepared.network_grid.GetSize()[2]
        return min(depth - 1, max(0, int(round(z)))), Click(float(y), float(x), click.positive)

    def _mask_on_grid(self, canonical_mask: sitk.Image) -> np.ndarray:
        grid = sitk.Resample(sitk.Cast(canonical_mask, sitk.sitkFloat32), self.prepared.network_grid,
                             sitk.Transform(), sitk.sitkLinear, 0.0)
        return sitk.GetArrayFromImage(grid) > 0.5

    def refine(self, refiner: Refiner, mask: np.ndarray, clicks: Sequence[VoxelClick], label: int
               ) -> tuple[np.ndarray, list[int], int]:
        """Refine `label`'s mask (numpy (k, j, i) of the input, bool) on every slice that has clicks.
        Returns (new mask, changed indices along the input's slice axis, that axis: 0 i, 1 j, 2 k)."""
        if label not in STRUCTURES:
            raise MedSegError(f"Label {label} is not a structure clicks can correct (use one of {STRUCTURES}).",
                              code=ErrorCode.UNKNOWN_SEGMENT)
        if mask.shape != self.shape:
            raise MedSegError(f"The mask has shape {mask.shape}, the image {self.shape} (k, j, i); send the "
                              "segment's mask on the image's own grid.", code=ErrorCode.BAD_MASK)
        by_slice: dict[int, list[Click]] = {}
        for click in clicks:
            z, on_grid = self.grid_click(click)
            by_slice.setdefault(z, []).append(on_grid)
        mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
        mask_image.CopyInformation(self.image)
        canonical = to_canonical(mask_image)
        grid_mask = self._mask_on_grid(canonical.image)
        slices = sorted(by_slice)
        inputs = np.stack([refinement_input(self.prepared.array[z], grid_mask[z], by_slice[z], label) for z in slices])
        proposals = refiner.probabilities(inputs) > 0.5
        # Channel 0: the proposed mask; channel 1: where it may change the current one.
        grid = np.zeros((2, *grid_mask.shape), dtype=np.float32)
        for z, proposal in zip(slices, proposals):
            grid[0, z] = proposal
            grid[1, z] = changes_near_clicks(grid_mask[z], proposal, by_slice[z])
        back = resample_probabilities(grid, self.prepared.network_grid, canonical.image)
        canonical_array = sitk.GetArrayFromImage(canonical.image).astype(bool)
        region = back[1, slices] > 0.0  # every input voxel the changed region overlaps
        # Elsewhere, and on every other slice, the user's mask stays voxel for voxel.
        canonical_array[slices] = np.where(region, back[0, slices] > 0.5, canonical_array[slices])
        refined = sitk.GetImageFromArray(canonical_array.astype(np.uint8))
        refined.CopyInformation(canonical.image)
        restored = sitk.GetArrayFromImage(from_canonical(refined, canonical, mask_image)).astype(bool)
        axis = canonical.order[2]
        count = self.image.GetSize()[axis]
        changed = sorted(count - 1 - z if canonical.flips[2] else z for z in slices)
        return restored, changed, int(axis)
