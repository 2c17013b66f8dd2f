"""Dice and HD95 per structure, with MONAI's metric functions, distances in mm.

Conventions for empty masks: both empty -> Dice 1, HD95 0; exactly one empty -> Dice 0, HD95
undefined (NaN, left out of means). Summaries average over volumes with NaNs ignored.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from medsegrwkv import STRUCTURES


def _onehot(labels: np.ndarray, value: int) -> torch.Tensor:
    return torch.as_tensor(labels == value)[None, None].float()


def structure_metrics(pred: np.ndarray, ref: np.ndarray, spacing_zyx: tuple[float, ...]) -> dict[str, dict[str, float]]:
    """{"RV": {"dice": .., "hd95": ..}, ...} for label arrays of the same shape (z, y, x)."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    out: dict[str, dict[str, float]] = {}
    for value, name in STRUCTURES.items():
        p, r = _onehot(pred, value), _onehot(ref, value)
        p_empty, r_empty = not bool(p.any()), not bool(r.any())
        if p_empty and r_empty:
            out[name] = {"dice": 1.0, "hd95": 0.0}
        elif p_empty or r_empty:
            out[name] = {"dice": 0.0, "hd95": math.nan}
        else:
            dice = float(compute_dice(p, r, include_background=True)[0, 0])
            with warnings.catch_warnings():  # MONAI 1.6 warns about its own internal argument on every call
                warnings.filterwarnings("ignore", category=FutureWarning, module="monai")
                hd95 = float(compute_hausdorff_distance(p, r, include_background=True, percentile=95,
                                                        spacing=[float(s) for s in spacing_zyx])[0, 0])
            out[name] = {"dice": dice, "hd95": hd95}
    return out


def summarize(rows: list[dict[str, dict[str, float]]]) -> dict[str, float]:
    """Mean Dice/HD95 per structure and their means over structures."""
    summary: dict[str, float] = {}
    for metric in ("dice", "hd95"):
        per_structure = []
        for name in STRUCTURES.values():
            values = np.array([r[name][metric] for r in rows], dtype=float)
            mean = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
            summary[f"{name}_{metric}"] = mean
            per_structure.append(mean)
        summary[f"mean_{metric}"] = float(np.nanmean(per_structure))
    return summary
