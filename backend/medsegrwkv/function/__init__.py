"""Cardiac function from labelmaps of the whole cine: volume-time curves, EDV, ESV, SV, EF, LV mass."""

from .cardiac import (
    METHOD,
    CardiacFunction,
    check_labels_match,
    compute_function,
    default_labels,
    mosteller_bsa,
    slice_axis,
    structure_values,
)

__all__ = [
    "METHOD",
    "CardiacFunction",
    "check_labels_match",
    "compute_function",
    "default_labels",
    "mosteller_bsa",
    "slice_axis",
    "structure_values",
]
