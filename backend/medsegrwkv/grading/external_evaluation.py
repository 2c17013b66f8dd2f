"""An evaluation of the grader on artefacts that its own simulator did not make (TorchIO).

The grader is trained on `grading.simulator`'s k-space motion; measured only there, it could
learn the simulator's signature, or mistake anatomy for motion, without the numbers showing it.
This module corrupts the clean slices of the ACDC validation patients with TorchIO's
`RandomMotion` (Shaw et al., MIDL 2019: k-space assembled from a few rigidly moved copies) and
`RandomGhosting` (periodic k-space planes scaled: discrete ghosts along the phase-encoding axis)
at graded strengths, and reports how the grades follow them.

Strengths (in-plane only: a 2D slice, rotation about the slice normal, translation in the slice;
parameters drawn by RandomMotion / RandomGhosting, uniformly in the ranges, seeded per slice and
strength). Motion is applied with the slice laid out as a (1, y, x) volume so that TorchIO's
k-space split runs along a slice axis (picked at random: the phase-encoding axis); in TorchIO's
own 2D layout, (y, x, 1), its split runs along the singleton axis and RandomMotion returns a
rigidly moved copy with no artefact at all. Magnitude of the result.

| strength | RandomMotion                                    | RandomGhosting                    | level (convention) |
|---|---|---|---|
| 0 clean  | none                                            | none                              | mild (4-5)         |
| 1 light  | degrees 1, translation 1 mm, 2 movements        | 2-4 ghosts, intensity 0.05-0.15   | mild (4-5)         |
| 2 medium | degrees 2, translation 3 mm, 4 movements        | 4-8 ghosts, intensity 0.3-0.5     | moderate (3)       |
| 3 strong | degrees 6, translation 8 mm, 8 movements        | 6-10 ghosts, intensity 0.7-1.0    | severe (1-2)       |

The strength-to-level mapping is a **convention** chosen by eye (no radiologist graded these
images); Spearman's correlation of the expected score with the strength does not depend on it.

Slice positions (from the ground-truth labels on the network grid): the slices holding LV cavity
or myocardium are split into thirds, `apical`, `mid` and `basal`; the apex is the end whose third
has the smaller mean LV area (so the rule does not depend on the file's slice order). Slices
with signal but no LV label are `beyond` the heart (above the base or below the apex). Blank
slices are left out, as `grade` leaves them ungraded.

Reported (`evaluate`): per strength the mean expected score and the share graded mild; the
Spearman correlation of the expected score with the strength (all slices, motion and ghosting
separately and together; negative is right: more artefact, lower score); accuracy and
linear-weighted Cohen's kappa on the 3 levels (predicted level = level of the median score, as
`grade` reports it); and per position the share of clean slices graded below 4 (not mild).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

from medsegrwkv.grading.dataset import POSITIONS, slice_positions, slice_to_input
from medsegrwkv.grading.metrics import cohen_kappa, level_of_score

KINDS = ("motion", "ghosting")
STRENGTHS = {
    1: {"motion": {"degrees": 1.0, "translation": 1.0, "num_transforms": 2},
        "ghosting": {"num_ghosts": (2, 4), "intensity": (0.05, 0.15)}},
    2: {"motion": {"degrees": 2.0, "translation": 3.0, "num_transforms": 4},
        "ghosting": {"num_ghosts": (4, 8), "intensity": (0.3, 0.5)}},
    3: {"motion": {"degrees": 6.0, "translation": 8.0, "num_transforms": 8},
        "ghosting": {"num_ghosts": (6, 10), "intensity": (0.7, 1.0)}},
}
# Convention (module docstring): expected CMRxMotion level of each strength, 0 severe, 1 moderate, 2 mild.
LEVEL_OF_STRENGTH = {0: 2, 1: 2, 2: 1, 3: 0}
LEVEL_NAMES = ("severe", "moderate", "mild")
EVALUATION_SEED = 2107


@dataclass
class EvaluationSlice:
    volume: str
    patient: str
    z: int
    position: str
    array: np.ndarray  # prepared slice (y, x), 1.5625 mm, volume-normalised
    spacing: tuple[float, float]


def load_evaluation_slices(data: str | Path, split: str = "val", max_cases: int | None = None,
                           show_progress: bool = True) -> list[EvaluationSlice]:
    """The non-blank slices of an ACDC-layout split with their positions."""
    from medsegrwkv.preprocess import prepare_image
    from medsegrwkv.preprocess.pipeline import prepare_labels
    from medsegrwkv.training.acdc import list_cases

    cases = list_cases(data, split)[:max_cases]
    out = []
    for case in tqdm(cases, desc="load", unit="vol", disable=not show_progress):
        prepared = prepare_image(sitk.ReadImage(str(case.image), sitk.sitkFloat32))
        labels = prepare_labels(sitk.ReadImage(str(case.label)), prepared)
        array = prepared.array
        signal = np.ptp(array.reshape(len(array), -1), axis=1) > 0
        spacing = prepared.network_grid.GetSpacing()
        for z, position in enumerate(slice_positions(labels, signal)):
            if position is not None:
                out.append(EvaluationSlice(case.name, case.patient, z, position, array[z],
                                           (float(spacing[1]), float(spacing[0]))))
    return out


def corrupt(slice2d: np.ndarray, spacing: tuple[float, float], kind: str, strength: int, seed: int) -> np.ndarray:
    """`slice2d` (y, x) through TorchIO's RandomMotion or RandomGhosting at `strength` (0: unchanged)."""
    if strength == 0:
        return np.asarray(slice2d, dtype=np.float32)
    import torchio as tio

    settings = STRENGTHS[strength][kind]
    array = np.ascontiguousarray(slice2d, dtype=np.float32)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        if kind == "motion":
            # The slice lies as (1, 1, y, x): TorchIO's Motion splits k-space along the last axis, which must
            # be the slice's own (its 2D layout, (1, y, x, 1), splits along the singleton axis and returns a
            # rigidly moved copy without artefact). RandomMotion's draw, kept in the slice plane: rotation
            # about the slice normal (first axis), translation in the plane; a random phase-encoding axis.
            draw = tio.RandomMotion(degrees=settings["degrees"], translation=settings["translation"],
                                    num_transforms=settings["num_transforms"])
            times, degrees, translation = draw.get_params(draw.degrees_range, draw.translation_range,
                                                          settings["num_transforms"])
            degrees[:, 1:] = 0.0
            translation[:, 0] = 0.0
            transpose = bool(torch.rand(()) < 0.5)
            plane = array.T if transpose else array
            sy, sx = (spacing[1], spacing[0]) if transpose else spacing
            image = tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(plane))[None, None],
                                    affine=np.diag([8.0, sy, sx, 1.0]))
            moved = tio.Motion(degrees=degrees, translation=translation, times=times,
                               image_interpolation="linear")(image).data[0, 0].numpy()
            out = moved.T if transpose else moved
        elif kind == "ghosting":
            image = tio.ScalarImage(tensor=torch.from_numpy(array)[None, :, :, None],
                                    affine=np.diag([spacing[0], spacing[1], 8.0, 1.0]))
            out = tio.RandomGhosting(num_ghosts=settings["num_ghosts"], axes=(0, 1),
                                     intensity=settings["intensity"])(image).data[0, :, :, 0].numpy()
        else:
            raise ValueError(f"unknown artefact kind {kind!r}")
    finally:
        torch.random.set_rng_state(state)
    return np.abs(np.ascontiguousarray(out, dtype=np.float32))


