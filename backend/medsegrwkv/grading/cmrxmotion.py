"""Real graded data in the CMRxMotion layout, so a site can fine-tune the grader on real motion.

Layout (as the CMRxMotion challenge releases it): a folder of NIfTI volumes, e.g.
`data/P001-1/P001-1-ED.nii.gz` (segmentations `...-label.nii.gz` are ignored here), and a CSV of
image-quality labels, `IQA.csv`, one row per volume (`Image,Label`: P001-1-ED,1) or per slice
(with a `slice` column, 0-based along the volume's slice axis).

Label conventions, mapped explicitly (docs/design.md §4):
- quality: CMRxMotion's IQA labels are 3 levels, 1 mild, 2 intermediate, 3 severe; they are the
  Likert scores {4, 5}, {3} and {1, 2}, and train the 5-score grader with a set-valued loss
  (-log P(score in the set)). A CSV on the 5-point scale (5 excellent ... 1 non-diagnostic)
  gives exact scores. `scale="auto"` takes the 5-point scale when a label column is called
  score/likert or any label exceeds 3, else CMRxMotion's 3 levels; pass the scale to be sure.
- segmentation: CMRxMotion 1 LV, 2 MYO, 3 RV is ACDC 3 LV cavity, 2 LV myocardium, 1 RV cavity
  (`map_segmentation_labels`).
A volume-level label is given to every slice of the volume: a coarse label (the worst slice
sets a volume's grade), acceptable for fine-tuning, not for evaluating slice grades.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.data import Dataset

from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.grading.dataset import INPUT_SIZE, _augment, _gamma, score_mask, slice_to_input
from medsegrwkv.preprocess import prepare_image

CMRX_TO_ACDC_LABELS = {0: 0, 1: 3, 2: 2, 3: 1}
CMRX_LEVEL_SCORES = {1: (4, 5), 2: (3,), 3: (1, 2)}  # 1 mild, 2 intermediate, 3 severe
SCALES = ("auto", "likert5", "cmrxmotion3")
_NAME_COLUMNS = ("image", "name", "case", "volume", "file", "filename", "id")
_LABEL_COLUMNS = ("label", "score", "likert", "grade", "quality", "level", "iqa")


@dataclass(frozen=True)
class GradedVolume:
    name: str  # e.g. P001-1-ED
    patient: str  # e.g. P001
    image: Path
    slices: dict[int | None, tuple[int, ...]]  # slice (None: the whole volume) -> allowed Likert scores


def map_segmentation_labels(labels: np.ndarray) -> np.ndarray:
    """CMRxMotion labels (1 LV, 2 MYO, 3 RV) to the ACDC convention used here (3, 2, 1)."""
    array = np.asarray(labels)
    unknown = np.setdiff1d(np.unique(array), list(CMRX_TO_ACDC_LABELS))
    if unknown.size:
        raise MedSegError(f"CMRxMotion labelmaps hold 0-3 only, found {unknown.tolist()}.", code=ErrorCode.BAD_LABELS)
    lut = np.zeros(4, dtype=np.uint8)
    for source, target in CMRX_TO_ACDC_LABELS.items():
        lut[source] = target
    return lut[array.astype(np.int64)]


def _strip(name: str) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", Path(name.strip()).name, flags=re.IGNORECASE)


def _column(header: list[str], candidates: tuple[str, ...], fallback: int) -> int:
    lower = [h.strip().lower() for h in header]
    for c in candidates:
        if c in lower:
            return lower.index(c)
    return fallback


def read_quality_csv(path: Path, scale: str = "auto") -> tuple[list[tuple[str, int | None, int]], str]:
    """Rows (volume name, slice or None, label) and the scale they are on."""
    if scale not in SCALES:
        raise MedSegError(f"Unknown label scale '{scale}'; choose one of {', '.join(SCALES)}.", code=ErrorCode.BAD_DATA)
    try:
        with open(path, newline="") as f:
            table = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError) as exc:
        raise MedSegError(f"Cannot read the quality labels {path} ({exc}).", code=ErrorCode.BAD_DATA) from exc
    if len(table) < 2:
        raise MedSegError(f"{path} has no label rows (a header row and one row per volume or slice are needed).",
                          code=ErrorCode.BAD_DATA)
    header, rows = table[0], table[1:]
    name_col = _column(header, _NAME_COLUMNS, 0)
    label_col = _column(header, _LABEL_COLUMNS, len(header) - 1)
    lower = [h.strip().lower() for h in header]
    slice_col = lower.index("slice") if "slice" in lower else None
    parsed = []
    for n, row in enumerate(rows, start=2):
        try:
            label = int(float(row[label_col]))
            z = int(row[slice_col]) if slice_col is not None else None
        except (ValueError, IndexError) as exc:
            raise MedSegError(f"{path}, line {n}: the label or slice is not a number.",
                              code=ErrorCode.BAD_DATA) from exc
        parsed.append((_strip(row[name_col]), z, label))
    labels = {p[2] for p in parsed}
    if scale == "auto":
        named_score = lower[label_col] in ("score", "likert")
        scale = "likert5" if named_score or max(labels) > 3 else "cmrxmotion3"
    allowed = range(1, 6) if scale == "likert5" else range(1, 4)
    bad = sorted(labels - set(allowed))
    if bad:
        raise MedSegError(f"{path} holds labels {bad} outside the {scale} scale "
                          f"({min(allowed)}-{max(allowed)}).", code=ErrorCode.BAD_DATA)
    return parsed, scale


def load_cmrxmotion(root: str | Path, labels_csv: str | Path | None = None, scale: str = "auto") -> list[GradedVolume]:
    """The graded volumes of a CMRxMotion-layout folder (labels from `labels_csv`, default the one
    CSV in `root`, IQA.csv preferred)."""
    base = Path(root)
    if not base.is_dir():
        raise MedSegError(f"The CMRxMotion folder {base} does not exist.", code=ErrorCode.BAD_DATA)
    if labels_csv is None:
        found = sorted(base.rglob("IQA.csv")) or sorted(base.rglob("*.csv"))
        if len(found) != 1:
            what = "no CSV" if not found else f"{len(found)} CSV files"
            raise MedSegError(f"{base} holds {what}; name the quality-label CSV explicitly.", code=ErrorCode.BAD_DATA)
        labels_csv = found[0]
    rows, scale = read_quality_csv(Path(labels_csv), scale)
    images = {}
    for path in base.rglob("*.nii*"):
        name = _strip(path.name)
        if not name.lower().endswith("-label") and not name.lower().endswith("_gt"):
            images[name] = path
    volumes: dict[str, dict[int | None, tuple[int, ...]]] = {}
    for name, z, label in rows:
        if name not in images:
            raise MedSegError(f"The label CSV names '{name}', but no {name}.nii.gz exists under {base}.",
                              code=ErrorCode.BAD_DATA)
        scores = (label,) if scale == "likert5" else CMRX_LEVEL_SCORES[label]
        volumes.setdefault(name, {})[z] = scores
    return [GradedVolume(name, name.split("-")[0], images[name], slices) for name, slices in sorted(volumes.items())]


class CMRxMotionSlices(Dataset):
    """Real graded slices (no simulation): the grader input rule, dihedral and gamma augmentation."""

    def __init__(self, volumes: list[GradedVolume], seed: int = 0, size: int = INPUT_SIZE,
                 augment: bool = True) -> None:
        self.arrays = []
        self.items: list[tuple[int, int, tuple[int, ...]]] = []
        for v, volume in enumerate(volumes):
            try:
                image = sitk.ReadImage(str(volume.image), sitk.sitkFloat32)
            except RuntimeError as exc:
                raise MedSegError(f"Cannot read {volume.image}: it is damaged or not a NIfTI file.",
                                  code=ErrorCode.BAD_INPUT) from exc
            if image.GetDimension() != 3:
                raise MedSegError(f"{volume.image} is {image.GetDimension()}D; CMRxMotion volumes are 3D stacks.",
                                  code=ErrorCode.BAD_INPUT)
            array = prepare_image(image).array
            self.arrays.append(array)
            for z, scores in volume.slices.items():
                if z is None:
                    self.items += [(v, k, scores) for k in range(array.shape[0])]
                elif not 0 <= z < array.shape[0]:
                    raise MedSegError(f"Slice {z} of {volume.name} does not exist ({array.shape[0]} slices).",
                                      code=ErrorCode.BAD_DATA)
                else:
                    self.items.append((v, z, scores))
        self.seed, self.size, self.augment, self.epoch = seed, size, augment, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        v, z, scores = self.items[index]
        rng = np.random.default_rng([self.seed, self.epoch, index, 7])
        x = self.arrays[v][z]
        if self.augment:
            x, _ = _augment(x, rng)
        x = slice_to_input(x, self.size)
        if self.augment:
            x = _gamma(x, rng)
        return {"image": torch.from_numpy(x[None]), "mask": torch.from_numpy(score_mask(scores))}


# -- evaluation in the challenge's form ----------------------------------------------------------
BEST_PUBLISHED = {"accuracy": 0.725, "kappa": 0.631,
                  "source": "best CMRxMotion 2022 task 1 test results (3 levels, per volume)"}


def volume_level(scores: tuple[int, ...]) -> int:
    """CMRxMotion level (1 mild, 2 intermediate, 3 severe) of a label's Likert score set: its worst score."""
    worst = min(scores)
    return 1 if worst >= 4 else 2 if worst == 3 else 3


