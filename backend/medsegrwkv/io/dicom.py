"""Reading a DICOM folder into cardiac phases.

A cine short-axis series holds one image per (slice position, cardiac phase): one file each in the
classic layout, or all of them as frames of one enhanced (multi-frame) file, as Philips and newer
Siemens scanners export. Stacking the images into one volume would interleave positions and
phases, so they are grouped by their position along the slice normal and ordered in time at each
position. Classic files are read phase by phase by SimpleITK (whose geometry then is the DICOM
geometry); the frames of enhanced files are placed by their per-frame functional groups.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
import SimpleITK as sitk

from ..errors import ErrorCode, MedSegError

log = logging.getLogger(__name__)

# Only these tags are parsed: a PACS export can hold thousands of files.
_TAGS = [
    "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Rows", "Columns",
    "ImagePositionPatient", "ImageOrientationPatient", "TriggerTime", "InstanceNumber",
    "NumberOfFrames", "SOPInstanceUID", "PixelSpacing",
]
POSITION_TOLERANCE_MM = 0.01  # files closer than this along the normal share a slice position


@dataclass(frozen=True, eq=False)
class _Header:
    path: Path
    series_uid: str
    series_number: str
    series_description: str
    size: tuple[int, int]
    position: np.ndarray | None
    orientation: np.ndarray | None
    trigger_time: float | None
    instance_number: int
    frames: int
    sop_uid: str
    frame: int = -1  # the image's frame in a multi-frame file; -1 for a single-frame file
    pixel_spacing: tuple[float, float] | None = None  # a classic file's (rows, columns) mm


class DicomCine(NamedTuple):
    """One DICOM series split into phases; `files[p][k]` is the file of phase p at slice k."""

    phases: list[sitk.Image]
    trigger_times: list[float] | None
    description: str
    files: list[list[Path]]


def _number(value: object, default: float | None = None) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


def _vector(value: object, length: int) -> np.ndarray | None:
    try:
        vector = np.array([float(v) for v in value], dtype=float)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return vector if vector.shape == (length,) and np.isfinite(vector).all() else None


def read_header(path: Path) -> _Header | None:
    """The header of a DICOM image file, or None for anything else (other files, DICOMDIR, reports)."""
    # Any file pydicom cannot parse (or whose values are malformed) is, for us, not a DICOM image.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # real exports are full of harmless VR complaints
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
            if "SeriesInstanceUID" not in ds or "Rows" not in ds or "Columns" not in ds:
                return None
            return _Header(
                path=path,
                series_uid=str(ds.SeriesInstanceUID),
                series_number=str(ds.get("SeriesNumber", "") or ""),
                series_description=str(ds.get("SeriesDescription", "") or "").strip(),
                size=(int(ds.Rows), int(ds.Columns)),
                position=_vector(ds.get("ImagePositionPatient"), 3),
                orientation=_vector(ds.get("ImageOrientationPatient"), 6),
                trigger_time=_number(ds.get("TriggerTime")),
                instance_number=int(_number(ds.get("InstanceNumber"), 0.0) or 0),
                frames=int(_number(ds.get("NumberOfFrames"), 1.0) or 1),
                sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
                pixel_spacing=_pixel_spacing(ds.get("PixelSpacing")),
            )
    except Exception:
        return None


def _pixel_spacing(value: object) -> tuple[float, float] | None:
    spacing = _vector(value, 2)
    return None if spacing is None else (round(float(spacing[0]), 4), round(float(spacing[1]), 4))


def _series_label(headers: list[_Header]) -> str:
    if len({h.series_uid for h in headers}) > 1:  # a stack stored a slice per series
        numbers = sorted({h.series_number or "?" for h in headers}, key=lambda n: (_number(n, np.inf), n))
        values = [_number(n) for n in numbers]
        consecutive = all(v is not None for v in values) and np.array_equal(np.diff(values), np.ones(len(values) - 1))
        return f"series {f'{numbers[0]}-{numbers[-1]}' if consecutive else ', '.join(numbers)} (a slice each)"
    head = headers[0]
    label = f"series {head.series_number or '?'}"
    return f"{label} '{head.series_description}'" if head.series_description else label


def _listing(groups: dict[str, list[_Header]]) -> str:
    return "; ".join(
        f"{_series_label(hs)} ({len(hs)} files, UID {uid})" for uid, hs in groups.items()
    )


def _normal(header: _Header) -> np.ndarray:
    """The slice normal of an image: the cross product of its row and column directions."""
    return np.cross(header.orientation[:3], header.orientation[3:])  # type: ignore[index]


def _one_slice(headers: list[_Header]) -> bool:
    """Whether a series of classic files holds a single slice position (a cine of one slice)."""
    if any(h.frames > 1 or h.position is None or h.orientation is None for h in headers):
        return False
    return len(_group_positions(headers, _normal(headers[0]))) == 1


def _split_stack(groups: dict[str, list[_Header]]) -> list[str]:
    """The series that together make one short-axis stack stored a slice per series, as scanners
    do when each slice is its own breath-hold: a slice position each, one orientation, image size,
    pixel size and phase count, and different positions. Empty when there is none, or several."""
    alike: dict[tuple, list[str]] = {}
    for uid, headers in groups.items():
        if _one_slice(headers):
            head = headers[0]
            key = (tuple(np.round(head.orientation, 3)), head.size, head.pixel_spacing, len(headers))  # type: ignore[arg-type]
            alike.setdefault(key, []).append(uid)
    stacks = []
    for uids in alike.values():
        heads = [groups[uid][0] for uid in uids]
        if len(uids) > 1 and len(_group_positions(heads, _normal(heads[0]))) == len(uids):
            stacks.append(uids)
    return stacks[0] if len(stacks) == 1 else []


def _choose_series(groups: dict[str, list[_Header]], series: str | None, folder: Path) -> list[_Header]:
    """The headers of the series to read: the only one, the ones `series` names (a number or UID, or
    several, comma-separated, for a stack stored a slice per series), or a folder that is one such stack."""
    if series is None:
        if len(groups) == 1:
            return next(iter(groups.values()))
        stack = _split_stack(groups)
        if len(stack) == len(groups):
            return [h for uid in stack for h in groups[uid]]
        numbers = [groups[uid][0].series_number for uid in stack]
        names = numbers if len(set(numbers)) == len(numbers) and all(numbers) else stack
        hint = (f" Series {', '.join(names)} hold a slice each of one short-axis stack; to read them as one, "
                f"give them together: --series {','.join(names)}.") if stack else ""
        raise MedSegError(
            f"The folder {folder} holds {len(groups)} DICOM series, choose one with --series "
            f"(series number or UID): {_listing(groups)}.{hint}", code=ErrorCode.BAD_INPUT
        )
    chosen: list[str] = []
    for name in [part.strip() for part in series.split(",") if part.strip()]:
        matches = [uid for uid, hs in groups.items() if name in (uid, hs[0].series_number)]
        if not matches:
            raise MedSegError(
                f"No DICOM series in {folder} matches '{name}'; the folder holds: {_listing(groups)}.",
                code=ErrorCode.BAD_INPUT
            )
        if len(matches) > 1:
            raise MedSegError(
                f"Several DICOM series in {folder} have series number {name}, choose one by its UID "
                f"with --series: {_listing({uid: groups[uid] for uid in matches})}.", code=ErrorCode.BAD_INPUT
            )
        if matches[0] in chosen:
            raise MedSegError(f"--series names series {name} twice.", code=ErrorCode.BAD_INPUT)
        chosen.append(matches[0])
    if not chosen:
        raise MedSegError("--series is empty; give a series number or UID.", code=ErrorCode.BAD_INPUT)
    several = next((uid for uid in chosen if not _one_slice(groups[uid])), None) if len(chosen) > 1 else None
    if several is not None:
        raise MedSegError(
            f"--series names {len(chosen)} series, but {_series_label(groups[several])} holds more than one "
            "slice position (or is an enhanced file); several series are read as one stack only when each holds "
            "one slice in single-frame files.",
            code=ErrorCode.BAD_INPUT
        )
    return [h for uid in chosen for h in groups[uid]]


def _group_positions(headers: list[_Header], normal: np.ndarray) -> list[list[_Header]]:
    """Files grouped by slice position, positions sorted along the normal (a right-handed stack)."""
    ordered = sorted(headers, key=lambda h: float(h.position @ normal))  # type: ignore[operator]
    groups: list[list[_Header]] = []
    last = -np.inf
    for h in ordered:
        offset = float(h.position @ normal)  # type: ignore[operator]
        if offset - last > POSITION_TOLERANCE_MM:
            groups.append([])
        groups[-1].append(h)
        last = offset
    return groups


def _pixel_digest(path: Path) -> str:
    try:
        return hashlib.sha256(pydicom.dcmread(path).PixelData).hexdigest()
    except Exception:  # unreadable pixels: never the same as another file's
        return f"unreadable {path}"


def _drop_duplicates(headers: list[_Header], what: str) -> list[_Header]:
    """One file per image: a folder exported twice (or merged from two exports) holds each image
    twice, which would double the phases. A file is a duplicate when an earlier one has its
    SOPInstanceUID, or its position, trigger time and pixels (pixels are read only for files that
    share a position and trigger time)."""
    kept: list[_Header] = []
    uids: set[str] = set()
    places: dict[tuple, list[Path]] = {}
    digests: dict[Path, str] = {}

    def digest(path: Path) -> str:
        if path not in digests:
            digests[path] = _pixel_digest(path)
        return digests[path]

    dropped: list[Path] = []
    for h in sorted(headers, key=lambda h: str(h.path)):
        place = places.setdefault((tuple(np.round(h.position / POSITION_TOLERANCE_MM)),  # type: ignore[operator]
                                   h.trigger_time), [])
        if (h.sop_uid and h.sop_uid in uids) or any(digest(other) == digest(h.path) for other in place):
            dropped.append(h.path)
            continue
        uids.add(h.sop_uid)
        place.append(h.path)
        kept.append(h)
    if dropped:
        log.warning("%s: ignored %d duplicate file(s) (the same image stored twice), e.g. %s.",
                    what, len(dropped), dropped[0])
    return kept


def _frame_value(ds: pydicom.Dataset, frame: int, sequence: str, keyword: str) -> object:
    """One attribute of one frame of an enhanced file: from the frame's own functional group, else
    from the shared one (None when neither has it)."""
    per_frame, shared = ds.get("PerFrameFunctionalGroupsSequence"), ds.get("SharedFunctionalGroupsSequence")
    own = per_frame[frame] if per_frame and frame < len(per_frame) else None
    for groups in (own, shared[0] if shared else None):
        if groups is not None and sequence in groups and len(groups[sequence].value):
            value = groups[sequence][0].get(keyword)
            if value is not None:
                return value
    return None


def _frame_time(ds: pydicom.Dataset, frame: int) -> tuple[float | None, int]:
    """(trigger time in ms, or None; temporal order) of one frame. Enhanced MR files give the time in
    the cardiac synchronisation group; files converted from classic ones keep the classic trigger
    time among their unassigned attributes; the temporal position index orders the rest."""
    time = _number(_frame_value(ds, frame, "CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime"))
    for keyword in ("NominalCardiacTriggerDelayTime", "TriggerTime"):
        if time is None:
            time = _number(_frame_value(ds, frame, "UnassignedPerFrameConvertedAttributesSequence", keyword))
    order = _number(_frame_value(ds, frame, "FrameContentSequence", "TemporalPositionIndex"), frame + 1.0)
    return time, int(order or 0)


class _Frames:
    """The frames of a series' enhanced files: a header per frame, and the phase images built
    from the decoded frames with their functional groups' spacing and rescaling."""

    def __init__(self, headers: list[_Header], what: str) -> None:
        self.what = what
        self.datasets: dict[Path, pydicom.Dataset] = {}
        self.headers: list[_Header] = []
        seen: set[str] = set()
        for h in headers:
            if h.sop_uid in seen:
                log.warning("%s: ignored %s, a second copy of an enhanced file.", what, h.path)
                continue
            seen.add(h.sop_uid)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(h.path)
            except Exception as exc:
                raise MedSegError(f"Cannot read the DICOM file {h.path} of {what}: the file is damaged.",
                                  code=ErrorCode.BAD_INPUT) from exc
            self.datasets[h.path] = ds
            for frame in range(h.frames):
                time, order = _frame_time(ds, frame)
                self.headers.append(_Header(
                    path=h.path, series_uid=h.series_uid, series_number=h.series_number,
                    series_description=h.series_description, size=h.size,
                    position=_vector(_frame_value(ds, frame, "PlanePositionSequence", "ImagePositionPatient"), 3),
                    orientation=_vector(_frame_value(ds, frame, "PlaneOrientationSequence",
                                                     "ImageOrientationPatient"), 6),
                    trigger_time=time, instance_number=order, frames=h.frames, sop_uid=f"{h.sop_uid}/{frame}",
                    frame=frame))
        self._pixels: dict[Path, np.ndarray] = {}

    def _frame(self, h: _Header) -> np.ndarray:
        ds = self.datasets[h.path]
        if h.path not in self._pixels:
            try:
                self._pixels[h.path] = ds.pixel_array.reshape(h.frames, *h.size)
            except Exception as exc:
                raise MedSegError(
                    f"Cannot decode the images of the DICOM file {h.path} of {self.what}: the file is "
                    "damaged or its encoding is not supported.", code=ErrorCode.BAD_INPUT) from exc
        slope = _number(_frame_value(ds, h.frame, "PixelValueTransformationSequence", "RescaleSlope"),
                        _number(ds.get("RescaleSlope"), 1.0))
        intercept = _number(_frame_value(ds, h.frame, "PixelValueTransformationSequence", "RescaleIntercept"),
                            _number(ds.get("RescaleIntercept"), 0.0))
        stored = self._pixels[h.path][h.frame]
        return stored if (slope, intercept) == (1.0, 0.0) else stored * np.float32(slope) + np.float32(intercept)

    def _pixel_spacing(self, h: _Header) -> tuple[float, float]:
        spacing = _vector(_frame_value(self.datasets[h.path], h.frame, "PixelMeasuresSequence", "PixelSpacing"), 2)
        if spacing is None or (spacing <= 0).any():
            raise MedSegError(f"The frames of the {self.what} do not give their pixel spacing.",
                              code=ErrorCode.BAD_INPUT)
        return float(spacing[1]), float(spacing[0])  # (x: between columns, y: between rows)

    def phase(self, frames: list[_Header], normal: np.ndarray, spacing_z: float) -> sitk.Image:
        """The frames of one phase, sorted along the normal, as one volume in patient space."""
        spacings = {self._pixel_spacing(h) for h in frames}
        if len(spacings) > 1:
            raise MedSegError(f"The frames of the {self.what} have different pixel spacings.",
                              code=ErrorCode.BAD_INPUT)
        array = np.stack([self._frame(h) for h in frames])
        image = sitk.GetImageFromArray(array.astype(np.float32) if array.dtype.kind == "f" else array)
        image.SetSpacing((*spacings.pop(), spacing_z))
        image.SetOrigin(tuple(float(v) for v in frames[0].position))  # type: ignore[union-attr]
        row, column = frames[0].orientation[:3], frames[0].orientation[3:]  # type: ignore[index]
        image.SetDirection(np.column_stack([row, column, normal]).ravel().tolist())
        return image


