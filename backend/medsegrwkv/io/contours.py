"""Sunnybrook expert contours as reference labelmaps, for evaluating on real scanner DICOM.

Each contour file names the DICOM image it was drawn on (IM-0001-NNNN -> NNNN.dcm). That image is
located in the Study built by read_study through `Study.files`, so the reference lands in exactly
the phase volume, slice and geometry the segmentation is computed on.

The files give points in half-pixel steps; the data set does not say where a pixel's centre lies
in them. Read as pixel centres at integers, the expert's lines sit up and left of what the image
shows (measured on the real study, session 20): four networks that are unbiased on ACDC (LV
centroid within 0.05 px) match them best with the lines moved by -0.5 to -0.75 px in y and -0.5
to -1.25 px in x, and a fit of one translation between the lines and the steepest intensity
edge along their normals (a measure that underestimates a shift by about half) gives -0.45 / -0.41
px (x / y, endocardium, 1609 points) and -0.42 / -0.36 px (epicardium). Of the two usual
conventions, pixel corners at integers (pixel (c, r) the square [c, c + 1) x [r, r + 1), a
drawing tool's) and one-based pixel centres (MATLAB's), the first fits best (each network's
myocardium Dice is 0.6-1.1 points higher than under the second), so `Contour.index_points` removes
half a pixel; about half a pixel in x stays unexplained (docs/medsegrwkv.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk

from ..errors import ErrorCode, MedSegError
from .volumes import Study

_NAME = re.compile(r"IM-\d+-(\d+)-([io])contour-manual\.txt", re.IGNORECASE)
ENDOCARDIUM, EPICARDIUM = "i", "o"
LV_MYOCARDIUM, LV_CAVITY = 2, 3  # ACDC labels (docs/design.md §4)
PIXEL_CENTRE = 0.5  # where a pixel's centre lies in the contour files' coordinates (module docstring)


@dataclass(frozen=True, eq=False)
class Contour:
    """One expert contour: `points` are (x, y) = (column, row) image coordinates of `dicom_file`
    as the file gives them, pixel corners at integers (module docstring)."""

    image_number: int
    kind: str  # 'i' endocardium, 'o' epicardium
    points: np.ndarray  # (N, 2) float
    dicom_file: Path

    @property
    def index_points(self) -> np.ndarray:
        """The points in voxel-index coordinates (pixel centres at integers), as `contour_mask` takes them."""
        return self.points - PIXEL_CENTRE


class PhaseReference(NamedTuple):
    """The reference of one phase; only `slices` are contoured, so only they are comparable."""

    labelmap: sitk.Image  # uint8, the phase volume's geometry
    slices: list[int]

    @property
    def labels(self) -> tuple[int, ...]:
        """Referenced labels: (2, 3) where epicardium is drawn (ED), (3,) for endocardium only (ES)."""
        return tuple(int(v) for v in np.unique(sitk.GetArrayViewFromImage(self.labelmap)) if v)


def _read_points(path: Path) -> np.ndarray:
    try:
        points = np.loadtxt(path, dtype=float, ndmin=2)
    except ValueError as exc:
        raise MedSegError(
            f"{path} is not a valid contour file: each line must hold two numbers, x and y.", code=ErrorCode.BAD_INPUT
        ) from exc
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3 or not np.isfinite(points).all():
        raise MedSegError(
            f"{path} is not a valid contour file: it needs at least 3 points of two numbers, x and y.",
            code=ErrorCode.BAD_INPUT
        )
    return points


def read_sunnybrook_contours(contour_dir: str | Path, dicom_dir: str | Path) -> list[Contour]:
    """All endo- and epicardial contours under `contour_dir` (papillary-muscle contours are skipped)."""
    contour_dir, dicom_dir = Path(contour_dir), Path(dicom_dir)
    if not contour_dir.is_dir():
        raise MedSegError(f"The contour folder {contour_dir} does not exist.", code=ErrorCode.BAD_INPUT)
    contours = []
    for path in sorted(contour_dir.rglob("*.txt")):
        match = _NAME.fullmatch(path.name)
        if match is None:
            continue
        number = int(match[1])
        dicom_file = dicom_dir / f"{number}.dcm"
        if not dicom_file.is_file():
            raise MedSegError(f"The contour file {path} was drawn on {dicom_file}, which does not exist.",
                              code=ErrorCode.BAD_INPUT)
        contours.append(Contour(number, match[2].lower(), _read_points(path), dicom_file))
    if not contours:
        raise MedSegError(
            f"The folder {contour_dir} contains no Sunnybrook contour files "
            "(IM-0001-NNNN-icontour-manual.txt).", code=ErrorCode.BAD_INPUT
        )
    return sorted(contours, key=lambda c: (c.image_number, c.kind))


def contour_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels (rows, cols) whose centre lies inside the polygon, given in voxel-index coordinates
    (pixel centres at integers; `Contour.index_points`), by the even-odd rule, so that the mask
    area matches the polygon area instead of growing by the outline as a line rasteriser would."""
    mask = np.zeros(shape, dtype=bool)
    x, y = points[:, 0], points[:, 1]
    rows = np.arange(max(0, int(np.floor(y.min()))), min(shape[0], int(np.ceil(y.max())) + 1))
    cols = np.arange(max(0, int(np.floor(x.min()))), min(shape[1], int(np.ceil(x.max())) + 1))
    if rows.size == 0 or cols.size == 0:
        return mask
    x2, y2 = np.roll(x, -1), np.roll(y, -1)
    yy = rows[:, None, None].astype(float)
    crosses = (y > yy) != (y2 > yy)  # (rows, 1, edges)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x + (yy - y) * (x2 - x) / (y2 - y)
    inside = np.count_nonzero(crosses & (cols[None, :, None] < x_cross), axis=-1) % 2 == 1
    mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = inside
    return mask


