"""Grade every slice (and phase) of a study for respiratory-motion artefacts, and the study as a whole.

Per slice: probabilities over the Likert scores 1-5 (temperature-scaled softmax), the expected
score, the reported score (the median of that distribution, so "diagnostic" = score >= 3 is the
same as P(score >= 3) >= 0.5), its CMRxMotion level (mild 4-5, moderate 3, severe 1-2), the
confidence (the probability of that level) and the diagnostic flag.

Per slice position (a cine study has every position in every phase, all acquired in the same
breath-hold): the probabilities averaged over the phases in which the slice is graded.

Study rule (what a radiologist can act on): the study grade is the worst grade among the slice
positions that cut the left ventricle (found in a given labelmap of the first graded phase, else by
the default segmentation model on it; all positions when it has no weights or is switched off),
together with the count and indices of non-diagnostic positions (score <= 2) among them. Any
non-diagnostic LV slice means "repeat those slices"; moderate ones are reported but acceptable for
diagnosis.

Not graded: a slice with no signal (blank after normalisation) gets no score (`grade` null and a
`not_graded` reason), because a classifier scores even an empty picture; a study with no gradable
slice through the left ventricle (all blank, or no left ventricle found) gets no study grade either.

Slice numbering: `index` is the slice's voxel index along the input's slice axis (`slice_axis`:
0 i, 1 j, 2 k) — what a viewer shows, and what the study lists and the recommendation use;
`slice` is its position in the canonical (right-handed) slice order the network sees, which runs
against `index` when the file stores the slices the other way round.

`grade_study` returns a plain JSON-serialisable dict: the Slicer engine calls it directly.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn as nn

from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.grading.dataset import INPUT_SIZE, volume_to_inputs
from medsegrwkv.grading.simulator import GRADE_OF_SCORE
from medsegrwkv.inference.device import describe_device, resolve_device
from medsegrwkv.inference.plausibility import input_warnings
from medsegrwkv.io.volumes import geometry_difference
from medsegrwkv.nets.registry import DEFAULT_MODELS
from medsegrwkv.preprocess import prepare_image, slice_layout
from medsegrwkv.progress import CancelFn, ProgressFn, check_cancel, never_cancelled, no_progress
from medsegrwkv.weights import load_model

SCORES = np.arange(1, 6)
LEVEL_SCORES = {"mild": (4, 5), "moderate": (3,), "severe": (1, 2)}
GRADE_COLOURS = {"mild": (46, 160, 67), "moderate": (240, 170, 30), "severe": (215, 48, 39)}
CMRXMOTION_LEVEL = {"mild": 1, "moderate": 2, "severe": 3}  # CMRxMotion's IQA labels: 1 mild, 2 intermediate, 3 severe
VOLUME_RULE = ("per phase (volume): the worst grade among its graded slices through the left ventricle (all slices "
               "without LV detection), as CMRxMotion's level 1 mild (4-5), 2 intermediate (3), 3 severe (1-2)")
STUDY_RULE = ("study grade = worst grade among the slice positions through the left ventricle; a slice is "
              "non-diagnostic when its score is below 3 (1-2, severe)")
NO_SIGNAL = "no signal (the slice is blank)"
UNGRADED_COLOUR = (128, 128, 128)
CAVEAT = ("Grades come from a classifier trained on real slices with simulated respiratory motion; they have "
          "not been validated against radiologists' grades of real motion.")


class Grader:
    """A loaded grading model on a device."""

    def __init__(self, model: nn.Module, manifest: dict[str, Any], device: torch.device, batch_size: int = 16) -> None:
        self.model = model.to(device).eval()
        self.manifest = manifest
        self.device = device
        self.batch_size = batch_size
        self.temperature = float(manifest.get("calibration", {}).get("temperature", 1.0))
        grader_input = manifest.get("preprocessing", {}).get("grader_input", {})
        self.size = int(grader_input.get("size", [INPUT_SIZE])[0])

    @classmethod
    def from_pretrained(cls, name_or_dir: str | None = None, device: str | torch.device = "auto") -> "Grader":
        dev = resolve_device(device) if isinstance(device, str) else device
        model, manifest = load_model(name_or_dir or DEFAULT_MODELS["grading"], dev)
        if manifest.get("task") != "grading":
            raise MedSegError(f"Model '{name_or_dir}' is a {manifest.get('task', 'segmentation')} model, not a "
                              "grading model (see `medsegrwkv models`).", code=ErrorCode.WRONG_TASK)
        return cls(model, manifest, dev)

    @torch.no_grad()
    def probabilities(self, inputs: np.ndarray, cancel: CancelFn = never_cancelled) -> np.ndarray:
        """Temperature-scaled score probabilities (N, 5) for grader inputs (N, 1, size, size)."""
        out = []
        try:
            for start in range(0, len(inputs), self.batch_size):
                check_cancel(cancel)
                x = torch.from_numpy(np.ascontiguousarray(inputs[start:start + self.batch_size])).to(self.device)
                logits = self.model(x).float() / self.temperature
                out.append(torch.softmax(logits, 1).cpu().numpy())
        except torch.OutOfMemoryError as exc:
            raise MedSegError(f"The {self.device.type.upper()} ran out of memory while grading; use --device cpu.",
                              code=ErrorCode.OUT_OF_MEMORY) from exc
        return np.concatenate(out) if out else np.zeros((0, 5), dtype=np.float32)

    def grade_volume(self, image: sitk.Image, cancel: CancelFn = never_cancelled) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (z, 5), prepared slices (z, y, x)) of a 3D phase, in canonical slice order."""
        prepared = prepare_image(image, self.manifest.get("preprocessing"))
        return self.probabilities(volume_to_inputs(prepared.array, self.size), cancel), prepared.array


