"""The motion-quality review: table rows, their colours, the study summary and the plot.

Input is the worker's `grade` result (medsegrwkv.grading.grade_study plus an `index` per slice:
its voxel index along `index_axis` of the graded volume). One row per slice position; scores are
the grader's expected Likert score (5 best); colours follow the CMRxMotion levels. A slice or
study the worker did not grade (blank, or no left ventricle found) has grade null: grey, and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .plots import Plot, Series

RGB = Tuple[int, int, int]
COLUMNS = ("Slice", "Score", "Grade", "Confidence")
# Same colours as the backend's PNG strip (medsegrwkv.grading.grade.GRADE_COLOURS).
GRADE_COLOURS: Dict[str, RGB] = {"mild": (46, 160, 67), "moderate": (240, 170, 30), "severe": (215, 48, 39)}
UNGRADED_COLOUR: RGB = (128, 128, 128)  # as the backend's PNG strip
TINT = 0.6  # row backgrounds are the grade colour this far towards white, so black text stays legible


def tint(colour: RGB, amount: float = TINT) -> RGB:
    return tuple(round(c + (255 - c) * amount) for c in colour)  # type: ignore[return-value]


@dataclass(frozen=True)
class QualityRow:
    slice: int  # the grader's slice number (as in its recommendation text)
    index: int  # voxel index along the volume's slice axis (for jumping the views)
    score: Optional[float]  # expected Likert score, 1..5; None: not graded
    grade: Optional[str]  # mild | moderate | severe; None: not graded
    confidence: Optional[float]  # probability of that grade, 0..1
    diagnostic: Optional[bool]
    through_lv: bool
    not_graded: str = ""  # why there is no grade

    @property
    def cells(self) -> Tuple[str, str, str, str]:
        if self.grade is None or self.score is None or self.confidence is None:
            return (str(self.index), "-", f"not graded: {self.not_graded}", "-")
        grade = self.grade if self.diagnostic else f"{self.grade} (non-diagnostic)"
        return (str(self.index), f"{self.score:.1f}", grade, f"{100 * self.confidence:.0f}%")

    @property
    def colour(self) -> RGB:
        return GRADE_COLOURS[self.grade] if self.grade is not None else UNGRADED_COLOUR

    @property
    def background(self) -> RGB:
        return tint(self.colour)

    @property
    def tooltip(self) -> str:
        lv = "through the left ventricle" if self.through_lv else "outside the left ventricle"
        if self.score is None:
            return f"Slice {self.index} (canonical position {self.slice}), {lv}: not graded, {self.not_graded}."
        return (f"Slice {self.index} (as stored in the file; canonical position {self.slice}), {lv}: expected score {self.score:.2f} of 5, "
                f"{self.grade}, {'diagnostic' if self.diagnostic else 'non-diagnostic'}.")


def quality_rows(result: Dict[str, Any]) -> List[QualityRow]:
    """One row per slice position, numbered and ordered as the file stores them (as the
    recommendation and Slicer's slice index do)."""
    rows = []
    for position in sorted(result["positions"], key=lambda p: p["index"]):
        grade = position["grade"]
        if grade is None:
            rows.append(QualityRow(int(position["slice"]), int(position["index"]), None, None, None, None,
                                   bool(position.get("lv", True)), str(position.get("not_graded", ""))))
            continue
        if grade not in GRADE_COLOURS:
            raise ValueError(f"unknown grade {grade!r} for slice {position['slice']}")
        rows.append(QualityRow(int(position["slice"]), int(position["index"]), float(position["expected_score"]),
                               grade, float(position["confidence"]), bool(position["diagnostic"]),
                               bool(position.get("lv", True))))
    return rows


def summary_line(result: Dict[str, Any]) -> str:
    """The study grade and the grader's recommendation in one line."""
    study = result["study"]
    if study["grade"] is None:
        return f"Study: not graded. {study['recommendation']}"
    return f"Study: {study['grade']} (score {study['score']}). {study['recommendation']}"


def summary_tooltip(result: Dict[str, Any]) -> str:
    """The study rule, where its LV slices came from, and the grader's caveat."""
    study = result["study"]
    return f"{study['rule']}; LV slices: {study['lv_slices_source']}. {result['caveat']}"


def summary_colour(result: Dict[str, Any]) -> RGB:
    grade = result["study"]["grade"]
    return GRADE_COLOURS[grade] if grade is not None else UNGRADED_COLOUR


def summary_style(result: Dict[str, Any]) -> str:
    """Qt style sheet of the summary line: black text on the study grade's tint, a border in its colour."""
    colour, background = summary_colour(result), tint(summary_colour(result))
    return ("color: black; background-color: rgb({}, {}, {}); border: 1px solid rgb({}, {}, {}); "
            "padding: 4px".format(*background, *colour))


def plot_points(result: Dict[str, Any]) -> Tuple[List[int], List[float]]:
    """Expected score against slice number, for Slicer's plot."""
    rows = [r for r in quality_rows(result) if r.score is not None]
    return [r.index for r in rows], [r.score for r in rows]  # type: ignore[misc]


def plot(result: Dict[str, Any]) -> Plot:
    """The motion-quality chart: expected score per slice, in the study grade's colour."""
    xs, ys = plot_points(result)
    colour = tuple(c / 255.0 for c in summary_colour(result))
    return Plot("Motion quality per slice", "slice", "expected score (5 best)",
                {"slice": [float(x) for x in xs], "score": [float(y) for y in ys]},
                [Series("Expected score", "slice", "score", colour)], y_range=(0.5, 5.5))  # type: ignore[arg-type]
