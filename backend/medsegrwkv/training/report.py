"""Per-case evaluation report: failures are seen, not averaged away.

`evaluate --report DIR` writes every volume's Dice and HD95 (`cases.csv`), a Markdown page that
ranks the worst volumes by their worst structure (`report.md`), and for each of those a PNG with
the reference on the top row and the prediction below (`worst/<case>.png`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from medsegrwkv.io.montage import overlay_rows, save_png_atomic
from medsegrwkv.io.text import rows_csv, write_text_atomic
from medsegrwkv.training.metrics import STRUCTURES


def worst_structure_dice(row: dict[str, Any]) -> float:
    return min(row[f"{name}_dice"] for name in STRUCTURES.values())


def write_report(folder: Path, rows: list[dict[str, Any]], summary: dict[str, float],
                 predictions: dict[str, tuple[sitk.Image, sitk.Image, sitk.Image]], labels: list[dict[str, Any]],
                 title: str, worst: int = 5) -> list[dict[str, Any]]:
    """Write cases.csv, report.md and the worst cases' pictures; return the worst rows.
    `predictions` maps a case name to (image, reference, prediction)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "cases.csv", rows_csv(rows))
    ranked = sorted(rows, key=worst_structure_dice)[:worst]
    (folder / "worst").mkdir(exist_ok=True)
    fmt = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"  # noqa: E731
    lines = [f"# {title}", "",
             f"{len(rows)} volumes; mean Dice {summary['mean_dice']:.4f} (RV {summary['RV_dice']:.3f}, "
             f"Myo {summary['Myo_dice']:.3f}, LV {summary['LV_dice']:.3f}); mean HD95 {summary['mean_hd95']:.2f} mm.",
             "", f"## The {len(ranked)} worst volumes (by their worst structure's Dice)", "",
             "| case | group | RV Dice | Myo Dice | LV Dice | RV HD95 | Myo HD95 | LV HD95 | picture |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in ranked:
        image, reference, prediction = predictions[row["case"]]
        picture = overlay_rows([image, image], [reference, prediction], labels,
                               [f"{row['case']}: reference", "prediction"])
        save_png_atomic(picture, folder / "worst" / f"{row['case']}.png")
        lines.append(f"| {row['case']} | {row['group']} | " + " | ".join(fmt(row[f"{n}_dice"]) for n in STRUCTURES.values())
                     + " | " + " | ".join(fmt(row[f"{n}_hd95"]) for n in STRUCTURES.values())
                     + f" | ![{row['case']}](worst/{row['case']}.png) |")
    write_text_atomic(folder / "report.md", "\n".join(lines) + "\n")
    return ranked
