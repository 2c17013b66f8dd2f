"""Cardiac function in the panel: the results table, the summary line and the volume-time plot
from the worker's `function` result, the optional inputs (ED/ES phase, height, weight) as request
fields, and the labelmap a phase's (corrected) segments are sent back as.

The result is medsegrwkv.function's report: ed_phase and es_phase (0-based), lv and rv (edv_ml,
esv_ml, sv_ml, ef_percent, mass_g for the LV, and *_m2 indexed values when the body surface area
is known), bsa_m2, curve (one row per phase: phase, time_ms, lv_ml, rv_ml, myo_ml), warnings.
Phases are shown 1-based, as the panel's phase box and Slicer's sequence browser show them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from MedSegRWKVLib.plots import Plot, Series
from MedSegRWKVLib.terminology import segment_id

COLUMNS = ("Measure", "Value", "Unit", "Note")
# The worker measures labelmaps sent without a model in the package's convention (ACDC, docs/design.md
# §4; medsegrwkv.function.cardiac.default_labels): these values and names, and these colours.
LABEL_VALUES: Tuple[Tuple[str, int], ...] = (("RV cavity", 1), ("LV myocardium", 2), ("LV cavity", 3))
DEFAULT_COLOURS: Dict[str, Tuple[float, float, float]] = {
    "RV cavity": (0.29, 0.53, 0.91), "LV myocardium": (0.8, 0.36, 0.29), "LV cavity": (0.98, 0.82, 0.33)}
# Curve key -> structure name; the plot's curves in this order.
CURVES: Tuple[Tuple[str, str], ...] = (("lv_ml", "LV cavity"), ("rv_ml", "RV cavity"), ("myo_ml", "LV myocardium"))
# Ventricle measures: (result key, row name, unit, decimals).
MEASURES: Tuple[Tuple[str, str, str, int], ...] = (
    ("edv_ml", "EDV", "mL", 1), ("esv_ml", "ESV", "mL", 1), ("sv_ml", "SV", "mL", 1), ("ef_percent", "EF", "%", 1),
    ("mass_g", "mass", "g", 1))
INDEXED_UNITS = {"mL": "mL/m²", "g": "g/m²"}


@dataclass(frozen=True)
class ResultRow:
    measure: str  # e.g. "LV EF"
    value: str  # formatted; "-" when the worker could not measure it
    unit: str
    note: str = ""

    @property
    def cells(self) -> Tuple[str, str, str, str]:
        return (self.measure, self.value, self.unit, self.note)


TIME_UNITS_MS = {"ms": 1.0, "msec": 1.0, "s": 1000.0, "sec": 1000.0}


def cine_times(index_values: Sequence[str], unit: str) -> Optional[List[float]]:
    """The trigger times (ms) of a cine's phases from its sequence's index values and unit (Slicer's
    DICOM import gives trigger times in ms); None when they are not times."""
    scale = TIME_UNITS_MS.get(unit.strip().lower())
    if scale is None:
        return None
    try:
        return [float(value) * scale for value in index_values]
    except ValueError:
        return None


def with_cine_times(result: Dict[str, Any], times_ms: Optional[Sequence[float]]) -> Dict[str, Any]:
    """The result with the cine's trigger times in its curve where the worker had none (it gets the
    phases as separate files, which carry no trigger time); the result itself is left as it is."""
    curve = result["curve"]
    if times_ms is None or len(times_ms) != len(curve) or all(row.get("time_ms") is not None for row in curve):
        return result
    return {**result, "curve": [{**row, "time_ms": row["time_ms"] if row.get("time_ms") is not None
                                 else round(float(times_ms[int(row["phase"])]), 2)} for row in curve]}


def _number(value: Optional[float], decimals: int) -> str:
    return "-" if value is None else f"{float(value):.{decimals}f}"


def _phase_row(name: str, phase: int, time_ms: Optional[float], source: str) -> ResultRow:
    note = ", ".join(part for part in (f"{time_ms:g} ms" if time_ms is not None else "", source) if part)
    return ResultRow(name, str(int(phase) + 1), "", note)


def result_rows(result: Dict[str, Any]) -> List[ResultRow]:
    """The results table: ED and ES phase (1-based), each ventricle's volumes, EF and (LV) mass,
    their values indexed to the body surface area when it is known, the BSA, then the warnings."""
    times = {int(row["phase"]): row.get("time_ms") for row in result["curve"]}
    rows = [_phase_row("ED phase", result["ed_phase"], times.get(int(result["ed_phase"])), result.get("ed_source", "")),
            _phase_row("ES phase", result["es_phase"], times.get(int(result["es_phase"])), result.get("es_source", ""))]
    for key, ventricle in (("lv", "LV"), ("rv", "RV")):
        values = result.get(key)
        if not values:
            continue
        for field, name, unit, decimals in MEASURES:
            if field in values:
                rows.append(ResultRow(f"{ventricle} {name}", _number(values[field], decimals), unit))
        for field, name, unit, decimals in MEASURES:
            if f"{field}_m2" in values:
                rows.append(ResultRow(f"{ventricle} {name} index", _number(values[f"{field}_m2"], decimals),
                                      INDEXED_UNITS[unit], "per m² of body surface area"))
    if result.get("bsa_m2") is not None:
        body = (f"Mosteller, height {result['height_cm']:g} cm, weight {result['weight_kg']:g} kg"
                if result.get("height_cm") is not None and result.get("weight_kg") is not None else "Mosteller")
        source = result.get("body_size_from")
        rows.append(ResultRow("BSA", _number(result["bsa_m2"], 2), "m²", f"{body} ({source})" if source else body))
    rows += [ResultRow("Warning", "", "", str(warning)) for warning in result.get("warnings") or []]
    return rows


def summary_line(result: Dict[str, Any]) -> str:
    """'LV EF 23.4% (EDV 198.3 mL, ESV 152.0 mL); RV EF 41.8%; ED phase 2, ES phase 1.'"""
    parts = []
    for key, ventricle in (("lv", "LV"), ("rv", "RV")):
        values = result.get(key)
        if not values:
            continue
        text = f"{ventricle} EF {_number(values.get('ef_percent'), 1)}%"
        if key == "lv":
            text += f" (EDV {_number(values.get('edv_ml'), 1)} mL, ESV {_number(values.get('esv_ml'), 1)} mL)"
        parts.append(text)
    parts.append(f"ED phase {int(result['ed_phase']) + 1}, ES phase {int(result['es_phase']) + 1}")
    return "; ".join(parts) + "."


def structure_colours(labels: Optional[Sequence[Dict[str, Any]]]) -> Dict[str, Tuple[float, float, float]]:
    """Curve colours: the segments' colours from the model's labels, else the package's defaults."""
    colours = dict(DEFAULT_COLOURS)
    for label in labels or []:
        if str(label.get("name")) in colours:
            colours[str(label["name"])] = tuple(float(c) for c in label["color"])  # type: ignore[assignment]
    return colours