def build_samples(slices: list[EvaluationSlice], seed: int = EVALUATION_SEED, size: int = 224,
                  show_progress: bool = True) -> dict[str, Any]:
    """Grader inputs for every slice: clean once, then each kind at each strength."""
    images, meta = [], []
    variants = [("clean", 0)] + [(k, s) for k in KINDS for s in sorted(STRENGTHS)]
    for i, sl in enumerate(tqdm(slices, desc="corrupt (TorchIO)", unit="slice", disable=not show_progress)):
        for kind, strength in variants:
            x = corrupt(sl.array, sl.spacing, "motion" if kind == "clean" else kind, strength,
                        int(np.random.default_rng([seed, i, KINDS.index(kind) if kind in KINDS else 2,
                                                   strength]).integers(2**31 - 1)))
            images.append(slice_to_input(x, size).astype(np.float16))
            meta.append((i, kind, strength))
    return {"images": np.stack(images)[:, None], "slice": np.array([m[0] for m in meta]),
            "kind": np.array([m[1] for m in meta]), "strength": np.array([m[2] for m in meta]),
            "position": np.array([slices[m[0]].position for m in meta]),
            "volume": np.array([slices[m[0]].volume for m in meta])}


def median_scores(probabilities: np.ndarray) -> np.ndarray:
    """The reported score of `grade`: the median of each distribution."""
    return (np.cumsum(probabilities, axis=1) < 0.5).sum(1) + 1


