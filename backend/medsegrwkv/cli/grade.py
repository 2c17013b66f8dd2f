"""`medsegrwkv grade` and `medsegrwkv train grade`, and the grading part of the demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsegrwkv.cli.common import (
    acdc_option_help, add_series_argument, bar_progress, check_report_outputs, data_root, given_options,
    print_warnings, progress_bar, show_config, write_outputs,
)
from medsegrwkv.io.text import rows_csv, write_text_atomic

if TYPE_CHECKING:
    import SimpleITK as sitk


def slice_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    lv = set(report["study"]["lv_slices"])
    volume_level = {v["phase"]: v["cmrxmotion_level"] for v in report.get("volumes", [])}
    rows = []
    for s in report["slices"]:
        row = {"phase": s["phase"], "index": s["index"], "slice": s["slice"], "expected_score": s["expected_score"],
               "score": s["score"], "grade": s["grade"], "confidence": s["confidence"], "diagnostic": s["diagnostic"],
               "p_diagnostic": s["p_diagnostic"], "lv": s["index"] in lv}
        row.update({f"p{k}": (s["probabilities"] or {}).get(str(k)) for k in range(1, 6)})
        row["not_graded"] = s.get("not_graded", "")
        row["volume_cmrxmotion_level"] = volume_level.get(s["phase"])  # the row's phase (volume), VOLUME_RULE
        if "file" in s:
            row["file"] = s["file"]
        rows.append(row)
    return rows


def csv_text(report: dict[str, Any]) -> str:
    return rows_csv(slice_rows(report))


def print_table(report: dict[str, Any], file=None) -> None:
    """The per-position table (probabilities averaged over the graded phases) and the study line."""
    out = file or sys.stdout
    phases = report["phases"]
    over = f"mean over {len(phases)} phases" if len(phases) > 1 else f"phase {phases[0]}"
    axis = "ijk"[report["slice_axis"]]
    print(f"motion grading, model {report['model']} ({over}); scores 5 excellent ... 1 non-diagnostic", file=out)
    print(f"{'slice (' + axis + ')':>9}  {'LV':<3}{'E[score]':>9}{'score':>6}  {'grade':<9}{'conf':>6}  "
          f"{'diagnostic':<10}{'worst phase':>12}", file=out)
    for p in sorted(report["positions"], key=lambda p: p["index"]):
        graded = (f"{p['expected_score']:>9.2f}{p['score']:>6}  {p['grade']:<9}{p['confidence']:>6.2f}  "
                  f"{'yes' if p['diagnostic'] else 'NO':<10}{p['worst_phase_score']:>12}" if p["grade"] else
                  f"{'-':>9}{'-':>6}  not graded: {p['not_graded']}")
        print(f"{p['index']:>9}  {'yes' if p['lv'] else '-':<3}{graded}", file=out)
    study = report["study"]
    print(f"study: {study['grade'] or 'not graded'} (score {study['score']}; {study['rule']}; LV slices from "
          f"{study['lv_slices_source']})", file=out)
    print(f"recommendation: {study['recommendation']}", file=out)
    levels = [f"phase {v['phase']}: {v['cmrxmotion_level']}" for v in report.get("volumes", [])
              if v["cmrxmotion_level"] is not None]
    if levels:
        print(f"CMRxMotion level per volume (1 mild, 2 intermediate, 3 severe; worst LV slice): {', '.join(levels)}",
              file=out)
    print(f"note: {report['caveat']}", file=out)


# -- grade ------------------------------------------------------------------------------------
def cmd_grade(args: argparse.Namespace) -> int:
    from medsegrwkv.io import read_study, select_phases
    from medsegrwkv.io.montage import save_png_atomic

    output, csv_path, png_path = check_report_outputs(args.output, args.csv, args.png)
    study = read_study(args.input, series=args.series)  # input errors before the model is loaded
    phases = select_phases(study, args.phase)
    # the network's libraries (torch, MONAI: seconds to import) only once the input is known to be sound
    from medsegrwkv.grading.grade import Grader, grade_study_with_pictures, read_lv_labels, strip_picture

    lv_labels = read_lv_labels(args.labels, len(study.phases), phases[0]) if args.labels else None
    grader = Grader.from_pretrained(args.weights or args.model, args.device)
    with progress_bar(100, "grade") as bar:
        report, pictures = grade_study_with_pictures(study, phase=args.phase, grader=grader,
                                                     lv_detection=not args.all_slices, progress=bar_progress(bar),
                                                     lv_labels=lv_labels)
    print(f"{report['description']}; model {report['model']} on {report['device']}", file=sys.stderr)
    print_warnings(report["warnings"])
    written = write_outputs([
        (output, lambda path: write_text_atomic(path, json.dumps(report, indent=2) + "\n")),
        (csv_path, lambda path: write_text_atomic(path, csv_text(report))),
        (png_path, lambda path: save_png_atomic(strip_picture(report, pictures), path)),
    ])
    print_table(report)
    for path in written:
        print(f"wrote {path}")
    return 0


def add_grade_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("grade", help="grade respiratory-motion artefacts of every slice (5-point score)",
                       description="Grade every slice (and phase) of a short-axis study for respiratory-motion "
                       "artefacts on the 5-point Likert scale (5 excellent ... 1 non-diagnostic; CMRxMotion levels "
                       "mild 4-5, moderate 3, severe 1-2). INPUT is read like `segment` reads it. The study grade is "
                       "the worst grade among the slices through the left ventricle.")
    p.add_argument("input", help="NIfTI/NRRD/MHA file or DICOM folder")
    p.add_argument("-o", "--output", required=True, help="JSON report to write (quality.json)")
    p.add_argument("--csv", help="also write one row per slice and phase to this CSV file")
    p.add_argument("--png", help="also write a strip of the slices framed in their grade's colour")
    p.add_argument("--phase", type=int, help="grade only this cardiac phase (0-based; default all)")
    add_series_argument(p)
    lv = p.add_mutually_exclusive_group()
    lv.add_argument("--all-slices", action="store_true",
                    help="aggregate over all slices instead of the slices through the LV (skips the segmentation)")
    lv.add_argument("--labels", metavar="FILE",
                    help="find the LV slices in this labelmap (e.g. from `segment`, corrected or not: the graded "
                         "phase's, or one per phase) instead of segmenting with the default model")
    p.add_argument("--model", help="registered grading model (default: the default grader; see `models`)")
    p.add_argument("--weights", metavar="DIR",
                   help="a grader weights folder, e.g. from `train grade`; overrides --model")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda (default auto)")
    p.set_defaults(func=cmd_grade)


# -- evaluate-grades ----------------------------------------------------------------------------
def cmd_evaluate_grades(args: argparse.Namespace) -> int:
    """`evaluate-grades`: the grader on TorchIO's artefacts (--torchio) and/or a CMRxMotion-layout folder."""
    from medsegrwkv.errors import ErrorCode, MedSegError

    if not args.torchio and not args.cmrxmotion:
        raise MedSegError("Say what to evaluate: --torchio (ACDC validation slices with TorchIO's motion and "
                          "ghosting) and/or --cmrxmotion DIR (volumes with an IQA.csv).", code=ErrorCode.BAD_INPUT)
    output = Path(args.output) if args.output else None
    if output is not None:
        if output.exists() and not output.is_dir():
            raise MedSegError(f"--output {output} is a file; give a folder.", code=ErrorCode.BAD_OUTPUT)
        output.mkdir(parents=True, exist_ok=True)
    model = args.weights or args.model
    results: dict[str, Any] = {}
    if args.torchio:
        from medsegrwkv.grading.external_evaluation import evaluate_torchio, report_lines, simulator_validation

        report = evaluate_torchio(args.data, model, args.device, args.split, args.max_cases)
        if args.simulator:
            sim = simulator_validation(args.data, model, args.device, args.max_cases, show_progress=True)
            report["own_simulator"] = {k: sim[k] for k in ("samples", "accuracy", "kappa", "kappa_linear",
                                                           "accuracy_3level", "kappa_3level", "ece", "recall")}
        print("\n".join(report_lines(report)))
        if "own_simulator" in report:
            o = report["own_simulator"]
            print(f"  own simulator: acc {o['accuracy']:.3f}  linear kappa {o['kappa_linear']:.3f}  "
                  f"acc3 {o['accuracy_3level']:.3f}  kappa3 {o['kappa_3level']:.3f}")
        results["torchio"] = report
        if output is not None:
            write_text_atomic(output / "torchio.json", json.dumps(report, indent=2) + "\n")
            print(f"wrote {output / 'torchio.json'}")
    if args.cmrxmotion:
        from medsegrwkv.grading.cmrxmotion import evaluate_cmrxmotion

        report = evaluate_cmrxmotion(args.cmrxmotion, model, args.device, lv_detection=not args.all_slices,
                                     labels_csv=args.labels)
        m = report["metrics"]
        print(f"CMRxMotion-form evaluation of {report['model']} on {m['volumes']} volumes: accuracy "
              f"{m['accuracy']:.3f}, linear-weighted kappa {m['kappa_linear']:.3f}, kappa {m['kappa']:.3f} "
              "(best published challenge test results: accuracy 0.725, kappa 0.631)")
        results["cmrxmotion"] = report
        if output is not None:
            write_text_atomic(output / "cmrxmotion.json", json.dumps(report, indent=2) + "\n")
            write_text_atomic(output / "cmrxmotion.csv", rows_csv(report["volumes"]))
            print(f"wrote {output / 'cmrxmotion.json'} and {output / 'cmrxmotion.csv'}")
    return 0


