"""Cardiac function from short-axis labelmaps: volume-time curves, EDV, ESV, SV, EF, LV mass, BSA.

Volumes are measured by Simpson's rule of discs, as clinical CMR reports do: on every short-axis
slice the structure's area (pixel count x in-plane pixel area) times the slice spacing (the
centre-to-centre distance between slices, gaps included), summed over the slices. The slice axis
comes from the image geometry (the same rule as the canonical orientation, medsegrwkv.preprocess),
never from the file's axis order. Structures are found by name in the labels list (the model
manifest's [{"name", "value"}, ...]), never by a fixed label number.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.io.volumes import geometry_difference
from medsegrwkv.preprocess import slice_layout

MYOCARDIAL_DENSITY_G_PER_ML = 1.05
EF_PLAUSIBLE_PERCENT = (5.0, 90.0)
# Monotony check: a rise (or fall) against the expected direction larger than this share of the
# stroke volume between ED and ES (or ES and the next ED) is named in a warning.
_MONOTONY_TOLERANCE = 0.10

# Names under which the three structures appear in label lists (lower case).
STRUCTURE_NAMES: dict[str, tuple[str, ...]] = {
    "lv": ("lv cavity", "lv", "left ventricle", "lv blood pool", "left ventricular cavity", "lv endocardium"),
    "myo": ("lv myocardium", "myocardium", "myo", "left ventricular myocardium"),
    "rv": ("rv cavity", "rv", "right ventricle", "rv blood pool", "right ventricular cavity"),
}
STRUCTURE_TITLES = {"lv": "LV cavity", "myo": "LV myocardium", "rv": "RV cavity"}

METHOD = (
    "Simpson's rule of discs: on every short-axis slice the structure's area (pixel count x in-plane pixel "
    "area from the image spacing) times the slice spacing (centre-to-centre distance along the slice axis "
    "found from the image direction, gaps included), summed over slices. ED = the phase with the largest LV "
    "cavity volume, ES = the smallest (unless given); the RV is measured at the same ED and ES phases. "
    "SV = EDV - ESV, EF = SV / EDV. LV mass = myocardial volume at ED x 1.05 g/mL. BSA by Mosteller, "
    "sqrt(height cm x weight kg / 3600); indexed values are per m^2 of BSA. Papillary muscles and "
    "trabeculations count as whatever the labelmap calls them."
)


def _r(value: float | None) -> float | None:
    return None if value is None else round(float(value), 2)


def structure_values(labels: Sequence[dict[str, Any]]) -> dict[str, int | None]:
    """Label value of the LV cavity, LV myocardium and RV cavity in a manifest-style labels list."""
    found: dict[str, int | None] = {key: None for key in STRUCTURE_NAMES}
    for label in labels:
        try:
            name, value = str(label["name"]).strip().lower(), int(label["value"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MedSegError(f"The label list entry {label!r} needs a name and an integer value.",
                              code=ErrorCode.BAD_LABELS) from exc
        for key, names in STRUCTURE_NAMES.items():
            if name in names and found[key] is None:
                found[key] = value
    if found["lv"] is None:
        names = ", ".join(repr(str(label.get("name"))) for label in labels) or "none"
        raise MedSegError(f"No label names the LV cavity (labels: {names}), so cardiac function cannot be "
                          "measured.", code=ErrorCode.BAD_LABELS)
    return found


def default_labels() -> list[dict[str, Any]]:
    """The package's labels (ACDC convention, with colours), for labelmaps that come without a model."""
    from medsegrwkv.weights.manifest import SEGMENTATION_LABELS

    return copy.deepcopy(SEGMENTATION_LABELS)


def check_labels_match(image: sitk.Image, labels: sitk.Image, what: str = "The labelmap") -> None:
    """Raise one sentence (bad_labels) when a labelmap does not lie on its image's voxel grid."""
    difference = geometry_difference(image, labels)
    if difference is not None:
        raise MedSegError(f"{what} does not match the image geometry: it has {difference}.",
                          code=ErrorCode.BAD_LABELS)


def slice_axis(image: sitk.Image) -> int:
    """The image's index axis (0 i, 1 j, 2 k) across the short-axis slices, from its geometry."""
    return slice_layout(image)[0]