def describe_probabilities(probs: np.ndarray) -> dict[str, Any]:
    """Expected score, median score, level, confidence and diagnostic flag of one distribution."""
    p = np.asarray(probs, dtype=float)
    p = p / p.sum()
    score = int(np.searchsorted(np.cumsum(p), 0.5) + 1)
    grade = GRADE_OF_SCORE[min(5, score)]
    return {
        "expected_score": round(float(p @ SCORES), 3),
        "score": min(5, score),
        "grade": grade,
        "confidence": round(float(sum(p[s - 1] for s in LEVEL_SCORES[grade])), 3),
        "diagnostic": bool(score >= 3),
        "p_diagnostic": round(float(p[2:].sum()), 3),
        "probabilities": {str(s): round(float(v), 4) for s, v in zip(SCORES, p)},
    }


def ungraded(reason: str) -> dict[str, Any]:
    """The fields of `describe_probabilities` for a slice that is not graded, and why."""
    return {"expected_score": None, "score": None, "grade": None, "confidence": None, "diagnostic": None,
            "p_diagnostic": None, "probabilities": None, "not_graded": reason}


def read_lv_labels(path: str | Path, phase_count: int, first_graded: int) -> sitk.Image:
    """The labelmap of the first graded phase, from a file holding it alone or one per phase of the study
    (what `segment` writes for a cine), for finding the LV slices."""
    from medsegrwkv.io import read_study

    labelmaps = read_study(path).phases
    if len(labelmaps) == 1:
        return labelmaps[0]
    if len(labelmaps) == phase_count:
        return labelmaps[first_graded]
    raise MedSegError(f"The labelmap {path} for finding the left ventricle holds {len(labelmaps)} phases and the "
                      f"study {phase_count}; give the graded phase's alone or one per phase.",
                      code=ErrorCode.BAD_LABELS)


