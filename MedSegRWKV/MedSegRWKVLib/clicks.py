"""Click correction bookkeeping, free of Slicer so it is tested outside it.

A `ClickSession` corrects one segment of one volume. Each point the user places (positive: the
structure is here; negative: it is not) is converted to a continuous voxel index (IJK) and
added; the refine request then carries the points of that point's slice and the segment's
current mask, read from the segmentation at that moment, so edits made in the Segment Editor
between clicks are part of what the worker refines. Before a slice is overwritten with the
worker's answer, its previous content is kept, so "undo" removes the last point and puts the
slice back exactly as it was before that point. Voxels a point adds to the segment are taken
from the segmentation's other segments, so segments stay mutually exclusive as Segment Editor
keeps them by default (otherwise a voxel counts in two volumes); undo gives them back. Masks are
numpy arrays in (k, j, i) order, as slicer.util.arrayFromSegmentBinaryLabelmap gives them.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from MedSegRWKVLib.terminology import SegmentSpec, segment_specs


@dataclass(frozen=True)
class Point:
    ijk: Tuple[float, float, float]
    positive: bool

    @property
    def as_json(self) -> Dict[str, Any]:
        return {"ijk": [float(c) for c in self.ijk], "positive": self.positive}


def slice_index(ijk: Sequence[float], axis: int) -> int:
    """The slice (along `axis`: 0 i, 1 j, 2 k) that a continuous voxel index lies on."""
    return int(np.floor(float(ijk[axis]) + 0.5))


def take_slice(mask: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(mask, index, axis=2 - axis).copy()  # IJK axis a is numpy axis 2 - a


def put_slice(mask: np.ndarray, axis: int, index: int, values: np.ndarray) -> None:
    view = [slice(None)] * 3
    view[2 - axis] = index  # type: ignore[call-overload]
    mask[tuple(view)] = values


def encode_mask(mask: np.ndarray) -> Dict[str, Any]:
    """The worker's mask format: C-order bits, numpy.packbits, base64 (engine/protocol.py)."""
    return {"shape": list(mask.shape), "bits": base64.b64encode(np.packbits(mask.astype(bool), axis=None)).decode()}


def decode_mask(data: Dict[str, Any]) -> np.ndarray:
    shape = [int(n) for n in data["shape"]]
    packed = np.frombuffer(base64.b64decode(data["bits"]), dtype=np.uint8)
    return np.unpackbits(packed, count=int(np.prod(shape))).astype(bool).reshape(shape)


def correctable_segments(labels: Sequence[Dict[str, Any]], segment_ids: Sequence[str]) -> List[SegmentSpec]:
    """The refinement model's structures that the segmentation holds (matched by segment ID)."""
    return [spec for spec in segment_specs(labels) if spec.segment_id in set(segment_ids)]


@dataclass
class ClickSession:
    """One segment being corrected on one cached image."""

    image_id: str
    label: int  # the segment's label value in the model's labels
    segment_id: str  # the segment in the Slicer segmentation
    index_axis: int  # the volume's slice axis, from load_image
    shape: Tuple[int, int, int]  # (k, j, i) of the volume
    points: List[Point] = field(default_factory=list)
    # per point, per changed slice: (index, the segment's slice before, the other segments' slices before)
    _undo: List[List[Tuple[int, np.ndarray, Dict[str, np.ndarray]]]] = field(default_factory=list)

    def add(self, ijk: Sequence[float], positive: bool) -> Point:
        size = tuple(reversed(self.shape))  # (i, j, k)
        if not all(-0.5 <= c <= s - 0.5 for c, s in zip(ijk, size)):
            raise ValueError("The point lies outside the volume; place it on the image.")
        point = Point((float(ijk[0]), float(ijk[1]), float(ijk[2])), bool(positive))
        self.points.append(point)
        self._undo.append([])
        return point

    def request(self, mask: np.ndarray) -> Dict[str, Any]:
        """The refine request for the last point: the points of its slice and the current mask."""
        if not self.points:
            raise ValueError("Place a point first.")
        if tuple(mask.shape) != tuple(self.shape):
            raise ValueError(f"The segment's mask has shape {mask.shape}, the volume {self.shape}.")
        current = slice_index(self.points[-1].ijk, self.index_axis)
        on_slice = [p.as_json for p in self.points if slice_index(p.ijk, self.index_axis) == current]
        return {"op": "refine", "image_id": self.image_id, "label": self.label, "points": on_slice,
                "mask": encode_mask(mask)}

    def apply(self, mask: np.ndarray, result: Dict[str, Any],
              others: Optional[Dict[str, np.ndarray]] = None) -> List[int]:
        """Write the worker's slices into `mask` and clear them from `others` (segment ID -> mask
        of every other segment), all in place, remembering what they replace; returns the changed
        slice indices."""
        if result.get("index_axis") != self.index_axis:
            raise ValueError("The answer's slice axis does not match the session's volume.")
        others = others or {}
        changed = []
        for item in result["slices"]:
            index = int(item["index"])
            refined = decode_mask(item)
            before = {name: take_slice(other, self.index_axis, index) for name, other in others.items()}
            self._undo[-1].append((index, take_slice(mask, self.index_axis, index), before))
            put_slice(mask, self.index_axis, index, refined)
            for name, other in others.items():
                put_slice(other, self.index_axis, index, before[name] & ~refined)
            changed.append(index)
        return changed

    def undo(self, mask: np.ndarray, others: Optional[Dict[str, np.ndarray]] = None) -> Optional[Point]:
        """Remove the last point and restore (in place) the slices its answer changed, in `mask`
        and in the other segments' masks."""
        if not self.points:
            return None
        for index, before, others_before in reversed(self._undo.pop()):
            put_slice(mask, self.index_axis, index, before)
            for name, other in (others or {}).items():
                if name in others_before:
                    put_slice(other, self.index_axis, index, others_before[name])
        return self.points.pop()

    def accept(self) -> int:
        """Keep the mask as it is and forget the points; returns how many there were."""
        count = len(self.points)
        self.points.clear()
        self._undo.clear()
        return count