def _phases_text(phases: Sequence[int]) -> str:
    """0, 1, 2, 5 -> 'phases 0-2, 5'; one -> 'phase 3'."""
    phases = sorted(phases)
    runs: list[list[int]] = []
    for p in phases:
        if runs and p == runs[-1][-1] + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    text = ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)
    return f"phase{'s' if len(phases) > 1 else ''} {text}"


@dataclass
class PhaseMeasure:
    """Per-slice areas (mm^2) of each structure in one phase, in slice order, and the slice spacing."""

    areas_mm2: dict[str, np.ndarray]
    slice_spacing_mm: float

    def volume_ml(self, key: str) -> float | None:
        areas = self.areas_mm2.get(key)
        return None if areas is None else float(areas.sum() * self.slice_spacing_mm / 1000.0)


def measure_phase(labelmap: sitk.Image, values: dict[str, int | None]) -> PhaseMeasure:
    """Areas per short-axis slice of each named structure (a disc per slice, Simpson's rule)."""
    axis = slice_axis(labelmap)
    spacing = labelmap.GetSpacing()
    pixel_area = float(np.prod([spacing[i] for i in range(3) if i != axis]))
    array = sitk.GetArrayViewFromImage(labelmap)  # (k, j, i): index axis a is array axis 2 - a
    other = tuple(n for n in range(3) if n != 2 - axis)
    areas = {key: np.count_nonzero(array == value, axis=other).astype(float) * pixel_area
             for key, value in values.items() if value is not None}
    return PhaseMeasure(areas, float(spacing[axis]))


@dataclass
class CardiacFunction:
    """Volumes over the cycle and the derived function values of one study (mL, %, g, m^2)."""

    lv_ml: list[float]
    rv_ml: list[float] | None
    myo_ml: list[float] | None
    trigger_times_ms: list[float] | None
    ed_phase: int
    es_phase: int
    ed_source: str  # "largest LV cavity volume" or "given"
    es_source: str
    lv: dict[str, float | None]
    rv: dict[str, float | None] | None
    bsa_m2: float | None
    height_cm: float | None
    weight_kg: float | None
    slice_axis: int
    slice_spacing_mm: float
    slices: int
    method: str = METHOD
    warnings: list[str] = field(default_factory=list)

    @property
    def phases(self) -> int:
        return len(self.lv_ml)

    def curve(self) -> list[dict[str, Any]]:
        """One row per phase: phase, time_ms, lv_ml, rv_ml, myo_ml."""
        return [{"phase": p,
                 "time_ms": _r(self.trigger_times_ms[p]) if self.trigger_times_ms else None,
                 "lv_ml": _r(self.lv_ml[p]),
                 "rv_ml": _r(self.rv_ml[p]) if self.rv_ml is not None else None,
                 "myo_ml": _r(self.myo_ml[p]) if self.myo_ml is not None else None}
                for p in range(self.phases)]

    def to_json(self) -> dict[str, Any]:
        return {
            "phases": self.phases,
            "ed_phase": self.ed_phase,
            "es_phase": self.es_phase,
            "ed_source": self.ed_source,
            "es_source": self.es_source,
            "lv": {k: _r(v) for k, v in self.lv.items()},
            "rv": {k: _r(v) for k, v in self.rv.items()} if self.rv is not None else None,
            "bsa_m2": _r(self.bsa_m2),
            "height_cm": _r(self.height_cm),
            "weight_kg": _r(self.weight_kg),
            "curve": self.curve(),
            "slices": self.slices,
            "slice_axis": "ijk"[self.slice_axis],
            "slice_spacing_mm": _r(self.slice_spacing_mm),
            "method": self.method,
            "warnings": list(self.warnings),
        }


def mosteller_bsa(height_cm: float, weight_kg: float) -> float:
    """Body surface area (m^2) by Mosteller: sqrt(height cm x weight kg / 3600)."""
    return math.sqrt(height_cm * weight_kg / 3600.0)