def summarise(probabilities: np.ndarray, samples: dict[str, Any]) -> dict[str, Any]:
    """The report for graded samples (see the module docstring)."""
    from scipy.stats import spearmanr

    expected = probabilities @ np.arange(1, 6)
    score = median_scores(probabilities)
    level = level_of_score(score)
    strength, kind, position = samples["strength"], samples["kind"], samples["position"]
    truth = np.vectorize(LEVEL_OF_STRENGTH.get)(strength)
    out: dict[str, Any] = {"samples": int(len(expected)), "slices": int(samples["slice"].max() + 1)}

    def block(sel: np.ndarray) -> dict[str, Any]:
        varies = len(np.unique(strength[sel])) > 1 and np.ptp(expected[sel]) > 0
        rho = spearmanr(expected[sel], strength[sel]).statistic if varies else None
        return {
            "samples": int(sel.sum()),
            "spearman_expected_score_vs_strength": None if rho is None else float(rho),
            "accuracy_3level": float((level[sel] == truth[sel]).mean()),
            "kappa_linear_3level": cohen_kappa(truth[sel], level[sel], (0, 1, 2), "linear"),
            "kappa_3level": cohen_kappa(truth[sel], level[sel], (0, 1, 2)),
            "confusion_3level": [[int(((truth[sel] == t) & (level[sel] == p)).sum()) for p in (0, 1, 2)]
                                 for t in (0, 1, 2)],
        }

    out["all"] = block(np.ones(len(expected), dtype=bool))
    for k in KINDS:
        out[k] = block((kind == k) | (kind == "clean"))
    out["by_strength"] = {}
    for k in ("clean",) + KINDS:
        for s in sorted(np.unique(strength[kind == k])):
            sel = (kind == k) & (strength == s)
            out["by_strength"][f"{k} {s}"] = {
                "samples": int(sel.sum()), "mean_expected_score": float(expected[sel].mean()),
                "mild_rate": float((level[sel] == 2).mean()), "moderate_rate": float((level[sel] == 1).mean()),
                "severe_rate": float((level[sel] == 0).mean()),
                "level_convention": LEVEL_NAMES[LEVEL_OF_STRENGTH[int(s)]]}
    clean = kind == "clean"
    out["clean_by_position"] = {}
    for p in POSITIONS:
        sel = clean & (position == p)
        if sel.any():
            out["clean_by_position"][p] = {
                "slices": int(sel.sum()), "below_4_rate": float((score[sel] < 4).mean()),
                "mild_rate": float((score[sel] >= 4).mean()), "nondiagnostic_rate": float((score[sel] < 3).mean()),
                "mean_expected_score": float(expected[sel].mean())}
    out["clean_mild_rate"] = float((score[clean] >= 4).mean())
    out["clean_min_position_mild_rate"] = min(v["mild_rate"] for v in out["clean_by_position"].values())
    return out


def evaluate_torchio(data: str | Path, model: str | None = None, device: str = "cpu", split: str = "val",
                     max_cases: int | None = None, seed: int = EVALUATION_SEED,
                     show_progress: bool = True) -> dict[str, Any]:
    """Grade the TorchIO-corrupted validation slices with a grader (name or weights folder)."""
    from medsegrwkv.grading.grade import Grader

    grader = Grader.from_pretrained(model, device)
    slices = load_evaluation_slices(data, split, max_cases, show_progress)
    samples = build_samples(slices, seed, grader.size, show_progress)
    probabilities = grader.probabilities(samples["images"].astype(np.float32))
    report = summarise(probabilities, samples)
    report.update({"model": grader.manifest.get("name"), "data": str(data), "split": split, "seed": seed,
                   "strengths": {str(s): v for s, v in STRENGTHS.items()},
                   "level_of_strength": {str(s): LEVEL_NAMES[v] for s, v in LEVEL_OF_STRENGTH.items()},
                   "level_convention": "strength 0-1 mild, 2 moderate, 3 severe: a convention chosen by eye, not "
                                       "a radiologist's grading", "torchio": _torchio_version()})
    return report


def simulator_validation(data: str | Path, model: str | None = None, device: str = "cpu",
                         max_cases: int | None = None, show_progress: bool = True) -> dict[str, Any]:
    """The project's own validation (its simulator, `train grade`'s fixed set) for a grader."""
    from medsegrwkv.grading.dataset import load_acdc_volumes, simulated_validation_set
    from medsegrwkv.grading.grade import Grader
    from medsegrwkv.grading.metrics import grading_metrics
    from medsegrwkv.grading.train import predict_logits
    from medsegrwkv.training.acdc import list_cases

    grader = Grader.from_pretrained(model, device)
    val = simulated_validation_set(load_acdc_volumes(list_cases(data, "val")[:max_cases], show_progress),
                                   show_progress=show_progress)
    logits = predict_logits(grader.model, val["images"], grader.device)
    return grading_metrics(logits, val["scores"], val["patients"])


def _torchio_version() -> str:
    import torchio

    return torchio.__version__


def report_lines(report: dict[str, Any]) -> list[str]:
    """A short plain-text summary of `summarise`'s report."""
    lines = [f"TorchIO evaluation of {report.get('model')} on {report['slices']} slices ({report['samples']} samples)"]
    for key in ("all",) + KINDS:
        b = report[key]
        rho = b["spearman_expected_score_vs_strength"]
        lines.append(f"  {key:<9} Spearman(E[score], strength) {'-' if rho is None else f'{rho:+.3f}'}  "
                     f"acc3 {b['accuracy_3level']:.3f}  linear kappa3 {b['kappa_linear_3level']:.3f}")
    for name, b in report["by_strength"].items():
        lines.append(f"  {name:<11} E[score] {b['mean_expected_score']:.2f}  mild {b['mild_rate']:.2f}  "
                     f"moderate {b['moderate_rate']:.2f}  severe {b['severe_rate']:.2f}  (convention: "
                     f"{b['level_convention']})")
    for name, b in report["clean_by_position"].items():
        lines.append(f"  clean {name:<7} n={b['slices']:<4} mild {b['mild_rate']:.3f}  below 4 {b['below_4_rate']:.3f}"
                     f"  non-diagnostic {b['nondiagnostic_rate']:.3f}  E[score] {b['mean_expected_score']:.2f}")
    return lines