def _read_phase(paths: list[Path], spacing_z: float, what: str) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")  # applies RescaleSlope/Intercept
    reader.SetFileNames([str(p) for p in paths])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        bad = next((p for p in paths if not _readable(p)), paths[0])
        raise MedSegError(
            f"Cannot read the DICOM image {bad} of {what}: the file is damaged or its encoding is "
            "not supported.", code=ErrorCode.BAD_INPUT
        ) from exc
    # ITK derives the slice distance from the first and last file; set it from the header
    # positions so the result never depends on the ITK version.
    image.SetSpacing((*image.GetSpacing()[:2], spacing_z))
    return image


def _readable(path: Path) -> bool:
    try:
        sitk.ReadImage(str(path))
    except RuntimeError:
        return False
    return True


def read_dicom_folder(folder: Path, series: str | None = None) -> DicomCine:
    """Read one DICOM series found anywhere under `folder` (or one stack stored a slice per series,
    `_choose_series`), split into cardiac phases."""
    headers = [h for p in sorted(folder.rglob("*")) if p.is_file() and (h := read_header(p))]
    if not headers:
        raise MedSegError(f"The folder {folder} contains no DICOM images.", code=ErrorCode.BAD_INPUT)
    groups: dict[str, list[_Header]] = {}
    for h in sorted(headers, key=lambda h: (_number(h.series_number, np.inf), h.series_uid)):
        groups.setdefault(h.series_uid, []).append(h)
    headers = _choose_series(groups, series, folder)
    return _read_series(headers, f"DICOM {_series_label(headers)} in {folder}")