def add_evaluate_grades_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate-grades", help="evaluate the motion grader outside its own simulator",
                       description="--torchio: grade the ACDC validation slices clean and with TorchIO's RandomMotion "
                       "and RandomGhosting at 3 strengths (Spearman with strength, 3-level accuracy and linear kappa, "
                       "clean slices graded below 4 per slice position). --cmrxmotion DIR: grade every volume of a "
                       "folder with an IQA.csv (Image,Label: 1 mild, 2 intermediate, 3 severe) and score it as the "
                       "CMRxMotion challenge does (accuracy, Cohen's kappa). See docs/grading.md.")
    p.add_argument("--torchio", action="store_true", help="evaluate on TorchIO-corrupted ACDC validation slices")
    p.add_argument("--cmrxmotion", metavar="DIR", help="a CMRxMotion-layout folder (NIfTI volumes and IQA.csv)")
    p.add_argument("--labels", metavar="CSV", help="the quality-label CSV (default: the one CSV in --cmrxmotion)")
    p.add_argument("--data", default=str(data_root() / "acdc"), help=acdc_option_help() + ", for --torchio")
    p.add_argument("--split", default="val", help="ACDC split for --torchio (default val: the 20 validation patients)")
    p.add_argument("--max-cases", type=int, help="first N volumes of the split only (smoke tests)")
    p.add_argument("--simulator", action="store_true",
                   help="with --torchio, also the project's own simulated validation set, for comparison")
    p.add_argument("--all-slices", action="store_true",
                   help="--cmrxmotion: a volume's level from all its slices, not only those through the LV")
    p.add_argument("--model", help="registered grading model (default: the default grader)")
    p.add_argument("--weights", metavar="DIR", help="a grader weights folder; overrides --model")
    p.add_argument("--output", metavar="DIR", help="folder for torchio.json, cmrxmotion.json and cmrxmotion.csv")
    p.add_argument("--device", default="cpu", help="auto, cpu or cuda (default cpu)")
    p.set_defaults(func=cmd_evaluate_grades)


