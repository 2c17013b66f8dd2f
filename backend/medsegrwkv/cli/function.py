"""`medsegrwkv function` (cardiac function of a whole cine) and `medsegrwkv evaluate-function`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from medsegrwkv.cli.common import (
    add_series_argument, bar_progress, check_report_outputs, print_warnings, progress_bar, write_outputs,
)
from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.io.text import rows_csv, write_text_atomic


def print_summary(data: dict[str, Any], file=None) -> None:
    out = file or sys.stdout
    print(f"{'phase':>5}  {'time ms':>8}  {'LV mL':>8}  {'RV mL':>8}  {'Myo mL':>8}", file=out)
    for row in data["curve"]:
        mark = " ED" if row["phase"] == data["ed_phase"] else " ES" if row["phase"] == data["es_phase"] else ""
        cells = [f"{row[k]:>8.1f}" if row[k] is not None else f"{'-':>8}" for k in ("time_ms", "lv_ml", "rv_ml", "myo_ml")]
        print(f"{row['phase']:>5}  " + "  ".join(cells) + mark, file=out)
    for name in ("lv", "rv"):
        v = data[name]
        if not v:
            continue
        line = (f"{name.upper()}: EDV {v['edv_ml']:.1f} mL, ESV {v['esv_ml']:.1f} mL, SV {v['sv_ml']:.1f} mL, "
                f"EF {v['ef_percent']:.1f}%" if v["ef_percent"] is not None else f"{name.upper()}: EF n/a")
        if v.get("mass_g") is not None:
            line += f", mass {v['mass_g']:.1f} g"
        if v.get("edv_ml_m2") is not None:
            line += f"; EDVi {v['edv_ml_m2']:.1f} mL/m2"
        print(line, file=out)
    if data["bsa_m2"] is not None:
        print(f"BSA {data['bsa_m2']:.2f} m2 (Mosteller)", file=out)


def info_cfg_body_size(study: Any) -> tuple[float | None, float | None, str | None]:
    """Height (cm) and weight (kg) from an ACDC Info.cfg beside a volume file, and that file's path."""
    from medsegrwkv.training.function_validation import body_from_info

    info = Path(study.source).parent / "Info.cfg"
    height, weight = body_from_info(info) if not study.files else (None, None)
    return (height, weight, str(info)) if height is not None and weight is not None else (None, None, None)


def cmd_function(args: argparse.Namespace) -> int:
    from medsegrwkv.io import read_study

    output, csv_path, png_path = check_report_outputs(args.output, args.csv, args.png)
    if png_path:
        from medsegrwkv.function.plots import require_matplotlib

        require_matplotlib()  # before any work: Slicer's Python may lack it
    study = read_study(args.input, series=args.series)
    height, weight, info = args.height_cm, args.weight_kg, None
    if height is None and weight is None:  # flags first, then the DICOM headers (study_function), then Info.cfg
        height, weight, info = info_cfg_body_size(study)
    # the network's libraries (torch, MONAI: seconds to import) only once the input is known to be sound
    from medsegrwkv.function.study import study_function

    segmenter = None
    if args.labels:
        labels = [image for path in args.labels for image in read_study(path).phases]
        print(f"{study.description}; labels from {', '.join(args.labels)}", file=sys.stderr)
    else:
        from medsegrwkv.inference.device import describe_device
        from medsegrwkv.inference.segmenter import Segmenter
        from medsegrwkv.nets.registry import DEFAULT_MODELS

        labels = None
        segmenter = Segmenter.from_pretrained(args.weights or args.model or DEFAULT_MODELS["segmentation"],
                                              args.device)
        print(f"{study.description}; model {segmenter.manifest['name']} on {describe_device(segmenter.device)}",
              file=sys.stderr)
    with progress_bar(100, "function") as bar:
        result = study_function(study, segmenter, phase_labels=labels, ed=args.ed, es=args.es, height_cm=height,
                                weight_kg=weight, tta=args.tta, progress=bar_progress(bar))
    report = {**result.report, "labels_from": list(args.labels) if args.labels else None}
    if info is not None:
        report["body_size_from"] = info
    print_warnings(report["warnings"])
    from medsegrwkv.function.plots import save_curve_png

    written = write_outputs([
        (output, lambda path: write_text_atomic(path, json.dumps(report, indent=2) + "\n")),
        (csv_path, lambda path: write_text_atomic(path, rows_csv(result.function.curve()))),
        (png_path, lambda path: save_curve_png(result.function, path, title=Path(study.source).name)),
    ])
    print_summary(report)
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_evaluate_function(args: argparse.Namespace) -> int:
    from medsegrwkv.function.plots import require_matplotlib
    from medsegrwkv.inference.device import resolve_tta
    from medsegrwkv.inference.segmenter import Segmenter
    from medsegrwkv.io.atomic import check_writable
    from medsegrwkv.nets.registry import DEFAULT_MODELS
    from medsegrwkv.training.function_validation import (
        patient_studies,
        report_markdown,
        sunnybrook_function,
        validate_function,
        write_validation,
    )

    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise MedSegError(f"The output {output} must be a folder.", code=ErrorCode.BAD_OUTPUT)
    require_matplotlib()
    patient_studies(args.data, args.split)  # data errors before the model is loaded
    output.mkdir(parents=True, exist_ok=True)
    check_writable(output / "function_validation.json")
    segmenter = Segmenter.from_pretrained(args.weights or args.model or DEFAULT_MODELS["segmentation"], args.device)
    tta = resolve_tta(args.tta, segmenter.device)
    with progress_bar(100, "evaluate-function") as bar:
        report = validate_function(args.data, segmenter, args.split, tta, progress=bar_progress(bar))
    if args.sunnybrook:
        contours = args.contours or str(Path(args.sunnybrook).parent / "contours")
        with progress_bar(100, "sunnybrook") as bar:
            report["sunnybrook"] = sunnybrook_function(args.sunnybrook, contours, segmenter, tta,
                                                       progress=bar_progress(bar))
    paths = write_validation(report, output)
    print(report_markdown(report))
    for path in paths:
        print(f"wrote {path}")
    return 0