def read_multiframe_file(path: Path) -> DicomCine | None:
    """A single enhanced (multi-frame) DICOM file holds a whole series; None for any other file."""
    header = read_header(path)
    if header is None or header.frames < 2:
        return None
    return _read_series([header], f"DICOM {_series_label([header])} in {path}")


def _read_series(headers: list[_Header], what: str) -> DicomCine:
    frames: _Frames | None = None
    if any(h.frames > 1 for h in headers):
        if not all(h.frames > 1 for h in headers):
            raise MedSegError(f"The {what} mixes multi-frame (enhanced) and single-frame files; export it "
                              "in one of the two forms.", code=ErrorCode.BAD_INPUT)
        frames = _Frames(headers, what)
        headers = frames.headers
    unplaced = next((h for h in headers if h.position is None or h.orientation is None), None)
    if unplaced is not None:
        image = f"frame {unplaced.frame + 1} of the DICOM file" if frames else "DICOM file"
        raise MedSegError(
            f"The {image} {unplaced.path} has no image position or orientation, so the slices "
            f"of the {what} cannot be placed in space.", code=ErrorCode.BAD_INPUT
        )
    if frames is None:
        headers = _drop_duplicates(headers, what)
    orientation = headers[0].orientation
    if any(not np.allclose(h.orientation, orientation, atol=1e-3) for h in headers):
        raise MedSegError(f"The {what} mixes image orientations; a short-axis stack has one orientation.",
                          code=ErrorCode.BAD_INPUT)
    if len({h.size for h in headers}) > 1:
        raise MedSegError(
            f"The {what} mixes image sizes; all its images must have the same rows and columns.",
            code=ErrorCode.BAD_INPUT
        )
    if frames is None and len({h.pixel_spacing for h in headers}) > 1:
        raise MedSegError(f"The {what} mixes pixel sizes; all its images must have the same pixel spacing.",
                          code=ErrorCode.BAD_INPUT)

    normal = _normal(headers[0])
    positions = _group_positions(headers, normal)
    if len(positions) < 2:
        raise MedSegError(
            f"The {what} has a single slice position, so it is a 2D image; a short-axis stack (3D) "
            "or cine (4D) is needed.", code=ErrorCode.BAD_INPUT
        )
    counts = sorted({len(g) for g in positions})
    if len(counts) > 1:
        raise MedSegError(
            f"The slice positions of the {what} hold different numbers of images ({counts[0]} to "
            f"{counts[-1]}), so it cannot be split into cardiac phases; the series may be incomplete.",
            code=ErrorCode.BAD_INPUT
        )
    timed = all(h.trigger_time is not None for h in headers)
    for group in positions:
        group.sort(key=lambda h: (h.trigger_time if timed else 0.0, h.instance_number, h.path.name, h.frame))

    centres = np.array([np.mean([h.position for h in g], axis=0) for g in positions])
    spacing_z = float(np.linalg.norm(centres[-1] - centres[0]) / (len(centres) - 1))
    gaps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    if np.abs(gaps - spacing_z).max() > 0.01 * spacing_z:
        log.warning(
            "%s: slice gaps range from %.2f to %.2f mm; using their mean %.2f mm (a slice may be missing).",
            what, gaps.min(), gaps.max(), spacing_z,
        )

    n_phases = counts[0]
    files = [[g[p].path for g in positions] for p in range(n_phases)]
    phases = ([frames.phase([g[p] for g in positions], normal, spacing_z) for p in range(n_phases)]
              if frames else [_read_phase(f, spacing_z, what) for f in files])
    trigger_times = (
        [float(np.mean([g[p].trigger_time for g in positions])) for p in range(n_phases)] if timed else None
    )
    kind = "DICOM cine" if n_phases > 1 else "DICOM"
    shape = f"{len(positions)} slices x {n_phases} phases" if n_phases > 1 else f"{len(positions)} slices"
    return DicomCine(phases, trigger_times, f"{kind} {_series_label(headers)} ({shape})", files)


