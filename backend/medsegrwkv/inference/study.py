"""Segment a whole study: the one study-level segmentation that `medsegrwkv segment`, the worker's
`segment` op, `function` and `segment-cohort` all call, so that they cannot drift apart.

A study is read once (medsegrwkv.io.read_study); the ROI is resolved against its first selected
phase; every selected phase is segmented with one loaded Segmenter; the answer carries the
labelmaps, their volumes per structure and every plausibility warning. Writing is left to the
caller (a labelmap file, a Slicer segmentation sequence, a function report).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import SimpleITK as sitk
import torch

from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.inference.plausibility import input_warnings, label_volumes_ml, result_warnings
from medsegrwkv.inference.segmenter import Segmenter
from medsegrwkv.io import Study
from medsegrwkv.preprocess import Roi, roi_from_ras_box, slice_layout
from medsegrwkv.progress import CancelFn, ProgressFn, check_cancel, never_cancelled, no_progress


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


@dataclass
class StudySegmentation:
    """Labelmaps of the selected phases of one study, in the input's geometry."""

    phases: list[int]  # the phase numbers reported to the user, one per labelmap
    labels: list[sitk.Image]
    roi: Roi | None
    label_names: list[dict[str, Any]]  # the model's manifest labels: value, name, colour
    volumes_ml: list[dict[int, float]]  # per phase: label value -> mL
    warnings: list[str]
    model: str
    device: torch.device
    seconds_per_slice: float  # network time only, for the worker's speed estimates

    def volume_rows(self) -> list[dict[str, Any]]:
        """One row per phase: {"phase": p, "RV cavity": mL, ...}, named as the model names them."""
        return [{"phase": p, **{label["name"]: round(volumes.get(label["value"], 0.0), 2)
                                for label in self.label_names}}
                for p, volumes in zip(self.phases, self.volumes_ml)]


def segment_study(study: Study, phases: Sequence[int], segmenter: Segmenter, roi: Roi | None = None,
                  tta: bool | None = None, postprocessing: bool = True, reported: Sequence[int] | None = None,
                  progress: ProgressFn = no_progress, cancel: CancelFn = never_cancelled) -> StudySegmentation:
    """Segment `phases` (indices into `study.phases`) of a study; `reported` renames the phases in
    messages and results (the worker's `cine_phase`). Progress runs 0-1 over all phases."""
    shown = list(reported) if reported is not None else list(phases)
    first = study.phases[phases[0]]
    started = time.time()
    check_cancel(cancel)
    notes: list[str] = []
    labels = segmenter.segment_phases([study.phases[p] for p in phases], roi=roi, tta=tta,
                                      postprocessing=postprocessing, phase_names=shown, progress=progress,
                                      cancel=cancel, notes=notes)
    slices = len(phases) * first.GetSize()[slice_layout(first)[0]]
    volumes = [label_volumes_ml(image) for image in labels]
    warnings = input_warnings(first) + notes + [w for p, image, v in zip(shown, labels, volumes)
                                                for w in result_warnings(image, p, v)]
    return StudySegmentation(phases=shown, labels=labels, roi=roi, label_names=segmenter.manifest["labels"],
                             volumes_ml=volumes, warnings=warnings, model=segmenter.manifest["name"],
                             device=segmenter.device, seconds_per_slice=(time.time() - started) / max(1, slices))