def curve_plot(result: Dict[str, Any], labels: Optional[Sequence[Dict[str, Any]]] = None) -> Plot:
    """Volume-time curves: each measured structure's volume (mL) against the trigger time, or
    against the (1-based) phase when the cine has no times."""
    curve = sorted(result["curve"], key=lambda row: int(row["phase"]))
    columns: Dict[str, List[float]] = {"phase": [float(int(row["phase"]) + 1) for row in curve]}
    timed = bool(curve) and all(row.get("time_ms") is not None for row in curve)
    if timed:
        columns["time (ms)"] = [float(row["time_ms"]) for row in curve]
    x = "time (ms)" if timed else "phase"
    colours = structure_colours(labels)
    series = []
    for key, name in CURVES:
        if curve and all(row.get(key) is not None for row in curve):
            column = f"{name} (mL)"
            columns[column] = [float(row[key]) for row in curve]
            series.append(Series(name, x, column, colours[name], line=True))
    return Plot("Volume over the cardiac cycle", x, "volume (mL)", columns, series)


def request_options(ed: int, es: int, height_cm: float, weight_kg: float) -> Dict[str, Any]:
    """The panel's optional inputs as request fields: phase boxes are 1-based with 0 meaning
    'detect' (largest / smallest LV cavity); a height or weight of 0 means 'not given' (the worker
    then looks in the DICOM header)."""
    height = float(height_cm) if height_cm and height_cm > 0 else None
    weight = float(weight_kg) if weight_kg and weight_kg > 0 else None
    if (height is None) != (weight is None):
        raise ValueError("Give both height and weight for the indexed values, or neither.")
    if ed and es and ed == es:
        raise ValueError(f"The ED and ES phases must differ (both are phase {ed}).")
    return {"ed": int(ed) - 1 if ed else None, "es": int(es) - 1 if es else None,
            "height_cm": height, "weight_kg": weight}


def label_segments() -> List[Tuple[int, str]]:
    """(label value, segment ID) of the structures a corrected phase is sent back with."""
    return [(value, segment_id(name)) for name, value in LABEL_VALUES]


def holds_left_ventricle(labelmap: np.ndarray) -> bool:
    """Whether a labelmap in the worker's convention has any LV cavity or myocardium."""
    return bool(np.isin(labelmap, [value for name, value in LABEL_VALUES if name.startswith("LV")]).any())


def labelmap_from_masks(masks: Mapping[str, np.ndarray], shape: Sequence[int]) -> np.ndarray:
    """One phase's labelmap (uint8, `shape`) from its segments' masks by segment ID, in the
    worker's convention; a segment the user deleted is empty; where segments overlap the later
    label of LABEL_VALUES wins (the LV cavity over the myocardium, as the model's argmax never
    overlaps anyway)."""
    labelmap = np.zeros(tuple(shape), dtype=np.uint8)
    for value, segment in label_segments():
        mask = masks.get(segment)
        if mask is None:
            continue
        if mask.shape != labelmap.shape:
            raise ValueError(f"segment {segment} has shape {mask.shape}, the phase {labelmap.shape}")
        labelmap[mask.astype(bool)] = value
    return labelmap
