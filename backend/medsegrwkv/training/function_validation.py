"""Validation of cardiac function (`medsegrwkv evaluate-function`): predicted against expert volumes.

ACDC: for every patient of the split, the ED and ES frames (from Info.cfg) form a two-phase study;
the model's labelmaps and the ground truth give LV EDV, ESV, EF and mass and RV EDV, ESV and EF
(medsegrwkv.function, with ED and ES as the data set defines them). The summary is the ACDC
challenge's clinical form (Bernard et al., IEEE TMI 2018): Pearson correlation, bias (mean of
predicted - reference) and limits of agreement (bias +/- 1.96 SD), plus the mean absolute error.

Sunnybrook: a cine with expert LV contours at ED and ES (no RV contours, and no EF number is
published with the data), so the expert's EF is computed from the contours on the slices they
cover; ours is given on the whole stack and on the same slices.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.function import check_labels_match, compute_function
from medsegrwkv.function.cardiac import CardiacFunction, structure_values
from medsegrwkv.progress import ProgressFn, no_progress
from medsegrwkv.training.acdc import Case, list_cases

# (key, title, unit, where in the function JSON)
METRICS: list[tuple[str, str, str, str, str]] = [
    ("lv_edv", "LV EDV", "mL", "lv", "edv_ml"),
    ("lv_esv", "LV ESV", "mL", "lv", "esv_ml"),
    ("lv_ef", "LV EF", "%", "lv", "ef_percent"),
    ("lv_mass", "LV mass", "g", "lv", "mass_g"),
    ("rv_edv", "RV EDV", "mL", "rv", "edv_ml"),
    ("rv_esv", "RV ESV", "mL", "rv", "esv_ml"),
    ("rv_ef", "RV EF", "%", "rv", "ef_percent"),
]


def read_info_cfg(path: Path) -> dict[str, str]:
    """ACDC's Info.cfg ("Key: value" lines) as a dict of strings; {} when the file is missing."""
    if not path.is_file():
        return {}
    info = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def _float(value: str | None) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def body_from_info(path: Path) -> tuple[float | None, float | None]:
    """Height (cm) and weight (kg) from an ACDC Info.cfg; None for a missing file or value."""
    info = read_info_cfg(path)
    return _float(info.get("Height")), _float(info.get("Weight"))


def patient_studies(data: str | Path, split: str = "val") -> list[dict[str, Any]]:
    """Per patient: its ED and ES cases (frames named in Info.cfg), height and weight."""
    by_patient: dict[str, list[Case]] = {}
    for case in list_cases(data, split):
        by_patient.setdefault(case.patient, []).append(case)
    studies = []
    for patient, cases in sorted(by_patient.items()):
        info = read_info_cfg(cases[0].image.parent / "Info.cfg")
        frames = {c.frame: c for c in cases}
        try:
            ed, es = frames[int(info["ED"])], frames[int(info["ES"])]
        except (KeyError, ValueError):
            continue  # without Info.cfg's ED and ES frames the pair is not defined
        if ed.frame == es.frame:
            continue
        studies.append({"patient": patient, "group": ed.group, "ed": ed, "es": es,
                        "height_cm": _float(info.get("Height")), "weight_kg": _float(info.get("Weight"))})
    if not studies:
        raise MedSegError(f"No patient in {data} ({split} split) has labelled ED and ES frames named in its "
                          "Info.cfg.", code=ErrorCode.BAD_DATA)
    return studies


def metric_values(function: CardiacFunction) -> dict[str, float | None]:
    data = function.to_json()
    return {key: (data[part] or {}).get(field) for key, _, _, part, field in METRICS}


def agreement(predicted: Sequence[float], reference: Sequence[float]) -> dict[str, float | int | None]:
    """Pearson r, bias (mean predicted - reference), SD of the differences, limits of agreement, MAE."""
    pairs = [(p, r) for p, r in zip(predicted, reference) if p is not None and r is not None]
    n = len(pairs)
    if n == 0:
        return {"n": 0}
    p, r = np.array(pairs, dtype=float).T
    d = p - r
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    corr = float(np.corrcoef(p, r)[0, 1]) if n > 2 and p.std() > 0 and r.std() > 0 else None
    bias = float(d.mean())
    return {"n": n, "reference_mean": float(r.mean()), "predicted_mean": float(p.mean()), "r": corr, "bias": bias,
            "sd": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd, "mae": float(np.abs(d).mean())}