def _check_body(height_cm: float | None, weight_kg: float | None) -> list[str]:
    warnings = []
    for value, what, unit, low, high in ((height_cm, "height", "cm", 40.0, 250.0),
                                         (weight_kg, "weight", "kg", 2.0, 350.0)):
        if value is None:
            continue
        if not math.isfinite(value) or value <= 0:
            raise MedSegError(f"The {what} must be a positive number of {unit}, not {value}.",
                              code=ErrorCode.BAD_ARGUMENT)
        if what == "height" and value < 3.0:
            raise MedSegError(f"The height {value} looks like metres; give it in centimetres.",
                              code=ErrorCode.BAD_ARGUMENT)
        if not low <= value <= high:
            warnings.append(f"The {what} {value:g} {unit} is outside {low:g}-{high:g} {unit}; check the indexed values.")
    return warnings


def pick_phase(given: int | None, name: str, count: int, default: int = 0) -> tuple[int, str]:
    """`given` checked against the phase count (one sentence, bad_phase), else `default`; and where it came from."""
    if given is None:
        return default, "largest LV cavity volume" if name == "ED" else "smallest LV cavity volume"
    if isinstance(given, bool) or not isinstance(given, (int, np.integer)) or not 0 <= given < count:
        raise MedSegError(f"The {name} phase {given} does not exist: the study has {count} phases, numbered 0 to "
                          f"{count - 1}.", code=ErrorCode.BAD_PHASE)
    return int(given), "given"


def _ventricle(edv: float, esv: float, name: str, warnings: list[str]) -> dict[str, float | None]:
    sv = edv - esv
    ef = 100.0 * sv / edv if edv > 0 else None
    if ef is None:
        warnings.append(f"The {name} has no volume at ED, so its ejection fraction cannot be computed.")
    elif not EF_PLAUSIBLE_PERCENT[0] <= ef <= EF_PLAUSIBLE_PERCENT[1]:
        warnings.append(f"The {name} ejection fraction {ef:.1f}% is outside {EF_PLAUSIBLE_PERCENT[0]:g}-"
                        f"{EF_PLAUSIBLE_PERCENT[1]:g}%; check the segmentation and the ED and ES phases.")
    return {"edv_ml": edv, "esv_ml": esv, "sv_ml": sv, "ef_percent": ef}


def _monotony_warnings(volumes: list[float], ed: int, es: int, name: str = "LV") -> list[str]:
    """A ventricle's volume should fall from ED to ES and rise from ES back to ED (phases are cyclic)."""
    n = len(volumes)
    stroke = volumes[ed] - volumes[es]
    if n < 4 or stroke <= 0:
        return []
    tolerance = _MONOTONY_TOLERANCE * stroke
    bad: list[int] = []
    for start, stop, sign in ((ed, es, -1), (es, ed, +1)):
        p = start
        lowest_or_highest = volumes[start]
        while p != stop:
            q = (p + 1) % n
            if sign < 0 and volumes[q] > lowest_or_highest + tolerance:
                bad.append(q)
            if sign > 0 and volumes[q] < lowest_or_highest - tolerance:
                bad.append(q)
            lowest_or_highest = min(lowest_or_highest, volumes[q]) if sign < 0 else max(lowest_or_highest, volumes[q])
            p = q
    if not bad:
        return []
    verb = "goes" if len(bad) == 1 else "go"
    return [f"The {name} volume curve is not monotone between ED and ES ({_phases_text(bad)} {verb} against the "
            "cycle by more than 10% of the stroke volume); check the segmentation there."]


def _coverage_warnings(measures: list[PhaseMeasure], keys: Sequence[str]) -> list[str]:
    """One sentence per end of the stack that a structure reaches (its base or apex may lie outside)."""
    warnings = []
    for end, index in (("first", 0), ("last", -1)):
        parts = []
        for key in keys:
            phases = [p for p, m in enumerate(measures) if key in m.areas_mm2 and m.areas_mm2[key][index] > 0]
            if phases:
                parts.append(f"the {STRUCTURE_TITLES[key]} in {_phases_text(phases)}")
        if parts:
            warnings.append(f"The {end} slice holds {'; '.join(parts)}: the stack may not cover the base or apex "
                            "there, so those volumes may be too small.")
    return warnings


