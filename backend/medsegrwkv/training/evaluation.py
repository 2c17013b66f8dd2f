"""Run the deployed inference path on labelled cases and score it."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import SimpleITK as sitk
from tqdm import tqdm

from medsegrwkv.inference.segmenter import Segmenter
from medsegrwkv.training.acdc import Case
from medsegrwkv.training.metrics import STRUCTURES, structure_metrics, summarize


def score_volume(segmenter: Segmenter, image: sitk.Image, reference: sitk.Image, tta: bool | None = None
                 ) -> tuple[sitk.Image, dict[str, dict[str, float]]]:
    """The deployed pipeline's labelmap for `image` and its Dice/HD95 against `reference` (same grid)."""
    pred = segmenter.segment(image, tta=tta)
    return pred, structure_metrics(sitk.GetArrayViewFromImage(pred), sitk.GetArrayViewFromImage(reference),
                                   tuple(reversed(reference.GetSpacing())))


def evaluate_cases(segmenter: Segmenter, cases: Iterable[Case], tta: bool | None = None, show_progress: bool = True,
                   on_case: Callable[[int, int], None] | None = None,
                   on_prediction: Callable[[Case, sitk.Image, sitk.Image, sitk.Image], None] | None = None,
                   ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per-volume rows (case, group, <structure>_dice, <structure>_hd95) and the summary.
    `on_prediction(case, image, reference, prediction)` sees each volume, e.g. for a per-case report."""
    cases = list(cases)
    rows, metrics = [], []
    for i, case in enumerate(tqdm(cases, desc="evaluate", unit="vol", disable=not show_progress)):
        image = sitk.ReadImage(str(case.image), sitk.sitkFloat32)
        reference = sitk.ReadImage(str(case.label))
        pred, m = score_volume(segmenter, image, reference, tta)
        if on_prediction:
            on_prediction(case, image, reference, pred)
        metrics.append(m)
        row: dict[str, Any] = {"case": case.name, "group": case.group or ""}
        for name in STRUCTURES.values():
            row[f"{name}_dice"] = m[name]["dice"]
            row[f"{name}_hd95"] = m[name]["hd95"]
        rows.append(row)
        if on_case:
            on_case(i + 1, len(cases))
    return rows, summarize(metrics)
