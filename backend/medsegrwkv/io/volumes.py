"""Reading studies (volume files or DICOM folders) as cardiac phases, and writing results atomically.

Every later stage works on one 3D phase at a time, so a study is always a list of 3D images with
full geometry; labelmaps are written back in that geometry (docs/design.md §4). Every failure the user
can cause becomes a MedSegError, and a failed write leaves nothing behind.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..errors import ErrorCode, MedSegError
from .atomic import IncompleteWrite, write_atomic, write_error
from .dicom import DicomCine, is_dicom_file, read_dicom_folder, read_multiframe_file

SUPPORTED_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
_FORMATS = {
    ".nii": "NIfTI", ".nii.gz": "NIfTI", ".nrrd": "NRRD", ".nhdr": "NRRD", ".mha": "MetaImage", ".mhd": "MetaImage"
}
_FLOAT_TYPES = {sitk.sitkFloat32, sitk.sitkFloat64}
# nibabel prints the header repairs it makes (e.g. a 0 voxel size set to 1); _nifti_problem says what matters.
nib.imageglobals.logger.setLevel(logging.ERROR)


@dataclass
class Study:
    """A short-axis study as a list of 3D cardiac phases."""

    source: Path
    phases: list[sitk.Image]  # 3D scalar images with full geometry, one per cardiac phase
    trigger_times: list[float] | None  # ms per phase (mean DICOM TriggerTime), None when unknown
    description: str  # one line for logs
    files: list[list[Path]] | None = None  # DICOM only: files[p][k] is phase p's file at slice k


def volume_suffix(path: str | Path) -> str | None:
    """The supported volume suffix `path` ends with (case-insensitive), or None."""
    name = Path(path).name.lower()
    return next((s for s in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def _check_voxels(image: sitk.Image, source: Path) -> None:
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise MedSegError(
            f"{source} has {components} values per voxel (e.g. colour or vector data); a grey-value "
            "image is needed.", code=ErrorCode.BAD_INPUT
        )
    if image.GetPixelID() in _FLOAT_TYPES:
        bad = int(np.count_nonzero(~np.isfinite(sitk.GetArrayViewFromImage(image))))
        if bad:
            raise MedSegError(f"{source} contains {bad} voxels that are NaN or infinite.", code=ErrorCode.BAD_INPUT)


def _split_4d(image: sitk.Image, source: Path) -> list[sitk.Image]:
    """One 3D image per time point, each keeping the spatial part of the 4D geometry."""
    array = sitk.GetArrayViewFromImage(image)  # (t, z, y, x)
    direction = np.array(image.GetDirection()).reshape(4, 4)[:3, :3]
    phases = []
    for t in range(array.shape[0]):
        phase = sitk.GetImageFromArray(array[t])  # copies, so the 4D image can be freed
        phase.SetSpacing(image.GetSpacing()[:3])
        phase.SetOrigin(image.GetOrigin()[:3])
        try:
            phase.SetDirection(direction.ravel().tolist())
        except RuntimeError as exc:
            raise MedSegError(f"{source} has a degenerate spatial orientation in its 4D header.",
                              code=ErrorCode.BAD_INPUT) from exc
        phases.append(phase)
    return phases


def _nifti_problem(path: Path) -> str | None:
    """What ITK's NIfTI reader hides: it zero-fills a truncated file and reads NaN voxels as 0.
    nibabel reads the raw data again, so both are caught before they reach the network.
    ITK also reads a voxel size of 0 (or a non-finite one) as 1 mm, which would make every volume
    wrong, so such a header is refused."""
    try:
        nifti = nib.load(str(path))
        data = np.asanyarray(nifti.dataobj)
        with nib.openers.ImageOpener(str(path)) as raw:  # nib.load already replaced a 0 voxel size by 1
            header = type(nifti.header).from_fileobj(raw, check=False)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError):
        return "the file is truncated or damaged"
    pixdim = np.asarray(header["pixdim"][1:1 + min(3, data.ndim)], dtype=float)
    if not (np.isfinite(pixdim).all() and (pixdim != 0).all()):
        return f"its header gives the voxel size {tuple(float(v) for v in pixdim)} mm, which cannot be right"
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            return f"it contains {bad} voxels that are NaN or infinite"
    return None


def _dicom_study(path: Path, cine: DicomCine) -> Study:
    for image in cine.phases:
        _check_voxels(image, path)
    return Study(path, cine.phases, cine.trigger_times, cine.description, cine.files)


def _read_file(path: Path) -> Study:
    suffix = volume_suffix(path)
    if suffix is None:
        cine = read_multiframe_file(path)
        if cine is not None:
            return _dicom_study(path, cine)
        if is_dicom_file(path):
            raise MedSegError(
                f"{path} is a single DICOM image (2D); pass the folder that holds the whole series.",
                code=ErrorCode.BAD_INPUT
            )
        raise MedSegError(
            f"{path} is not a supported file type; use NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), "
            "MetaImage (.mha, .mhd) or a DICOM folder.", code=ErrorCode.BAD_INPUT
        )
    fmt = _FORMATS[suffix]
    problem = _nifti_problem(path) if fmt == "NIfTI" else None  # first: ITK's C library prints what it fixes
    if problem:
        raise MedSegError(f"Cannot read {path}: {problem}.", code=ErrorCode.BAD_INPUT)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise MedSegError(f"Cannot read {path}: it is damaged, truncated or not a valid {fmt} file.",
                          code=ErrorCode.BAD_INPUT) from exc
    _check_voxels(image, path)
    size = "x".join(str(n) for n in image.GetSize()[:3])
    dim = image.GetDimension()
    if dim == 3:
        return Study(path, [image], None, f"{fmt} volume '{path.name}' ({size})")
    if dim == 4:
        phases = _split_4d(image, path)
        return Study(path, phases, None, f"{fmt} cine '{path.name}' ({size} x {len(phases)} phases)")
    if dim == 2:
        raise MedSegError(f"{path} is a 2D image; a short-axis stack (3D) or cine (4D) is needed.",
                          code=ErrorCode.BAD_INPUT)
    raise MedSegError(f"{path} has {dim} dimensions; a short-axis stack (3D) or cine (4D) is needed.",
                      code=ErrorCode.BAD_INPUT)


def read_study(path: str | Path, series: str | None = None) -> Study:
    """Read a NIfTI/NRRD/MetaImage file or a DICOM folder; `series` picks a series in a folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MedSegError(f"{path} does not exist.", code=ErrorCode.BAD_INPUT)
    if path.is_dir():
        return _dicom_study(path, read_dicom_folder(path, series))
    if series is not None:
        raise MedSegError(f"--series only applies to DICOM folders, but {path} is a file.", code=ErrorCode.BAD_INPUT)
    return _read_file(path)


