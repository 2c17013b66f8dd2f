"""Segments as Slicer shows them: name, colour and a standard terminology entry per label.

The labels (value, name, colour, SNOMED CT category/type/region codes) come from the model's
manifest, which the worker returns with every segmentation. Slicer stores the terminology as a
segment tag `TerminologyEntry` of seven `~`-separated parts: terminology context, category,
type, type modifier, anatomic context, anatomic region, region modifier; each coded part is
`scheme^code^meaning` (empty: `^^`). Slicer's terminology selector finds an entry only in a
loaded list, and its default lists lack the myocardium (SCT 74281007), so the module ships its own
category/type list (TERMINOLOGY_FILE, loaded with the Terminologies logic's
LoadTerminologyFromFile, as other extensions do) holding every structure the manifests name; the
anatomic region (the myocardium's left ventricle) comes from Slicer's default DICOM list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

TERMINOLOGY_TAG = "TerminologyEntry"
CATEGORY_TYPE_CONTEXT = "Segmentation category and type - MedSegRWKV cardiac structures"
TERMINOLOGY_FILE = "Resources/Terminology/SegmentationCategoryType-MedSegRWKV.term.json"  # under the module folder
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class SegmentSpec:
    value: int  # label value in the worker's labelmap
    name: str
    color: Tuple[float, float, float]  # 0..1
    terminology: str

    @property
    def segment_id(self) -> str:
        """A stable segment ID, so a second run replaces the segment instead of adding another."""
        return segment_id(self.name)


def segment_id(name: str) -> str:
    """The module's segment ID for a structure name ('LV cavity' -> 'medsegrwkv_lv_cavity')."""
    return "medsegrwkv_" + name.lower().replace(" ", "_")


def _code(entry: Optional[Dict[str, Any]]) -> str:
    if not entry:
        return "^^"
    parts = (str(entry.get("scheme", "")), str(entry.get("code", "")), str(entry.get("meaning", "")))
    if any(c in p for p in parts for c in "~^|:"):
        raise ValueError(f"terminology code {entry} contains a separator character")
    return "^".join(parts)


def terminology_entry(label: Dict[str, Any]) -> str:
    """Slicer's serialized terminology entry for one manifest label."""
    if "category" not in label or "type" not in label:
        raise ValueError(f"label {label.get('name')!r} has no category/type code")
    return "~".join((CATEGORY_TYPE_CONTEXT, _code(label["category"]), _code(label["type"]),
                     _code(label.get("type_modifier")), ANATOMIC_CONTEXT, _code(label.get("region")),
                     _code(label.get("region_modifier"))))


def segment_specs(labels: Sequence[Dict[str, Any]]) -> List[SegmentSpec]:
    """One spec per foreground label, in label order."""
    specs = []
    for label in sorted(labels, key=lambda item: int(item["value"])):
        value = int(label["value"])
        if value <= 0:
            continue
        color = tuple(float(c) for c in label["color"])
        if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
            raise ValueError(f"label {label['name']!r} colour {label['color']} is not three values in 0..1")
        specs.append(SegmentSpec(value, str(label["name"]), color, terminology_entry(label)))  # type: ignore[arg-type]
    return specs
