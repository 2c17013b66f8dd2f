"""ACDC-layout folders (`patientNNN/patientNNN_frameXX.nii.gz` + `_gt`) and the fixed split.

Split rule (patient level, documented in README): a patient whose number modulo 20 is 13, 14,
15 or 16 is a validation patient. ACDC numbers its patients in blocks of 20 per pathology group
(DCM, HCM, MINF, NOR, RV), so on the 80 shared patients this gives 20 validation patients, four
per group, and 60 training patients. The rule needs no list, so it also splits a site's own
folder in the same layout deterministically.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from medsegrwkv.errors import ErrorCode, MedSegError

VALIDATION_RESIDUES = (13, 14, 15, 16)
_IMAGE = re.compile(r"^(patient(\d+))_frame(\d+)\.nii(\.gz)?$")


@dataclass(frozen=True)
class Case:
    patient: str  # e.g. "patient001"
    number: int
    frame: int
    image: Path
    label: Path
    group: str | None  # pathology group from Info.json when present

    @property
    def name(self) -> str:
        return f"{self.patient}_frame{self.frame:02d}"


def is_validation(number: int) -> bool:
    return number % 20 in VALIDATION_RESIDUES


def list_cases(root: str | Path, split: str = "all") -> list[Case]:
    """All labelled frames under `root`; `split` is all, train or val."""
    base = Path(root)
    if not base.is_dir():
        raise MedSegError(f"The data folder {base} does not exist.", code=ErrorCode.BAD_DATA)
    if split not in ("all", "train", "val"):
        raise MedSegError(f"Unknown split '{split}'; choose all, train or val.", code=ErrorCode.BAD_DATA)
    cases = []
    for image in sorted(base.glob("patient*/patient*_frame*.nii*")):
        match = _IMAGE.match(image.name)
        if not match:
            continue
        label = image.with_name(image.name.replace(".nii", "_gt.nii", 1))
        if not label.is_file():
            continue
        info = image.parent / "Info.json"
        group = json.loads(info.read_text()).get("Group") if info.is_file() else None
        number = int(match.group(2))
        cases.append(Case(match.group(1), number, int(match.group(3)), image, label, group))
    if not cases:
        raise MedSegError(f"No labelled ACDC-layout frames (patientNNN/patientNNN_frameXX.nii.gz with _gt) "
                          f"were found in {base}.", code=ErrorCode.BAD_DATA)
    return in_split(cases, split)


def in_split(cases: list[Case], split: str) -> list[Case]:
    """The cases of one split (all, train or val), by patient number."""
    return cases if split == "all" else [c for c in cases if is_validation(c.number) == (split == "val")]
