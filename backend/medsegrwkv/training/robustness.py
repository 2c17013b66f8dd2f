"""Other scanners' looks, made from labelled volumes: how much does a model lose on them?

Held-out studies from other sites differ from the training data in pixel size, field of view and
contrast. Each `Perturbation` turns a labelled volume (image + reference, in their own geometry)
into one such look, deterministically (fixed seeds), and `evaluate_robustness` scores the deployed
pipeline on every look beside the unchanged volume. Intensity looks use MONAI's transforms;
geometry looks resample or pad with SimpleITK, and the reference follows (nearest neighbour), so
Dice is measured against the same expert contours on the perturbed grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter
from monai.transforms import AdjustContrast, GibbsNoise, RandBiasField, RandHistogramShift, RandRicianNoise
from tqdm import tqdm

from medsegrwkv.inference.segmenter import Segmenter
from medsegrwkv.training.acdc import Case
from medsegrwkv.training.evaluation import score_volume
from medsegrwkv.training.metrics import STRUCTURES, summarize

Pair = tuple[sitk.Image, sitk.Image]  # (image float32, reference labels)


@dataclass(frozen=True)
class Perturbation:
    name: str
    description: str
    apply: Callable[[sitk.Image, sitk.Image], Pair]


def _with_array(image: sitk.Image, array: np.ndarray) -> sitk.Image:
    out = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    out.CopyInformation(image)
    return out


def _intensity(transform: Callable[[np.ndarray], Any]) -> Callable[[sitk.Image, sitk.Image], Pair]:
    """Apply a MONAI array transform to the (1, z, y, x) voxels; the reference is unchanged."""
    def apply(image: sitk.Image, reference: sitk.Image) -> Pair:
        voxels = sitk.GetArrayFromImage(image)[None]
        return _with_array(image, np.asarray(transform(voxels))[0]), reference
    return apply


def _seeded(transform: Any, seed: int = 0) -> Any:
    transform.set_random_state(seed)
    return transform


def _resampled_grid(image: sitk.Image, spacing_xy: float) -> sitk.Image:
    """A grid over the same in-plane extent with `spacing_xy` mm pixels (slices unchanged)."""
    size, spacing = image.GetSize(), image.GetSpacing()
    new_size = [max(1, round(size[d] * spacing[d] / spacing_xy)) for d in (0, 1)] + [size[2]]
    grid = sitk.Image(new_size, sitk.sitkUInt8)
    grid.SetSpacing((spacing_xy, spacing_xy, spacing[2]))
    grid.SetDirection(image.GetDirection())
    # keep the outer edge of the field of view where it was: corner + half a new pixel
    corner = np.array(image.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, 0.0)))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    grid.SetOrigin(tuple(corner + direction @ np.array([spacing_xy / 2, spacing_xy / 2, 0.0])))
    return grid


def _pixel_size(spacing_xy: float) -> Callable[[sitk.Image, sitk.Image], Pair]:
    """The study as a scanner would have reconstructed it at another pixel size."""
    def apply(image: sitk.Image, reference: sitk.Image) -> Pair:
        grid = _resampled_grid(image, spacing_xy)
        source = image
        if spacing_xy > min(image.GetSpacing()[:2]):  # anti-alias before going coarser
            sigma_mm = 0.5 * np.sqrt(spacing_xy ** 2 - min(image.GetSpacing()[:2]) ** 2)
            sigma_px = (0.0, sigma_mm / image.GetSpacing()[1], sigma_mm / image.GetSpacing()[0])  # (z, y, x)
            source = _with_array(image, gaussian_filter(sitk.GetArrayFromImage(image), sigma_px))
        resampled = sitk.Resample(source, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        labels = sitk.Resample(reference, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        return resampled, labels
    return apply


def _low_resolution(acquired_mm: float) -> Callable[[sitk.Image, sitk.Image], Pair]:
    """Acquired at `acquired_mm` and interpolated back onto the stored matrix, as scanners do."""
    coarse = _pixel_size(acquired_mm)

    def apply(image: sitk.Image, reference: sitk.Image) -> Pair:
        low, _ = coarse(image, reference)
        return sitk.Resample(low, image, sitk.Transform(), sitk.sitkBSpline, 0.0, sitk.sitkFloat32), reference
    return apply


def _wide_fov(fraction: float) -> Callable[[sitk.Image, sitk.Image], Pair]:
    """A larger field of view: `fraction` of the width added as empty border on each side."""
    def apply(image: sitk.Image, reference: sitk.Image) -> Pair:
        pad = [round(image.GetSize()[d] * fraction) for d in (0, 1)] + [0]
        low = float(np.percentile(sitk.GetArrayViewFromImage(image), 1))
        return (sitk.ConstantPad(image, pad, pad, low), sitk.ConstantPad(reference, pad, pad, 0))
    return apply


def _tight_fov(keep: float) -> Callable[[sitk.Image, sitk.Image], Pair]:
    """A smaller field of view: only the central `keep` of each in-plane axis."""
    def apply(image: sitk.Image, reference: sitk.Image) -> Pair:
        size = image.GetSize()
        cut = [round(size[d] * (1 - keep) / 2) for d in (0, 1)] + [0]
        return sitk.Crop(image, cut, cut), sitk.Crop(reference, cut, cut)
    return apply


def _rician_noise(relative_std: float) -> Callable[[sitk.Image, sitk.Image], Pair]:
    """Magnitude-image noise at `relative_std` of the 99th-percentile intensity."""
    def apply(image: sitk.Image, reference: sitk.Image) -> Pair:
        std = relative_std * float(np.percentile(sitk.GetArrayViewFromImage(image), 99))
        return _intensity(_seeded(RandRicianNoise(prob=1.0, std=std, relative=False, sample_std=False)))(
            image, reference)
    return apply


PERTURBATIONS: tuple[Perturbation, ...] = (
    Perturbation("pixel_0.75mm", "reconstructed at 0.75 mm pixels (512-matrix scanners)", _pixel_size(0.75)),
    Perturbation("pixel_1.9mm", "reconstructed at 1.9 mm pixels", _pixel_size(1.9)),
    Perturbation("low_resolution_2.5mm", "acquired at 2.5 mm, interpolated onto the stored matrix",
                 _low_resolution(2.5)),
    Perturbation("wide_fov", "field of view 1.6x as wide (empty border)", _wide_fov(0.3)),
    Perturbation("tight_fov", "field of view cut to its central 75%", _tight_fov(0.75)),
    Perturbation("bias_field", "smooth coil-sensitivity bias field",
                 _intensity(_seeded(RandBiasField(degree=3, coeff_range=(0.12, 0.12), prob=1.0)))),
    Perturbation("gamma_0.6", "brighter mid-tones (gamma 0.6)", _intensity(AdjustContrast(0.6))),
    Perturbation("gamma_1.6", "darker mid-tones (gamma 1.6)", _intensity(AdjustContrast(1.6))),
    Perturbation("rician_noise", "Rician noise, 4% of the bright signal", _rician_noise(0.04)),
    Perturbation("gibbs_ringing", "Gibbs ringing (k-space truncated, alpha 0.5)", _intensity(GibbsNoise(0.5))),
)


# Beyond the ranges, for how far a model is from its cliff: twice the noise, stronger
# gamma, a non-linear contrast curve, a coarser acquisition, harder ringing (`evaluate --stress`).
# The session-17 weights lose 1.2-5.1 points on them, most under the noise (docs/medsegrwkv.md).
STRESS: tuple[Perturbation, ...] = (
    Perturbation("rician_noise_8%", "Rician noise, 8% of the bright signal", _rician_noise(0.08)),
    Perturbation("gamma_0.45", "much brighter mid-tones (gamma 0.45)", _intensity(AdjustContrast(0.45))),
    Perturbation("gamma_2.2", "much darker mid-tones (gamma 2.2)", _intensity(AdjustContrast(2.2))),
    Perturbation("histogram_curve", "a non-linear intensity curve (8 control points, fixed seed)",
                 _intensity(_seeded(RandHistogramShift(num_control_points=8, prob=1.0), 3))),
    Perturbation("low_resolution_3.5mm", "acquired at 3.5 mm, interpolated onto the stored matrix",
                 _low_resolution(3.5)),
    Perturbation("gibbs_ringing_0.8", "strong Gibbs ringing (alpha 0.8)", _intensity(GibbsNoise(0.8))),
)


def _heart_scale(factor: float) -> Callable[[sitk.Image, sitk.Image], Pair]:
    """The anatomy `factor` times as large: the in-plane pixel size in the header scaled, for the
    image and the reference alike (the voxels untouched, so only the size in mm changes)."""
    def apply(image: sitk.Image, reference: sitk.Image) -> Pair:
        scaled = []
        for volume in (image, reference):
            copy = sitk.Image(volume)
            sx, sy, sz = copy.GetSpacing()
            copy.SetSpacing((sx * factor, sy * factor, sz))
            scaled.append(copy)
        return scaled[0], scaled[1]
    return apply


# Hearts of other sizes than the training hearts': not a scanner's look (the anatomy changes), so
# kept apart from PERTURBATIONS; `evaluate --robustness` scores both (inference/heart_size.py).
HEART_SIZES: tuple[Perturbation, ...] = (
    Perturbation("heart_0.6x", "every structure 0.6x as large (smaller than any training heart)", _heart_scale(0.6)),
    Perturbation("heart_1.6x", "every structure 1.6x as large (larger than any training heart)", _heart_scale(1.6)),
)


def get_perturbation(name: str) -> Perturbation:
    for p in (*PERTURBATIONS, *HEART_SIZES, *STRESS):
        if p.name == name:
            return p
    raise KeyError(name)


def evaluate_robustness(segmenter: Segmenter, cases: Iterable[Case], perturbations: Iterable[Perturbation] = PERTURBATIONS,
                        show_progress: bool = True, tta: bool | None = None) -> list[dict[str, Any]]:
    """One row per look ("clean" first): mean Dice per structure and the drop from clean, in points of
    Dice averaged over the same volumes."""
    cases, looks = list(cases), [None, *perturbations]
    scores: dict[str, list[dict[str, dict[str, float]]]] = {("clean" if p is None else p.name): [] for p in looks}
    bar = tqdm(total=len(cases) * len(looks), desc="robustness", unit="run", disable=not show_progress)
    for case in cases:
        image = sitk.ReadImage(str(case.image), sitk.sitkFloat32)
        reference = sitk.ReadImage(str(case.label))
        for p in looks:
            pair = (image, reference) if p is None else p.apply(image, reference)
            scores["clean" if p is None else p.name].append(score_volume(segmenter, *pair, tta)[1])
            bar.update()
    bar.close()
    clean = summarize(scores["clean"])
    rows = []
    for p in looks:
        name = "clean" if p is None else p.name
        s = summarize(scores[name])
        row: dict[str, Any] = {"look": name, "description": "unchanged" if p is None else p.description,
                               "volumes": len(cases)}
        for key in [f"{n}_dice" for n in STRUCTURES.values()] + ["mean_dice"]:
            row[key] = s[key]
            row[f"{key}_drop"] = clean[key] - s[key]
        rows.append(row)
    return rows


def render_robustness(rows: list[dict[str, Any]]) -> str:
    """Markdown table: Dice per look and its drop from the clean volumes (points of Dice x 100)."""
    lines = ["| look | mean Dice | drop (points) | RV | Myo | LV | |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['look']} | {r['mean_dice']:.4f} | {100 * r['mean_dice_drop']:+.1f} | {r['RV_dice']:.3f} | "
                     f"{r['Myo_dice']:.3f} | {r['LV_dice']:.3f} | {r['description']} |")
    return "\n".join(lines) + "\n"