def validate_function(data: str | Path, segmenter: Any, split: str = "val", tta: bool = False,
                      progress: ProgressFn = no_progress) -> dict[str, Any]:
    """Predicted against ground-truth function for every patient of the split (ED = phase 0, ES = 1),
    segmented with or without TTA as `tta` says (the caller resolves the device's default)."""
    studies = patient_studies(data, split)
    labels = segmenter.manifest["labels"]
    patients = []
    for n, study in enumerate(studies):
        progress(n / len(studies), study["patient"])
        images = [sitk.ReadImage(str(study[k].image)) for k in ("ed", "es")]
        truth = [sitk.ReadImage(str(study[k].label)) for k in ("ed", "es")]
        for image, gt, key in zip(images, truth, ("ed", "es")):
            check_labels_match(image, gt, f"The ground truth {study[key].label}")
        predicted = segmenter.segment_phases(images, tta=tta)  # one study, as the deployed `function` segments it
        body = {"height_cm": study["height_cm"], "weight_kg": study["weight_kg"]}
        reference = compute_function(truth, labels, ed=0, es=1, **body)
        ours = compute_function(predicted, labels, ed=0, es=1, **body)
        auto_truth = compute_function(truth, labels, **body)
        auto_ours = compute_function(predicted, labels, **body)
        patients.append({
            "patient": study["patient"], "group": study["group"],
            "ed_frame": study["ed"].frame, "es_frame": study["es"].frame,
            "bsa_m2": ours.to_json()["bsa_m2"],
            "reference": metric_values(reference), "predicted": metric_values(ours),
            "ed_es_detected_from_truth": auto_truth.ed_phase == 0 and auto_truth.es_phase == 1,
            "ed_es_detected_from_prediction": auto_ours.ed_phase == 0 and auto_ours.es_phase == 1,
            "warnings": ours.warnings,
        })
    progress(1.0, "done")
    summary = {key: agreement([p["predicted"][key] for p in patients], [p["reference"][key] for p in patients])
               for key, *_ in METRICS}
    views = "TTA over the four in-plane rotations" if tta else "no TTA"
    return {
        "data": str(data), "split": split, "model": segmenter.manifest["name"], "tta": tta, "patients": patients,
        "summary": summary,
        "ed_es_detection": {
            "from_truth": sum(p["ed_es_detected_from_truth"] for p in patients),
            "from_prediction": sum(p["ed_es_detected_from_prediction"] for p in patients),
            "of": len(patients),
            "rule": "ED = larger LV cavity volume, ES = smaller, against Info.cfg's ED and ES frames",
        },
        "method": "Two-phase studies (Info.cfg's ED and ES frames); medsegrwkv.function (Simpson's rule of discs) "
                  f"on the model's labelmaps (deployed pipeline: post-processing on, {views}) and on the ground "
                  "truth. Differences are predicted - reference; limits of agreement = bias +/- 1.96 SD.",
    }


def _restrict(labelmap: sitk.Image, slices: Sequence[int]) -> sitk.Image:
    """The labelmap with every slice (array axis 0) outside `slices` cleared."""
    array = sitk.GetArrayFromImage(labelmap)
    keep = np.zeros(array.shape[0], dtype=bool)
    keep[list(slices)] = True
    array[~keep] = 0
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(labelmap)
    return out