def evaluate_cmrxmotion(root: str | Path, model: str | None = None, device: str = "cpu", lv_detection: bool = True,
                        labels_csv: str | Path | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Grade every labelled volume of a CMRxMotion-layout folder and score the per-volume levels as the
    challenge does: accuracy and Cohen's kappa (unweighted, and linear-weighted) on the 3 levels.

    A volume's true level is its label (per-slice labels: the worst); its predicted level is
    `grade`'s per-volume level (`grade.VOLUME_RULE`: the worst graded slice through the LV, or
    through the whole volume with `lv_detection=False`).
    """
    from tqdm import tqdm

    from medsegrwkv.grading.grade import Grader, grade_study
    from medsegrwkv.grading.metrics import cohen_kappa

    volumes = load_cmrxmotion(root, labels_csv)
    grader = Grader.from_pretrained(model, device)
    rows = []
    for volume in tqdm(volumes, desc="grade volumes", unit="vol", disable=not show_progress):
        truth = max(volume_level(scores) for scores in volume.slices.values())
        report = grade_study(volume.image, grader=grader, lv_detection=lv_detection)
        v = report["volumes"][0]
        rows.append({"Image": volume.name, "Label": truth, "Predicted": v["cmrxmotion_level"],
                     "worst_score": v["score"], "worst_index": v["worst_index"],
                     "graded_lv_slices": v["graded_lv_slices"]})
    graded = [r for r in rows if r["Predicted"] is not None]
    truth = [r["Label"] for r in graded]
    pred = [r["Predicted"] for r in graded]
    metrics = {
        "volumes": len(rows), "graded_volumes": len(graded),
        "accuracy": float(np.mean([t == p for t, p in zip(truth, pred)])) if graded else float("nan"),
        "kappa": cohen_kappa(truth, pred, (1, 2, 3)),
        "kappa_linear": cohen_kappa(truth, pred, (1, 2, 3), "linear"),
        "confusion": [[sum(1 for t, p in zip(truth, pred) if t == a and p == b) for b in (1, 2, 3)] for a in (1, 2, 3)],
    }
    return {"model": grader.manifest.get("name"), "folder": str(root), "lv_detection": lv_detection,
            "rule": "predicted level = the worst graded slice of the volume" + (" through the LV" if lv_detection
                                                                                else ""),
            "metrics": metrics, "best_published": BEST_PUBLISHED, "volumes": rows}
