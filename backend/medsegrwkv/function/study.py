"""Cardiac function of a whole study: the one study-level function that `medsegrwkv function`, the
worker's `function` op and `segment-cohort --function` call.

Everything a user can get wrong is checked before the model runs (fewer than two phases, an ED or
ES phase that does not exist, height without weight, labelmaps that do not fit the study); then
every phase is segmented in one pass (or the given labelmaps are used) and measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import SimpleITK as sitk

from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.function.cardiac import (
    CardiacFunction, check_labels_match, compute_function, default_labels, pick_phase,
)
from medsegrwkv.inference.segmenter import Segmenter
from medsegrwkv.inference.study import segment_study
from medsegrwkv.io import Study
from medsegrwkv.progress import CancelFn, ProgressFn, never_cancelled, no_progress


@dataclass
class StudyFunction:
    """The function of one study, the labelmaps it was measured on, and its JSON report."""

    function: CardiacFunction
    phase_labels: list[sitk.Image]
    report: dict[str, Any]


def body_size(study: Study, height_cm: float | None, weight_kg: float | None) -> tuple[float | None, float | None, str | None]:
    """Height and weight given by the user (both or neither), else from the DICOM headers; and their source."""
    if (height_cm is None) != (weight_kg is None):
        raise MedSegError("Give both the height and the weight (for the body surface area), or neither.",
                          code=ErrorCode.BAD_ARGUMENT)
    if height_cm is not None:
        return height_cm, weight_kg, "given"
    if study.files:
        from medsegrwkv.io.dicom import patient_size_weight

        height, weight = patient_size_weight(study.files)
        if height is not None and weight is not None:
            return height, weight, "DICOM PatientSize and PatientWeight"
    return None, None, None


def study_function(study: Study, segmenter: Segmenter | None = None,
                   phase_labels: Sequence[sitk.Image] | None = None, ed: int | None = None, es: int | None = None,
                   height_cm: float | None = None, weight_kg: float | None = None, tta: bool | None = None,
                   progress: ProgressFn = no_progress, cancel: CancelFn = never_cancelled) -> StudyFunction:
    """Segment every phase of `study` with `segmenter` (or take `phase_labels`, one per phase) and
    measure its function; `ed`/`es` (0-based) override the detected phases."""
    count = len(study.phases)
    if count < 2:
        raise MedSegError(f"Cardiac function needs at least two cardiac phases (ED and ES); {study.source} has "
                          f"{count}.", code=ErrorCode.BAD_PHASE)
    for given, name in ((ed, "ED"), (es, "ES")):
        pick_phase(given, name, count)
    height, weight, body_source = body_size(study, height_cm, weight_kg)
    if phase_labels is not None:
        if len(phase_labels) != count:
            raise MedSegError(f"The labelmaps hold {len(phase_labels)} phase(s) but the study {study.source} has "
                              f"{count}.", code=ErrorCode.BAD_LABELS)
        for p, (image, labels) in enumerate(zip(study.phases, phase_labels)):
            check_labels_match(image, labels, f"The labelmap of phase {p}")
        maps, names, model, warnings = list(phase_labels), default_labels(), None, []
    elif segmenter is not None:
        result = segment_study(study, list(range(count)), segmenter, tta=tta, progress=progress, cancel=cancel)
        maps, names, model, warnings = result.labels, result.label_names, result.model, result.warnings
    else:
        raise ValueError("study_function needs a segmenter or phase_labels")
    function = compute_function(maps, names, trigger_times_ms=study.trigger_times, ed=ed, es=es,
                                height_cm=height, weight_kg=weight)
    data = function.to_json()
    report = {"source": str(study.source), "description": study.description, "model": model,
              "body_size_from": body_source, **data, "warnings": warnings + data["warnings"]}
    progress(1.0, "function measured")
    return StudyFunction(function, maps, report)