def _lv_indices(image: sitk.Image, axis: int, device: torch.device,
                labels: sitk.Image | None = None) -> tuple[list[int] | None, str]:
    """Input indices (along `axis`) of the slices whose segmentation holds LV cavity or myocardium: of
    `labels` when given (a labelmap on `image`'s voxel grid, 2 myocardium, 3 LV cavity), else of the
    default segmentation model's."""
    from medsegrwkv.inference.segmenter import Segmenter
    from medsegrwkv.weights import weights_status
    from medsegrwkv.weights.store import WeightsStatus

    if labels is None:
        name = DEFAULT_MODELS["segmentation"]
        if weights_status(name) is not WeightsStatus.VERIFIED:
            return None, f"all slices (the segmentation model {name} has no verified weights)"
        labels, segmentation = Segmenter.from_pretrained(name, device).segment(image), f"the {name} segmentation"
    else:
        segmentation = "the given segmentation"
    array = sitk.GetArrayViewFromImage(labels)  # (k, j, i)
    lv = [k for k in range(array.shape[2 - axis])
          if np.count_nonzero(np.isin(np.take(array, k, axis=2 - axis), (2, 3))) >= 20]
    if not lv:
        return [], f"no slice ({segmentation} found no left ventricle)"
    return lv, f"slices with left ventricle in {segmentation} of the first graded phase"


def _recommendation(lv: list[int], positions: list[dict[str, Any]],
                    through_lv: bool) -> tuple[str, list[int], list[int]]:
    by_index = {p["index"]: p for p in positions}
    lv = [k for k in lv if by_index[k]["grade"] is not None]
    bad = [k for k in lv if not by_index[k]["diagnostic"]]
    moderate = [k for k in lv if by_index[k]["grade"] == "moderate"]
    n = len(lv)
    where = "slices through the left ventricle" if through_lv else "slices"
    if bad:
        listed = ", ".join(str(k) for k in bad)
        plural = "s" if len(bad) > 1 else ""
        text = (f"{len(bad)} of {n} {where} are non-diagnostic (slice{plural} "
                f"{listed}) — consider repeating {'them' if len(bad) > 1 else 'it'} with breath-hold coaching "
                "while the patient is on the table.")
    elif moderate:
        text = (f"No slice is non-diagnostic; {len(moderate)} of {n} {where} show moderate motion artefacts "
                "but remain adequate for diagnosis — repeat only if those slices matter.")
    else:
        text = f"All {n} {where} have mild or no motion artefacts — no repeat needed."
    return text, bad, moderate


def _not_graded(all_blank: bool, no_lv: str | None) -> str:
    """Why a study has no grade: every slice blank, no left ventricle found (`no_lv` says where the
    LV slices came from), or blank slices wherever the ventricle is."""
    if all_blank:
        return "Every slice is blank (no signal), so the study is not graded; check the input."
    if no_lv is not None:
        return f"The study is not graded: {no_lv}; check that this is a short-axis cardiac study."
    return "The slices through the left ventricle are blank, so the study is not graded."


def grade_study(source: str | Path | sitk.Image, model: str | None = None, phase: int | None = None,
                series: str | None = None, device: str | torch.device = "auto", lv_detection: bool = True,
                grader: Grader | None = None, progress: ProgressFn = no_progress,
                cancel: CancelFn = never_cancelled, lv_labels: sitk.Image | None = None) -> dict[str, Any]:
    """Grade a study (file, DICOM folder, 3D image or `io.Study`) and return the report as a plain dict
    (JSON-serialisable: numbers, strings, lists, dicts).

    `model` is a registered grader name or a weights folder (default: the default grader);
    `phase` grades one phase only (default: all); `series` picks a DICOM series; `lv_detection`
    restricts the study rule to the slices through the LV, found in `lv_labels` (a labelmap of the first
    graded phase, e.g. the one the user segmented and corrected) or else by the default segmentation
    model; `grader` reuses a loaded Grader (the
    engine keeps one per device); `progress(fraction, message)` and `cancel()` are polled.
    """
    report, _ = grade_study_with_pictures(source, model, phase, series, device, lv_detection, grader, progress,
                                          cancel, lv_labels)
    return report