def compute_function(phase_labels: list[sitk.Image], labels: Sequence[dict[str, Any]],
                     trigger_times_ms: Sequence[float] | None = None, ed: int | None = None, es: int | None = None,
                     height_cm: float | None = None, weight_kg: float | None = None) -> CardiacFunction:
    """Volume-time curves and function values of a study from one labelmap per cardiac phase.

    `labels` is the manifest's list of {"name", "value"}; the LV cavity, LV myocardium and RV
    cavity are found by name. `ed` and `es` (0-based) override the detected phases.
    """
    count = len(phase_labels)
    if count < 2:
        raise MedSegError(f"Cardiac function needs at least two cardiac phases (ED and ES); the study has {count}.",
                          code=ErrorCode.BAD_PHASE)
    if trigger_times_ms is not None and len(trigger_times_ms) != count:
        raise MedSegError(f"{len(trigger_times_ms)} trigger times were given for {count} phases.",
                          code=ErrorCode.BAD_PHASE)
    for p, image in enumerate(phase_labels):
        if image.GetDimension() != 3:
            raise MedSegError(f"The labelmap of phase {p} is {image.GetDimension()}D; one 3D labelmap per phase is "
                              "needed.", code=ErrorCode.BAD_LABELS)
        difference = geometry_difference(phase_labels[0], image) if p else None
        if difference is not None:
            raise MedSegError(f"The labelmap of phase {p} has a different geometry from phase 0 ({difference}); "
                              "all phases of a study must share one voxel grid.", code=ErrorCode.BAD_LABELS)
    values = structure_values(labels)
    warnings = _check_body(height_cm, weight_kg)
    measures = [measure_phase(image, values) for image in phase_labels]
    lv = [m.volume_ml("lv") or 0.0 for m in measures]
    rv = [m.volume_ml("rv") or 0.0 for m in measures] if values["rv"] is not None else None
    myo = [m.volume_ml("myo") or 0.0 for m in measures] if values["myo"] is not None else None
    if max(lv) <= 0:
        raise MedSegError("No phase contains any LV cavity, so cardiac function cannot be measured.",
                          code=ErrorCode.BAD_LABELS)
    ed_phase, ed_source = pick_phase(ed, "ED", count, int(np.argmax(lv)))
    es_phase, es_source = pick_phase(es, "ES", count, int(np.argmin(lv)))
    if ed_phase == es_phase:
        raise MedSegError(f"ED and ES are the same phase ({ed_phase}); they must differ.", code=ErrorCode.BAD_PHASE)

    empty = [p for p, v in enumerate(lv) if v <= 0]
    if empty:
        warnings.append(f"No LV cavity was found in {_phases_text(empty)}.")
    warnings += _coverage_warnings(measures, [k for k in ("lv", "myo", "rv") if values[k] is not None])
    if lv[es_phase] >= lv[ed_phase]:
        warnings.append(f"The LV volume at ES (phase {es_phase}, {lv[es_phase]:.1f} mL) is not smaller than at ED "
                        f"(phase {ed_phase}, {lv[ed_phase]:.1f} mL); check the ED and ES phases.")
    warnings += _monotony_warnings(lv, ed_phase, es_phase)
    if rv is not None:
        warnings += _monotony_warnings(rv, ed_phase, es_phase, "RV")

    lv_values = _ventricle(lv[ed_phase], lv[es_phase], "LV", warnings)
    lv_values["mass_g"] = myo[ed_phase] * MYOCARDIAL_DENSITY_G_PER_ML if myo is not None else None
    rv_values = _ventricle(rv[ed_phase], rv[es_phase], "RV", warnings) if rv is not None else None
    bsa = mosteller_bsa(height_cm, weight_kg) if height_cm is not None and weight_kg is not None else None
    if bsa:
        for ventricle in (lv_values, rv_values):
            if ventricle is None:
                continue
            for key in ("edv_ml", "esv_ml", "sv_ml", "mass_g"):
                if key in ventricle:
                    value = ventricle[key]
                    ventricle[f"{key}_m2"] = None if value is None else value / bsa
    axis = slice_axis(phase_labels[0])
    return CardiacFunction(
        lv_ml=lv, rv_ml=rv, myo_ml=myo,
        trigger_times_ms=[float(t) for t in trigger_times_ms] if trigger_times_ms is not None else None,
        ed_phase=ed_phase, es_phase=es_phase, ed_source=ed_source, es_source=es_source,
        lv=lv_values, rv=rv_values, bsa_m2=bsa, height_cm=height_cm, weight_kg=weight_kg,
        slice_axis=axis, slice_spacing_mm=measures[0].slice_spacing_mm,
        slices=int(phase_labels[0].GetSize()[axis]), warnings=warnings,
    )
