"""Hard-slice sampling: the training slices the starting network gets wrong are drawn more often.

Cycles from the bundled weights flatten out while the end-systolic frames stay wrong: the session-19
default, trained on patient034 for 51 epochs, still reaches only LV 0.72 on its ES frame. Drawn
uniformly, the few slices it fails on are a small share of every epoch. Drawing each slice with a weight
1 + strength x (its Dice deficit under the starting weights / the mean deficit) gives them more of the
optimiser's steps at the same epoch length: hard-example mining (Shrivastava et al., CVPR 2016, "Training
region-based object detectors with online hard example mining"), per slice and fixed once from the start.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler
from tqdm import tqdm

from medsegrwkv import STRUCTURES
from medsegrwkv.inference.segmenter import Segmenter
from medsegrwkv.interactive.clicks import dice


def slice_deficits(segmenter: Segmenter, volumes: list[dict[str, np.ndarray]],
                   show_progress: bool = True) -> np.ndarray:
    """Per slice, in `training_dataset`'s order (volume by volume, slice by slice): 1 - the mean Dice,
    over the structures in the reference or the prediction, of the network's unaugmented prediction on
    the network grid; 0 on a slice where neither has any structure."""
    deficits = []
    for volume in tqdm(volumes, desc="hard slices", unit="vol", disable=not show_progress):
        predicted = segmenter.predict_probabilities(volume["image"], tta=False).argmax(0)
        reference = volume["label"]
        for z in range(len(reference)):
            masks = [(predicted[z] == structure, reference[z] == structure) for structure in STRUCTURES]
            scores = [dice(p, r) for p, r in masks if p.any() or r.any()]
            deficits.append(1.0 - float(np.mean(scores)) if scores else 0.0)
    return np.asarray(deficits, dtype=np.float64)


def sampling_weights(deficits: np.ndarray, strength: float) -> np.ndarray:
    """1 + strength x deficit / mean deficit: at strength 1 a slice with the mean deficit is drawn twice as
    often as a perfect one; all alike where the network gets every slice right."""
    mean = float(deficits.mean()) if deficits.size else 0.0
    return 1.0 + strength * deficits / mean if mean > 0 else np.ones_like(deficits)


def hard_slice_sampler(weights: np.ndarray, seed: int) -> WeightedRandomSampler:
    """An epoch of len(weights) draws with replacement, in proportion to `weights`."""
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), num_samples=len(weights),
                                 replacement=True, generator=torch.Generator().manual_seed(seed))