def grade_study_with_pictures(source: Any, model: str | None = None, phase: int | None = None,
                              series: str | None = None, device: str | torch.device = "auto",
                              lv_detection: bool = True, grader: Grader | None = None,
                              progress: ProgressFn = no_progress, cancel: CancelFn = never_cancelled,
                              lv_labels: sitk.Image | None = None) -> tuple[dict[str, Any], list[np.ndarray]]:
    """`grade_study`, plus the prepared slices of every graded phase for `strip_picture`."""
    from medsegrwkv.io import Study, read_study, select_phases

    started = time.time()
    if isinstance(source, Study):
        study = source
    elif isinstance(source, sitk.Image):
        if source.GetDimension() != 3:
            raise MedSegError(f"A {source.GetDimension()}D image was given; a short-axis stack (3D) is needed.",
                              code=ErrorCode.BAD_INPUT)
        study = Study(Path("<image>"), [source], None, f"3D image ({'x'.join(map(str, source.GetSize()))})")
    else:
        study = read_study(source, series=series)
    phases = select_phases(study, phase)
    if lv_labels is not None and not lv_detection:
        raise MedSegError("A labelmap for finding the left ventricle was given with LV detection switched off; "
                          "give one or the other.", code=ErrorCode.BAD_ARGUMENT)
    if lv_labels is not None and (difference := geometry_difference(study.phases[phases[0]], lv_labels)) is not None:
        raise MedSegError(f"The labelmap for finding the left ventricle does not match the graded phase's geometry: "
                          f"it has {difference}.", code=ErrorCode.BAD_LABELS)
    grader = grader or Grader.from_pretrained(model, device)
    progress(0.0, "model loaded")

    axis, reversed_order = slice_layout(study.phases[phases[0]])
    count = study.phases[phases[0]].GetSize()[axis]

    def index_of(k: int) -> int:  # canonical slice k -> the input's voxel index along `axis`
        return count - 1 - k if reversed_order else k

    slices: list[dict[str, Any]] = []
    per_phase: list[np.ndarray] = []
    signal: list[np.ndarray] = []  # per phase: which slices hold an image
    pictures: list[np.ndarray] = []
    seconds = {"preprocess": 0.0, "network": 0.0}
    for n, p in enumerate(phases):
        t0 = time.time()
        prepared = prepare_image(study.phases[p], grader.manifest.get("preprocessing")).array
        inputs = volume_to_inputs(prepared, grader.size)
        t1 = time.time()
        probs = grader.probabilities(inputs, cancel)
        seconds["preprocess"] += t1 - t0
        seconds["network"] += time.time() - t1
        per_phase.append(probs)
        pictures.append(prepared)
        signal.append(np.ptp(prepared.reshape(len(prepared), -1), axis=1) > 0)
        for k, row in enumerate(probs):
            described = describe_probabilities(row) if signal[-1][k] else ungraded(NO_SIGNAL)
            record = {"phase": int(p), "slice": k, "index": index_of(k), **described}
            if study.files is not None:
                record["file"] = study.files[p][index_of(k)].name
            slices.append(record)
        progress((n + 1) / len(phases) * (0.8 if lv_detection else 1.0), f"phase {p} graded")

    positions = []
    for k in range(count):
        graded = [probs[k] for probs, has in zip(per_phase, signal) if has[k]]
        scores = [s["score"] for s in slices if s["slice"] == k and s["score"] is not None]
        positions.append({"slice": k, "index": index_of(k),
                          **(describe_probabilities(np.mean(graded, axis=0)) if graded else ungraded(NO_SIGNAL)),
                          "worst_phase_score": min(scores) if scores else None})
    lv: list[int] | None = None
    lv_source = "all slices (LV detection switched off)"
    if lv_detection:
        check_cancel(cancel)
        lv, lv_source = _lv_indices(study.phases[phases[0]], axis, grader.device, lv_labels)
    through_lv = lv is not None
    lv = sorted(lv if lv is not None else (p["index"] for p in positions))
    for pos in positions:
        pos["lv"] = pos["index"] in lv
    recommendation, bad, moderate = _recommendation(lv, positions, through_lv)
    gradable = [p for p in positions if p["lv"] and p["grade"] is not None]
    blank = [p["index"] for p in positions if p["grade"] is None]
    warnings = input_warnings(study.phases[phases[0]])
    if not gradable:
        recommendation = _not_graded(len(blank) == len(positions), lv_source if not lv else None)
        warnings.append(recommendation)
    elif blank:
        warnings.append(f"{len(blank)} slice(s) hold no signal and were not graded: {', '.join(map(str, blank))}.")
    worst = min(gradable, key=lambda p: (p["score"], p["expected_score"])) if gradable else None
    volumes = volume_levels(slices, lv)
    progress(1.0, "done")
    return {
        "input": str(study.source),
        "description": study.description,
        "model": grader.manifest.get("name", grader.manifest["architecture"]),
        "device": describe_device(grader.device),
        "temperature": grader.temperature,
        "phases": [int(p) for p in phases],
        "slice_axis": axis,
        "n_slices": len(positions),
        "warnings": warnings,
        "slices": slices,
        "positions": positions,
        "volumes": volumes,
        "study": {
            "grade": worst["grade"] if worst else None,
            "score": worst["score"] if worst else None,
            "cmrxmotion_level": CMRXMOTION_LEVEL[worst["grade"]] if worst else None,
            "volume_rule": VOLUME_RULE,
            "rule": STUDY_RULE,
            "lv_slices": lv,
            "lv_slices_source": lv_source,
            "nondiagnostic_slices": bad,
            "moderate_slices": moderate,
            "ungraded_slices": blank,
            "recommendation": recommendation,
        },
        "caveat": CAVEAT,
        "seconds": {**{k: round(v, 3) for k, v in seconds.items()}, "total": round(time.time() - started, 3)},
    }, pictures