# -- train grade --------------------------------------------------------------------------------
def add_train_grade_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("grade (motion-artefact grader) options")
    g.add_argument("--sunnybrook", default=str(data_root() / "sunnybrook" / "SCD0000101"),
                   help="a study added to the training data (4 evenly spaced phases), or 'none' (default: "
                        "SCD0000101 under $MEDSEGRWKV_DATA/sunnybrook, else ../shared/data/sunnybrook)")
    g.add_argument("--val-per-slice", type=int, default=2, help="simulated scores per validation slice")
    g.add_argument("--max-minutes", type=float, help="stop at the first epoch end after this much training time")
    g.add_argument("--max-val-cases", type=int, help="use only the first N validation volumes (smoke tests)")
    g.add_argument("--cmrxmotion", help="real graded data in the CMRxMotion layout to mix into training")
    g.add_argument("--clean-fraction", type=float, default=0.15,
                   help="share of samples that are the untouched slice, labelled 5 (default 0.15)")
    g.add_argument("--position-balance", type=float, default=0.5,
                   help="0 uniform slice sampling ... 1 apical/mid/basal/beyond-heart slices equally often (default 0.5)")
    g.add_argument("--no-nuisance", action="store_true",
                   help="no coil-shading, resolution and noise augmentation of the slices")