def sunnybrook_reference(
    study: Study, contour_dir: str | Path, dicom_dir: str | Path
) -> dict[int, PhaseReference]:
    """Reference labelmaps per contoured phase: 3 inside the endocardium, 2 between it and the
    epicardium, 0 elsewhere. A phase with epicardial contours lists only slices that have both
    contours; a phase with endocardium only (ES in Sunnybrook) references label 3 alone."""
    if study.files is None:
        raise MedSegError(
            f"Sunnybrook contours need the study read from its DICOM folder, not {study.source}.",
            code=ErrorCode.BAD_INPUT
        )
    where = {f.resolve(): (p, k) for p, files in enumerate(study.files) for k, f in enumerate(files)}
    masks: dict[int, dict[int, dict[str, np.ndarray]]] = {}
    for contour in read_sunnybrook_contours(contour_dir, dicom_dir):
        location = where.get(contour.dicom_file.resolve())
        if location is None:
            raise MedSegError(
                f"The contoured image {contour.dicom_file} is not part of the study {study.source}.",
                code=ErrorCode.BAD_INPUT
            )
        phase, k = location
        columns, rows = study.phases[phase].GetSize()[:2]
        mask = contour_mask(contour.index_points, (rows, columns))
        if not mask.any():
            raise MedSegError(f"The {contour.kind}-contour of {contour.dicom_file} lies outside the image.",
                              code=ErrorCode.BAD_INPUT)
        slice_masks = masks.setdefault(phase, {}).setdefault(k, {})
        slice_masks[contour.kind] = slice_masks.get(contour.kind, False) | mask

    references = {}
    for phase, by_slice in sorted(masks.items()):
        with_epicardium = any(EPICARDIUM in m for m in by_slice.values())
        needed = {ENDOCARDIUM, EPICARDIUM} if with_epicardium else {ENDOCARDIUM}
        slices = sorted(k for k, m in by_slice.items() if needed <= m.keys())
        if not slices:
            continue
        labels = np.zeros(sitk.GetArrayViewFromImage(study.phases[phase]).shape, dtype=np.uint8)
        for k in slices:
            if EPICARDIUM in needed:
                labels[k][by_slice[k][EPICARDIUM]] = LV_MYOCARDIUM
            labels[k][by_slice[k][ENDOCARDIUM]] = LV_CAVITY
        labelmap = sitk.GetImageFromArray(labels)
        labelmap.CopyInformation(study.phases[phase])
        references[phase] = PhaseReference(labelmap, slices)
    return references