def volume_levels(slices: list[dict[str, Any]], lv: list[int]) -> list[dict[str, Any]]:
    """One entry per graded phase (a CMRxMotion volume): the worst grade among its graded LV slices
    (`VOLUME_RULE`), its score, slice index and CMRxMotion level; None when no LV slice was graded."""
    out = []
    for phase in sorted({s["phase"] for s in slices}):
        graded = [s for s in slices if s["phase"] == phase and s["index"] in lv and s["score"] is not None]
        worst = min(graded, key=lambda s: (s["score"], s["expected_score"])) if graded else None
        out.append({"phase": phase, "grade": worst["grade"] if worst else None,
                    "score": worst["score"] if worst else None, "worst_index": worst["index"] if worst else None,
                    "cmrxmotion_level": CMRXMOTION_LEVEL[worst["grade"]] if worst else None,
                    "graded_lv_slices": len(graded)})
    return out


def strip_picture(report: dict[str, Any], pictures: list[np.ndarray], tile: int = 128):  # -> PIL.Image.Image
    """A PNG strip: one row per graded phase, one tile per slice, framed in its grade's colour."""
    from PIL import Image, ImageDraw

    n_cols = max(p.shape[0] for p in pictures)
    head, label = 18, 14
    canvas = Image.new("RGB", (n_cols * tile, head + len(pictures) * (tile + label)), "black")
    draw = ImageDraw.Draw(canvas)
    study = report["study"]
    draw.text((4, 3), f"study: {study['grade'] or 'not graded'} (score {study['score']}); LV slices "
              f"{study['lv_slices']}; non-diagnostic {study['nondiagnostic_slices']}", fill="white")
    by_key = {(s["phase"], s["slice"]): s for s in report["slices"]}
    for row, (p, volume) in enumerate(zip(report["phases"], pictures)):
        y0 = head + row * (tile + label)
        for k in range(volume.shape[0]):
            record = by_key[(p, k)]
            grey = np.clip(volume[k], 0.0, 1.0) * 255
            h, w = grey.shape
            scale = (tile - 6) / max(h, w)
            img = Image.fromarray(grey.astype(np.uint8)).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                                Image.BILINEAR)
            x0 = k * tile
            colour = GRADE_COLOURS.get(record["grade"], UNGRADED_COLOUR)
            draw.rectangle([x0, y0, x0 + tile - 1, y0 + tile - 1], outline=colour, width=3)
            canvas.paste(img, (x0 + 3 + (tile - 6 - img.size[0]) // 2, y0 + 3 + (tile - 6 - img.size[1]) // 2))
            text = f"{record['expected_score']:.1f} {record['grade']}" if record["grade"] else "blank"
            draw.text((x0 + 3, y0 + tile), f"p{p} #{record['index']}: {text}", fill=colour)
    return canvas
