"""Reading studies (NIfTI, NRRD, MetaImage, DICOM cine folders) and writing labelmaps."""

from __future__ import annotations

from pathlib import Path

from ..errors import ErrorCode, MedSegError
from .contours import Contour, PhaseReference, read_sunnybrook_contours, sunnybrook_reference
from .dicom import is_multiframe_dicom
from .itk_messages import route_itk_messages
from .volumes import (
    SUPPORTED_SUFFIXES,
    Study,
    geometry_difference,
    read_phase_files,
    read_study,
    select_phases,
    volume_suffix,
    write_image_atomic,
    write_labelmap,
)

route_itk_messages()

SAMPLE_CASE = "SCD0000101"  # the bundled demo case: SAMPLE_CASE/dicom and SAMPLE_CASE/contours


def sample_data_dir() -> Path:
    """The folder holding the bundled sample data (the repository's, else a copy in the package)."""
    candidates = (
        Path(__file__).resolve().parents[3] / "Resources" / "SampleData",
        Path(__file__).resolve().parents[1] / "sample_data",
    )
    for candidate in candidates:
        if (candidate / SAMPLE_CASE / "dicom").is_dir():
            return candidate
    raise MedSegError(
        f"The sample data ({SAMPLE_CASE}) was not found in {candidates[0]} or {candidates[1]}; "
        "reinstall MedSegRWKV from a full checkout.", code=ErrorCode.BAD_INPUT
    )


__all__ = [
    "SAMPLE_CASE",
    "SUPPORTED_SUFFIXES",
    "Contour",
    "PhaseReference",
    "Study",
    "geometry_difference",
    "is_multiframe_dicom",
    "read_phase_files",
    "read_study",
    "read_sunnybrook_contours",
    "sample_data_dir",
    "select_phases",
    "sunnybrook_reference",
    "volume_suffix",
    "write_image_atomic",
    "write_labelmap",
]
