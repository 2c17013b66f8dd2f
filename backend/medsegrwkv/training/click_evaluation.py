"""How much clicks help: the simulated-user protocol on labelled volumes.

Every slice of every volume is corrected structure by structure, starting from the automatic
prediction (or from an empty mask). Each round the simulated user clicks at the deepest point
of the largest error (`medsegrwkv.interactive.next_click`, deterministic) and the refinement
network updates the mask. Reported per structure: mean slice Dice after 0, 1, 3 and 5 clicks,
and the number of clicks to reach Dice 0.90 (NoC@90; a slice that never reaches it within
`max_clicks` counts as `max_clicks`, as RITM reports NoC). All on the network grid (1.5625 mm),
only slices where the structure is present in the reference.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from medsegrwkv.inference.postprocess import postprocess
from medsegrwkv.inference.segmenter import Segmenter
from medsegrwkv.interactive.clicks import dice, next_click
from medsegrwkv.interactive.refiner import STRUCTURES, Refiner
from medsegrwkv.preprocess import prepare_image, prepare_labels
from medsegrwkv.training.acdc import Case
from medsegrwkv.training.metrics import STRUCTURES as NAMES

REPORTED_CLICKS = (0, 1, 3, 5)


def click_curve(refiner: Refiner, image: np.ndarray, start: np.ndarray, truth: np.ndarray, label: int,
                max_clicks: int) -> list[float]:
    """Dice after 0..max_clicks simulated clicks on one slice (stops early at a perfect mask)."""
    mask, clicks = start, []
    curve = [dice(mask, truth)]
    for _ in range(max_clicks):
        click = next_click(mask, truth)
        if click is None:
            curve.append(1.0)
            continue
        clicks.append(click)
        mask = refiner.refine_slice(image, mask, clicks, label)
        curve.append(dice(mask, truth))
    return curve


def clicks_to_reach(curve: list[float], target: float) -> int:
    reached = [n for n, d in enumerate(curve) if d >= target]
    return reached[0] if reached else len(curve) - 1


def evaluate_clicks(refiner: Refiner, segmenter: Segmenter | None, cases: Iterable[Case], max_clicks: int = 10,
                    target: float = 0.90, show_progress: bool = True) -> dict[str, Any]:
    """Summary per start ("automatic" when a segmenter is given, and "empty") and structure."""
    starts = (["automatic"] if segmenter is not None else []) + ["empty"]
    curves: dict[str, dict[int, list[list[float]]]] = {s: {v: [] for v in STRUCTURES} for s in starts}
    cases = list(cases)
    for case in tqdm(cases, desc="clicks", unit="vol", disable=not show_progress):
        prepared = prepare_image(sitk.ReadImage(str(case.image), sitk.sitkFloat32), refiner.manifest.get("preprocessing"))
        labels = prepare_labels(sitk.ReadImage(str(case.label)), prepared)
        automatic = (postprocess(segmenter.predict_probabilities(prepared.array).argmax(0).astype(np.uint8),
                                 basal_rv=segmenter.trim_basal_rv)
                     if segmenter is not None else None)
        for z in range(labels.shape[0]):
            for value in STRUCTURES:
                truth = labels[z] == value
                if not truth.any():
                    continue
                for start in starts:
                    initial = automatic[z] == value if start == "automatic" else np.zeros_like(truth)
                    curves[start][value].append(click_curve(refiner, prepared.array[z], initial, truth, value,
                                                            max_clicks))
    summary: dict[str, Any] = {"volumes": len(cases), "max_clicks": max_clicks, "target_dice": target}
    for start in starts:
        rows = {}
        for value in STRUCTURES:
            c = np.array(curves[start][value])
            noc = [clicks_to_reach(list(row), target) for row in c]
            rows[NAMES[value]] = {
                "slices": len(c),
                **{f"dice_{n}": float(c[:, n].mean()) for n in REPORTED_CLICKS if n <= max_clicks},
                "noc": float(np.mean(noc)),
                "reached": float(np.mean([row.max() >= target for row in c])),
            }
        summary[start] = rows
    return summary