def geometry_difference(a: sitk.Image, b: sitk.Image) -> str | None:
    """How `b`'s geometry differs from `a`'s (size, spacing, origin, direction), or None when it matches."""
    if a.GetDimension() != b.GetDimension():
        return f"{b.GetDimension()}D against {a.GetDimension()}D"
    if a.GetSize() != b.GetSize():
        return f"size {b.GetSize()} against {a.GetSize()}"
    sa, sb = np.array(a.GetSpacing()), np.array(b.GetSpacing())
    if not np.allclose(sa, sb, rtol=1e-4, atol=1e-6):
        return f"spacing {tuple(round(float(v), 4) for v in sb)} mm against {tuple(round(float(v), 4) for v in sa)} mm"
    tolerance = 1e-3 * float(sa.min())
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=max(tolerance, 1e-4)):
        return (f"origin {tuple(round(float(v), 2) for v in b.GetOrigin())} mm against "
                f"{tuple(round(float(v), 2) for v in a.GetOrigin())} mm")
    if not np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-4):
        return "a different orientation (direction matrix)"
    return None


def read_phase_files(paths: list[str | Path]) -> Study:
    """A cine given as one 3D file per phase, in phase order (as the Slicer module sends a sequence);
    every phase must share the first one's voxel grid."""
    if not paths:
        raise MedSegError("No phase files were given.", code=ErrorCode.BAD_INPUT)
    phases = []
    for n, path in enumerate(paths):
        study = read_study(path)
        if len(study.phases) != 1:
            raise MedSegError(f"{path} holds {len(study.phases)} phases; give one 3D volume per phase.",
                              code=ErrorCode.BAD_INPUT)
        difference = geometry_difference(phases[0], study.phases[0]) if phases else None
        if difference is not None:
            raise MedSegError(f"Phase {n} ({path}) has a different geometry from phase 0: {difference}; all phases "
                              "of a cine must share one voxel grid.", code=ErrorCode.BAD_INPUT)
        phases.append(study.phases[0])
    first = Path(paths[0])
    size = "x".join(str(n) for n in phases[0].GetSize())
    return Study(first.parent, phases, None, f"cine of {len(phases)} phase files ({size}), first '{first.name}'")


def select_phases(study: Study, phase: int | None) -> list[int]:
    """The phase indices to process: all of them, or the one the user asked for."""
    count = len(study.phases)
    if phase is None:
        return list(range(count))
    if not 0 <= phase < count:
        raise MedSegError(
            f"Phase {phase} does not exist: {study.source} has {count} phase(s), numbered 0 to {count - 1}.",
            code=ErrorCode.BAD_INPUT
        )
    return [phase]


def write_image_atomic(image: sitk.Image, path: str | Path) -> None:
    """Write `image` so that `path` is either the complete new file or untouched.

    SimpleITK picks the writer by suffix and .mhd/.nhdr write a separate data file named in the
    header, so the image is written under its final name into a temporary folder beside `path`;
    it is read back (NIfTI also through nibabel, which notices a short file that ITK zero-fills)
    and compared voxel for voxel before it is moved into place (medsegrwkv.io.atomic).
    """
    path = Path(path).expanduser()
    if volume_suffix(path) is None and not path.is_dir():
        raise write_error(path, f"the name must end in one of {', '.join(SUPPORTED_SUFFIXES)}")

    def verify(tmp: Path) -> None:
        problem = _nifti_problem(tmp) if _FORMATS[volume_suffix(tmp) or ""] == "NIfTI" else None
        if problem:
            raise IncompleteWrite(problem)
        back = sitk.ReadImage(str(tmp))
        if back.GetSize() != image.GetSize() or not np.array_equal(sitk.GetArrayViewFromImage(back),
                                                                   sitk.GetArrayViewFromImage(image)):
            raise IncompleteWrite(f"{tmp} does not hold the image that was written")

    write_atomic(path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True), verify,
                 writer_failed="the image writer failed (disk full, or a pixel type this format cannot store)")


def write_labelmap(phase_labels: list[sitk.Image], path: str | Path) -> None:
    """Write one phase as a 3D uint8 labelmap, several as one 4D uint8 labelmap (phases along t)."""
    if not phase_labels or any(label.GetDimension() != 3 for label in phase_labels):
        raise ValueError("write_labelmap needs one or more 3D labelmaps")
    labels = [sitk.Cast(label, sitk.sitkUInt8) for label in phase_labels]
    if len(labels) == 1:
        write_image_atomic(labels[0], path)
        return
    try:
        joined = sitk.JoinSeries(labels)  # keeps the 3D geometry; t gets spacing 1, origin 0
    except RuntimeError as exc:
        raise ValueError("the phase labelmaps differ in size or geometry") from exc
    write_image_atomic(joined, path)
