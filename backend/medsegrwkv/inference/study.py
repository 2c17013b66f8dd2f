"""Segment a whole study: the one study-level segmentation that `medsegrwkv segment`, the worker's
`segment` op, `function` and `segment-cohort` all call, so that they cannot drift apart.

A study is read once (medsegrwkv.io.read_study); the ROI is resolved against its first selected
phase (medsegrwkv.preprocess.resolve_roi); every selected phase is segmented with one loaded
Segmenter; the answer carries the labelmaps, their volumes per structure and every plausibility
warning. Writing is left to the caller (a labelmap file, a Slicer segmentation sequence, a function
report).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import SimpleITK as sitk
import torch

from medsegrwkv.inference.plausibility import input_warnings, label_volumes_ml, result_warnings
from medsegrwkv.inference.segmenter import Segmenter
from medsegrwkv.io import Study
from medsegrwkv.preprocess import Roi, slice_layout
from medsegrwkv.progress import CancelFn, ProgressFn, check_cancel, never_cancelled, no_progress


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
