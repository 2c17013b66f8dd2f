"""Grader inputs and training samples.

Input rule (shared by training and grading, so both see identical slices):
1. the volume goes through the segmentation preprocessing (`prepare_image`: canonical
   orientation, percentile normalisation of the volume, in-plane resampling to 1.5625 mm);
2. each slice is normalised again on its own (clip to its 1st-99th percentile, scale to [0, 1]),
   so a slice's grade does not depend on which other slices are in the study;
3. it is cropped or zero-padded to 224 x 224 pixels about the image centre (350 mm field of
   view at 1.5625 mm: the heart and the surrounding chest, where ghosts show).
One slice per sample, no neighbours as channels: short-axis slices are 5-10 mm apart and each is
acquired in its own breath-hold, so a neighbour carries other anatomy and other motion.

Training samples: a clean slice, a target score drawn uniformly from 1-5, motion simulated in
k-space (`MotionSimulator.sample`) on the network grid before step 2, then a random dihedral
orientation and a random gamma. The random state of sample i in epoch e is seeded by
(seed, e, i), so an epoch is reproducible and a resumed run sees the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from medsegrwkv.grading.simulator import MotionSimulator
from medsegrwkv.nets.graders import INPUT_SIZE
from medsegrwkv.preprocess import DEFAULT_PREPROCESSING, normalize_intensity, prepare_image
from medsegrwkv.training.acdc import Case

GRADER_INPUT: dict[str, Any] = {
    "slice_percentiles": [1.0, 99.0],
    "size": [INPUT_SIZE, INPUT_SIZE],
    "crop": "centre crop / zero pad",
    "channels": "the slice only (no neighbours)",
}
GRADER_PREPROCESSING: dict[str, Any] = {**DEFAULT_PREPROCESSING, "grader_input": GRADER_INPUT}


def centre_crop_or_pad(array: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """`array` (y, x) cropped or zero-padded to size x size about its centre."""
    out = np.zeros((size, size), dtype=np.float32)
    h, w = array.shape
    sy, sx = max(0, (h - size) // 2), max(0, (w - size) // 2)  # source start
    dy, dx = max(0, (size - h) // 2), max(0, (size - w) // 2)  # destination start
    ch, cw = min(h, size), min(w, size)
    out[dy:dy + ch, dx:dx + cw] = array[sy:sy + ch, sx:sx + cw]
    return out


def slice_to_input(slice2d: np.ndarray, size: int = INPUT_SIZE,
                   percentiles: Sequence[float] = (1.0, 99.0)) -> np.ndarray:
    """Steps 2-3 of the input rule: (size, size) float32 in [0, 1]."""
    normalised = normalize_intensity(np.asarray(slice2d, dtype=np.float32), *percentiles)
    return centre_crop_or_pad(normalised, size)


def volume_to_inputs(volume: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """All slices of a prepared volume (z, y, x) as grader inputs (z, 1, size, size)."""
    return np.stack([slice_to_input(s, size) for s in volume])[:, None]


@dataclass
class Volume:
    name: str  # e.g. patient001_frame01 or SCD0000101_phase05
    patient: str
    array: np.ndarray  # prepared (z, y, x) at 1.5625 mm, volume-normalised
    spacing: tuple[float, float]  # (y, x) mm
    positions: list[str | None] | None = None  # per slice: apical/mid/basal/beyond (None: blank); see slice_positions


POSITIONS = ("apical", "mid", "basal", "beyond")


def slice_positions(labels: np.ndarray, signal: np.ndarray) -> list[str | None]:
    """Position of every slice of a (z, y, x) labelmap: `apical`, `mid` or `basal` third of the slices
    holding LV cavity or myocardium (>= 20 pixels; the apex is the end whose third has the smaller mean
    LV area, so the file's slice order does not matter), `beyond` for slices with signal and no LV,
    None for blank slices. Without labels (`labels` None) the thirds of the slices with signal."""
    if labels is None:
        z = np.flatnonzero(signal)
        out: list[str | None] = [None] * len(signal)
        for name, part in zip(("apical", "mid", "basal"), np.array_split(z, 3)):
            for k in part:
                out[int(k)] = name
        return out
    lv_area = np.isin(labels, (2, 3)).reshape(len(labels), -1).sum(1)
    lv = np.flatnonzero(lv_area >= 20)
    out = [("beyond" if signal[z] else None) for z in range(len(labels))]
    if lv.size == 0:
        return out
    thirds = np.array_split(lv, 3)
    apex_first = bool(lv_area[thirds[0]].mean() <= lv_area[thirds[-1]].mean()) if thirds[-1].size else True
    for name, part in zip(("apical", "mid", "basal") if apex_first else ("basal", "mid", "apical"), thirds):
        for k in part:
            out[int(k)] = name
    return out


def load_acdc_volumes(cases: list[Case], show_progress: bool = True, positions: bool = False) -> list[Volume]:
    """Prepared ACDC volumes; `positions` also reads the labels for each slice's position."""
    from medsegrwkv.preprocess.pipeline import prepare_labels

    volumes = []
    for case in tqdm(cases, desc="load ACDC", unit="vol", disable=not show_progress):
        prepared = prepare_image(sitk.ReadImage(str(case.image), sitk.sitkFloat32))
        spacing = prepared.network_grid.GetSpacing()
        where = None
        if positions:
            labels = prepare_labels(sitk.ReadImage(str(case.label)), prepared)
            where = slice_positions(labels, _signal(prepared.array))
        volumes.append(Volume(case.name, case.patient, prepared.array, (spacing[1], spacing[0]), where))
    return volumes


def _signal(array: np.ndarray) -> np.ndarray:
    return np.ptp(array.reshape(len(array), -1), axis=1) > 0


def load_study_volumes(path: Path, name: str, phases: int = 4) -> list[Volume]:
    """`phases` evenly spaced phases of a study (file or DICOM folder) as training volumes."""
    from medsegrwkv.io import read_study

    study = read_study(path)
    picks = np.unique(np.linspace(0, len(study.phases) - 1, min(phases, len(study.phases))).round().astype(int))
    volumes = []
    for p in picks:
        prepared = prepare_image(study.phases[int(p)])
        spacing = prepared.network_grid.GetSpacing()
        volumes.append(Volume(f"{name}_phase{int(p):02d}", name, prepared.array, (spacing[1], spacing[0]),
                              slice_positions(None, _signal(prepared.array))))
    return volumes


def _augment(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """A random dihedral orientation; also says whether the axes were swapped."""
    if rng.random() < 0.5:
        x = x[::-1]
    if rng.random() < 0.5:
        x = x[:, ::-1]
    transposed = bool(rng.random() < 0.5)
    return np.ascontiguousarray(x.T if transposed else x), transposed


def _gamma(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.3:
        x = np.clip(x, 0.0, 1.0) ** rng.uniform(0.7, 1.5)
    return x.astype(np.float32)


def intensity_nuisance(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Receive-coil shading that is not an artefact (applied to the slice before any motion).

    Half the time a smooth multiplicative bias field exp(sum c_ij u^i v^j), i + j <= 3 (as
    TorchIO's RandomBiasField, coefficients uniform in +-0.3); 40 % of the time a surface-coil
    brightening 1 + g exp(-r^2 / 2 s^2) about a point near the image border (g 0.5-2.5, s 20-45 %
    of the field of view), the bright chest wall of phased-array coils. Both may occur together.
    """
    h, w = x.shape
    v, u = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    gain = np.ones_like(x, dtype=np.float32)
    if rng.random() < 0.5:
        field = np.zeros_like(gain)
        for i in range(4):
            for j in range(4 - i):
                if i + j:
                    field += rng.uniform(-0.3, 0.3) * u ** i * v ** j
        gain *= np.exp(field).astype(np.float32)
    if rng.random() < 0.4:
        angle = rng.uniform(0, 2 * np.pi)
        cy, cx = 0.9 * np.sin(angle), 0.9 * np.cos(angle)
        sigma = rng.uniform(0.4, 0.9)
        gain *= (1 + rng.uniform(0.5, 2.5) * np.exp(-((v - cy) ** 2 + (u - cx) ** 2) / (2 * sigma ** 2))).astype(
            np.float32)
    return (x * gain).astype(np.float32)


def acquisition_nuisance(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Clean-image differences between scanners that are not motion: 25 % a lower acquired resolution
    (k-space kept to 60-100 % per axis, zero-filled back), 30 % Gaussian noise (sigma up to 3 % of the
    99th percentile; magnitude images carry it as Rician noise)."""
    if rng.random() < 0.25:
        k = np.fft.fftshift(np.fft.fft2(x))
        h, w = x.shape
        fy, fx = rng.uniform(0.6, 1.0, 2)
        keep = np.zeros_like(k, dtype=bool)
        hy, hx = max(1, int(h * fy / 2)), max(1, int(w * fx / 2))
        keep[h // 2 - hy:h // 2 + hy, w // 2 - hx:w // 2 + hx] = True
        x = np.abs(np.fft.ifft2(np.fft.ifftshift(np.where(keep, k, 0)))).astype(np.float32)
    if rng.random() < 0.3:
        sigma = rng.uniform(0.0, 0.03) * max(float(np.percentile(x, 99)), 1e-6)
        x = np.hypot(x + rng.normal(0, sigma, x.shape), rng.normal(0, sigma, x.shape)).astype(np.float32)
    return x


def score_mask(scores: Sequence[int]) -> np.ndarray:
    """Boolean mask over scores 1..5: the label set a sample is compatible with."""
    mask = np.zeros(5, dtype=bool)
    for s in scores:
        mask[int(s) - 1] = True
    return mask


class SimulatedMotionSlices(Dataset):
    """Clean slices turned into graded samples on the fly (see the module docstring)."""

    def __init__(self, volumes: list[Volume], seed: int = 0, size: int = INPUT_SIZE, augment: bool = True,
                 min_foreground: float = 0.02, clean_fraction: float = 0.0, nuisance: bool = False) -> None:
        self.volumes = volumes
        self.items = [(v, z) for v, vol in enumerate(volumes) for z in range(vol.array.shape[0])
                      if (vol.array[z] > 0.05).mean() >= min_foreground]  # skip empty slices
        self.seed = seed
        self.size = size
        self.augment = augment
        self.clean_fraction = clean_fraction  # share of samples that are the clean slice, labelled 5
        self.nuisance = nuisance  # coil shading, resolution and noise on every sample (augment only)
        self.epoch = 0
        self.simulators = {vol.spacing: MotionSimulator(vol.spacing) for vol in volumes}

    def positions(self) -> list[str]:
        """Each item's slice position (`slice_positions`; `mid` where the volume has none)."""
        out = []
        for v, z in self.items:
            where = self.volumes[v].positions
            out.append((where[z] if where is not None else None) or "mid")
        return out

    def position_weights(self) -> np.ndarray:
        """Sampling weights that give every position (apical/mid/basal/beyond) the same share."""
        where = np.array(self.positions())
        counts = {p: int((where == p).sum()) for p in np.unique(where)}
        return np.array([1.0 / counts[p] for p in where]) / len(counts)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def make(self, index: int, rng: np.random.Generator, score: int | None = None) -> tuple[np.ndarray, int]:
        v, z = self.items[index]
        volume = self.volumes[v]
        clean = volume.array[z]
        exact_clean = score is None and self.clean_fraction > 0 and rng.random() < self.clean_fraction
        score = 5 if exact_clean else int(rng.integers(1, 6)) if score is None else score
        spacing = volume.spacing
        if self.augment:
            clean, transposed = _augment(clean, rng)
            spacing = spacing[::-1] if transposed else spacing
            if self.nuisance:
                clean = acquisition_nuisance(intensity_nuisance(clean, rng), rng)
        simulator = self.simulators.get(tuple(spacing)) or MotionSimulator(tuple(spacing))
        corrupted = clean if exact_clean else simulator.sample(clean, score, rng)[0]
        x = slice_to_input(corrupted, self.size)
        if self.augment:
            x = _gamma(x, rng)
        return x, score

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        x, score = self.make(index, rng)
        return {"image": torch.from_numpy(x[None]), "mask": torch.from_numpy(score_mask([score]))}


def simulated_validation_set(volumes: list[Volume], per_slice: int = 2, seed: int = 20240,
                             size: int = INPUT_SIZE, show_progress: bool = True) -> dict[str, Any]:
    """A fixed simulated set: every non-empty slice at `per_slice` scores (cycling 1-5), no augmentation."""
    dataset = SimulatedMotionSlices(volumes, seed=seed, size=size, augment=False)
    images, scores, patients = [], [], []
    total = len(dataset) * per_slice
    with tqdm(total=total, desc="simulate validation", unit="slice", disable=not show_progress) as bar:
        for i in range(len(dataset)):
            for j in range(per_slice):
                score = 5 - (i * per_slice + j) % 5
                rng = np.random.default_rng([seed, i, j])
                x, s = dataset.make(i, rng, score)
                images.append(x.astype(np.float16))
                scores.append(s)
                patients.append(volumes[dataset.items[i][0]].patient)
                bar.update(1)
    return {"images": torch.from_numpy(np.stack(images)[:, None]), "scores": np.array(scores),
            "patients": np.array(patients)}