def sunnybrook_function(dicom_dir: str | Path, contour_dir: str | Path, segmenter: Any, tta: bool = False,
                        progress: ProgressFn = no_progress) -> dict[str, Any]:
    """Our function on a Sunnybrook cine against the expert's LV contours at ED and ES."""
    from medsegrwkv.io import read_study
    from medsegrwkv.io.contours import sunnybrook_reference

    study = read_study(dicom_dir)
    references = sunnybrook_reference(study, contour_dir, dicom_dir)
    labels = segmenter.manifest["labels"]
    values = structure_values(labels)
    lv, myo = values["lv"], values["myo"]
    if len(references) != 2:
        raise MedSegError(f"The contours in {contour_dir} cover {len(references)} phases; ED and ES are needed.",
                          code=ErrorCode.BAD_DATA)

    def lv_ml(image: sitk.Image, value: int, slices: Sequence[int] | None = None) -> float:
        array = sitk.GetArrayViewFromImage(image)
        if slices is not None:
            array = array[list(slices)]
        return float(np.count_nonzero(array == value) * np.prod(image.GetSpacing()) / 1000.0)

    volumes = {p: lv_ml(ref.labelmap, lv) for p, ref in references.items()}
    expert_ed = max(volumes, key=volumes.__getitem__)
    expert_es = min(volumes, key=volumes.__getitem__)
    predicted = segmenter.segment_phases(study.phases, tta=tta, progress=progress)  # as the deployed `function` does
    progress(1.0, "done")
    ours = compute_function(predicted, labels, trigger_times_ms=study.trigger_times)
    at_expert = compute_function(predicted, labels, trigger_times_ms=study.trigger_times, ed=expert_ed, es=expert_es)
    ed_slices, es_slices = references[expert_ed].slices, references[expert_es].slices
    ours_edv = lv_ml(predicted[expert_ed], lv, ed_slices)
    ours_esv = lv_ml(predicted[expert_es], lv, es_slices)
    expert_edv, expert_esv = volumes[expert_ed], volumes[expert_es]
    return {
        "study": str(dicom_dir), "description": study.description, "model": segmenter.manifest["name"],
        "phases": len(study.phases),
        "expert": {"ed_phase": expert_ed, "es_phase": expert_es, "ed_slices": list(ed_slices),
                   "es_slices": list(es_slices), "lv_edv_ml": round(expert_edv, 2), "lv_esv_ml": round(expert_esv, 2),
                   "lv_ef_percent": round(100 * (expert_edv - expert_esv) / expert_edv, 2),
                   "lv_mass_g": round(1.05 * lv_ml(references[expert_ed].labelmap, myo), 2),
                   "note": "from the expert's LV contours on the slices they cover (no EF number is published with "
                           "the data; no RV contours exist)"},
        "ours_on_contoured_slices": {"lv_edv_ml": round(ours_edv, 2), "lv_esv_ml": round(ours_esv, 2),
                                     "lv_ef_percent": round(100 * (ours_edv - ours_esv) / ours_edv, 2)
                                     if ours_edv else None,
                                     "lv_mass_g": round(1.05 * lv_ml(predicted[expert_ed], myo, ed_slices), 2)},
        "ours_whole_stack_at_expert_phases": at_expert.to_json(),
        "ours_whole_stack_detected_phases": ours.to_json(),
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def report_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Cardiac function: validation ({report['model']})", "",
        f"Data: `{report['data']}`, {report['split']} split, {len(report['patients'])} patients. "
        f"{report['method']}", "",
        "| measure | n | reference mean | predicted mean | r | bias | limits of agreement | MAE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, title, unit, _, _ in METRICS:
        s = report["summary"][key]
        if not s.get("n"):
            continue
        lines.append(f"| {title} ({unit}) | {s['n']} | {_fmt(s['reference_mean'])} | {_fmt(s['predicted_mean'])} | "
                     f"{_fmt(s['r'], 3)} | {s['bias']:+.1f} | {s['loa_low']:+.1f} to {s['loa_high']:+.1f} | "
                     f"{_fmt(s['mae'])} |")
    d = report["ed_es_detection"]
    lines += ["", f"ED/ES detection ({d['rule']}): right in {d['from_truth']} of {d['of']} patients from the ground "
              f"truth, {d['from_prediction']} of {d['of']} from the model's labelmaps.", "",
              "Per patient (reference / predicted):", "",
              "| patient | group | " + " | ".join(f"{t} ({u})" for _, t, u, _, _ in METRICS) + " |",
              "|---|---|" + "---|" * len(METRICS)]
    for p in report["patients"]:
        cells = [f"{_fmt(p['reference'][k])} / {_fmt(p['predicted'][k])}" for k, *_ in METRICS]
        lines.append(f"| {p['patient']} | {p['group'] or ''} | " + " | ".join(cells) + " |")
    sunny = report.get("sunnybrook")
    if sunny:
        e, o = sunny["expert"], sunny["ours_on_contoured_slices"]
        whole, detected = sunny["ours_whole_stack_at_expert_phases"], sunny["ours_whole_stack_detected_phases"]
        case = Path(sunny["study"]).name if Path(sunny["study"]).name != "dicom" else Path(sunny["study"]).parent.name
        lines += ["", f"## Sunnybrook {case} ({sunny['description']})", "",
                  f"Expert: {e['note']}. ED is phase {e['ed_phase']}, ES phase {e['es_phase']}; contours on "
                  f"{len(e['ed_slices'])} (ED) and {len(e['es_slices'])} (ES) slices.", "",
                  "| | LV EDV (mL) | LV ESV (mL) | LV EF (%) | LV mass (g) |", "|---|---|---|---|---|",
                  f"| expert contours | {e['lv_edv_ml']:.1f} | {e['lv_esv_ml']:.1f} | {e['lv_ef_percent']:.1f} | "
                  f"{e['lv_mass_g']:.1f} |",
                  f"| ours, same slices | {o['lv_edv_ml']:.1f} | {o['lv_esv_ml']:.1f} | {_fmt(o['lv_ef_percent'])} | "
                  f"{o['lv_mass_g']:.1f} |",
                  f"| ours, whole stack | {_fmt(whole['lv']['edv_ml'])} | {_fmt(whole['lv']['esv_ml'])} | "
                  f"{_fmt(whole['lv']['ef_percent'])} | {_fmt(whole['lv']['mass_g'])} |", "",
                  f"From the whole cine ({sunny['phases']} phases) our curve puts ED at phase {detected['ed_phase']} "
                  f"and ES at phase {detected['es_phase']} (expert: {e['ed_phase']} and {e['es_phase']}); LV EF "
                  f"{_fmt(detected['lv']['ef_percent'])}%, RV EF {_fmt((detected['rv'] or {}).get('ef_percent'))}%."]
    return "\n".join(lines) + "\n"


def save_bland_altman_png(report: dict[str, Any], path: str | Path) -> None:
    """Bland-Altman plots (difference against mean) of the seven measures, and LV EF against the reference."""
    from medsegrwkv.function.plots import require_matplotlib, save_figure_atomic

    plt = require_matplotlib()
    figure, axes = plt.subplots(2, 4, figsize=(16, 7.5))
    for ax, (key, title, unit, _, _) in zip(axes.flat, METRICS):
        pairs = [(p["predicted"][key], p["reference"][key]) for p in report["patients"]
                 if p["predicted"][key] is not None and p["reference"][key] is not None]
        s = report["summary"][key]
        if not pairs:
            ax.set_visible(False)
            continue
        pred, ref = np.array(pairs, dtype=float).T
        ax.scatter((pred + ref) / 2, pred - ref, s=16, color="#1f77b4")
        ax.axhline(s["bias"], color="#d62728", label=f"bias {s['bias']:+.1f}")
        for limit in (s["loa_low"], s["loa_high"]):
            ax.axhline(limit, color="grey", linestyle="--")
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_title(f"{title} (r = {_fmt(s['r'], 3)}, LoA {s['loa_low']:+.1f} to {s['loa_high']:+.1f})", fontsize=9)
        ax.set_xlabel(f"mean of predicted and reference ({unit})", fontsize=8)
        ax.set_ylabel(f"predicted - reference ({unit})", fontsize=8)
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    ax = axes.flat[len(METRICS)]
    pairs = [(p["predicted"]["lv_ef"], p["reference"]["lv_ef"]) for p in report["patients"]
             if p["predicted"]["lv_ef"] is not None and p["reference"]["lv_ef"] is not None]
    if pairs:
        pred, ref = np.array(pairs, dtype=float).T
        ax.scatter(ref, pred, s=16, color="#2ca02c")
        low, high = float(min(ref.min(), pred.min())) - 3, float(max(ref.max(), pred.max())) + 3
        ax.plot([low, high], [low, high], color="black", linewidth=0.5)
        ax.set_xlabel("reference LV EF (%)", fontsize=8)
        ax.set_ylabel("predicted LV EF (%)", fontsize=8)
        ax.set_title("LV EF, predicted against reference", fontsize=9)
        ax.grid(alpha=0.3)
    figure.suptitle(f"Cardiac function, {report['model']} against ground truth ({len(report['patients'])} ACDC "
                    f"{report['split']} patients)", fontsize=11)
    figure.tight_layout()
    save_figure_atomic(figure, path)


def write_validation(report: dict[str, Any], output: str | Path) -> list[Path]:
    """function_validation.json, .md and .png in `output` (atomic writes)."""
    from medsegrwkv.io.text import write_text_atomic

    folder = Path(output)
    paths = [folder / "function_validation.json", folder / "function_validation.md", folder / "function_validation.png"]
    write_text_atomic(paths[0], json.dumps(report, indent=2) + "\n")
    write_text_atomic(paths[1], report_markdown(report))
    save_bland_altman_png(report, paths[2])
    return paths