def cmd_train_grade(args: argparse.Namespace) -> int:
    from medsegrwkv.grading.train import GradeTrainConfig, train_grader
    from medsegrwkv.nets.registry import parse_overrides

    sunny = None if str(args.sunnybrook).lower() == "none" else Path(args.sunnybrook)
    cfg = GradeTrainConfig(
        output=Path(args.output), data=Path(args.data), sunnybrook=sunny,
        device=args.device, **given_options(args, "model", "epochs", "batch_size", "lr", "seed", "workers"),
        val_per_slice=args.val_per_slice, max_steps=args.max_steps, max_cases=args.max_cases,
        max_val_cases=args.max_val_cases, max_minutes=args.max_minutes,
        cmrxmotion=Path(args.cmrxmotion) if args.cmrxmotion else None, init=args.init,
        validate=not args.no_validation, clean_fraction=args.clean_fraction, position_balance=args.position_balance,
        nuisance=not args.no_nuisance, overrides=parse_overrides(args.model or GradeTrainConfig.model, args.set or []))
    if args.show_config:
        return show_config(cfg)
    result = train_grader(cfg)
    best = result["best"] or {}
    summary = {k: best.get(k) for k in ("accuracy", "kappa", "kappa_linear", "accuracy_3level", "kappa_3level",
                                        "recall", "ece", "ece_temperature_scaled", "temperature")}
    print(json.dumps({"best_epoch": result["best_epoch"], "steps": result["steps"], "validation": summary}, indent=2))
    print(f"weights: {result['weights']} (use with `grade --weights`, or copy into the package)")
    return 0


# -- demo ----------------------------------------------------------------------------------------
def demo_grading(output: Path, device: str = "auto", lv_labels: sitk.Image | None = None) -> dict[str, Any] | None:
    """Grade the bundled Sunnybrook study, write quality.json and the PNG strip, print the table; the LV
    slices come from `lv_labels` (the demo's own segmentation of the first phase) when given."""
    from medsegrwkv.grading.grade import grade_study_with_pictures, strip_picture
    from medsegrwkv.io import sample_data_dir
    from medsegrwkv.io.montage import save_png_atomic
    from medsegrwkv.nets.registry import DEFAULT_MODELS
    from medsegrwkv.weights import weights_status
    from medsegrwkv.weights.store import WeightsStatus

    name = DEFAULT_MODELS["grading"]
    if weights_status(name) is not WeightsStatus.VERIFIED:
        print(f"motion grading skipped: the default grader {name} has no verified weights")
        return None
    report, pictures = grade_study_with_pictures(sample_data_dir() / "SCD0000101" / "dicom", model=name,
                                                 device=device, lv_labels=lv_labels)
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output / "SCD0000101_quality.json", json.dumps(report, indent=2) + "\n")
    save_png_atomic(strip_picture(report, pictures), output / "SCD0000101_quality.png")
    print()
    print_table(report)
    print(f"wrote {output / 'SCD0000101_quality.json'}")
    print(f"wrote {output / 'SCD0000101_quality.png'}")
    return report