def is_multiframe_dicom(path: Path) -> bool:
    """Whether `path` is an enhanced (multi-frame) DICOM file, which holds a whole series."""
    header = read_header(path)
    return header is not None and header.frames > 1


def is_dicom_file(path: Path) -> bool:
    """Whether `path` is a DICOM image, to tell a user who passed one file to pass its folder."""
    return read_header(path) is not None


def _body_value(value: object, low: float, high: float) -> float | None:
    number = _number(value)
    return number if number is not None and np.isfinite(number) and low <= number <= high else None


def patient_size_weight(files: list[Path] | list[list[Path]]) -> tuple[float | None, float | None]:
    """Height (cm, from PatientSize in metres) and weight (kg, from PatientWeight) of a DICOM study.

    The first file that gives a plausible value wins; a missing, empty, garbled or implausible
    value (height outside 0.3-2.5 m, weight outside 1-400 kg) is None, never an error.
    """
    flat = [f for item in files for f in (item if isinstance(item, (list, tuple)) else [item])]
    height = weight = None
    for path in flat[:16]:  # one study has one patient; a few files suffice when the first are sparse
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientSize", "PatientWeight"])
        except Exception:
            continue
        metres = _body_value(ds.get("PatientSize"), 0.3, 2.5)
        if height is None and metres is not None:
            height = round(100.0 * metres, 2)
        if weight is None:
            weight = _body_value(ds.get("PatientWeight"), 1.0, 400.0)
        if height is not None and weight is not None:
            break
    return height, weight