def add_function_parser(sub: argparse._SubParsersAction,
                        add_model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("function", help="cardiac function of a whole cine: volume curves, EDV, ESV, SV, EF, LV mass",
                       description="Segment every phase of a cine short-axis study (or read its labelmaps with "
                       "--labels) and report the LV cavity, RV cavity and myocardium volume over the cycle, ED and "
                       "ES (largest and smallest LV cavity), LV and RV EDV, ESV, SV and EF, LV mass at ED and, with "
                       "height and weight, BSA (Mosteller) and indexed values. Volumes by Simpson's rule of discs. "
                       "STUDY is read like `segment` reads it.")
    p.add_argument("input", metavar="STUDY", help="4D NIfTI/NRRD/MHA file or DICOM cine folder")
    p.add_argument("-o", "--output", required=True, help="JSON report to write (function.json)")
    p.add_argument("--csv", help="also write the volume curve, one row per phase, to this CSV file")
    p.add_argument("--png", help="also draw the volume curves to this PNG (needs matplotlib)")
    p.add_argument("--labels", nargs="+", metavar="LABELMAP",
                   help="use these labelmaps instead of a model: one 4D file, or one 3D file per phase "
                   "(ACDC labels: 1 RV cavity, 2 LV myocardium, 3 LV cavity), on the study's voxel grid")
    p.add_argument("--ed", type=int, help="the end-diastolic phase (0-based; default: largest LV cavity)")
    p.add_argument("--es", type=int, help="the end-systolic phase (0-based; default: smallest LV cavity)")
    p.add_argument("--height-cm", type=float, help="patient height in cm (with --weight-kg: BSA and indexed values; "
                   "otherwise a DICOM study's PatientSize and PatientWeight, or an ACDC Info.cfg beside the file)")
    p.add_argument("--weight-kg", type=float, help="patient weight in kg")
    add_series_argument(p)
    add_model_args(p)
    p.set_defaults(func=cmd_function)

    e = sub.add_parser("evaluate-function", help="validate cardiac function against ground truth (ACDC split)",
                       description="For every patient of the split, the ED and ES frames as a two-phase study: "
                       "LV EDV, ESV, EF, mass and RV EDV, ESV, EF from the model against the ground truth, "
                       "summarised as Pearson r, bias, limits of agreement and MAE (the ACDC challenge's clinical "
                       "metrics). Writes function_validation.json, .md and a Bland-Altman .png into --output.")
    e.add_argument("--data", required=True, help="ACDC-layout folder (patientNNN/ with Info.cfg)")
    e.add_argument("--split", default="val", choices=("all", "train", "val"), help="default val")
    e.add_argument("--model", help="registered segmentation model (default: the default model)")
    e.add_argument("--weights", metavar="DIR", help="a weights folder; overrides --model")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    e.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="segment with the four in-plane rotations averaged (default: as deployed, on with a CUDA "
                   "GPU, off on the CPU)")
    e.add_argument("--output", default="outputs/function_validation", help="folder for the three files")
    e.add_argument("--sunnybrook", metavar="DICOM_DIR",
                   help="also compare with a Sunnybrook cine's expert contours (its DICOM folder)")
    e.add_argument("--contours", metavar="DIR", help="the Sunnybrook contour folder (i-contours, o-contours); "
                   "default: 'contours' beside DICOM_DIR")
    e.set_defaults(func=cmd_evaluate_function)
