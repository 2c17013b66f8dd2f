"""`medsegrwkv`: segment cardiac cine MRI, list models, train, evaluate, run the demo.

Every user mistake ends in one sentence on stderr and exit code 2, with no output file left
behind. Heavy libraries are imported inside commands, so that `--help` is instant, and `segment`,
`grade` and `function` import torch and MONAI (seconds) only after the input, the output and the ROI
have passed their checks, so that a refused request is answered at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from medsegrwkv import __version__
from medsegrwkv.cli.common import (
    acdc_option_help, add_series_argument, bar_progress, check_output, data_root, given_options, print_warnings,
    progress_bar, show_config,
)
from medsegrwkv.errors import ErrorCode, MedSegError

EXIT_USER_ERROR = 2


# -- segment ---------------------------------------------------------------------------------------
def cmd_segment(args: argparse.Namespace) -> int:
    from medsegrwkv.io import SUPPORTED_SUFFIXES, read_study, select_phases, write_labelmap
    from medsegrwkv.preprocess import parse_voxel_roi, resolve_roi

    output = Path(args.output)
    check_output(output, SUPPORTED_SUFFIXES)
    if args.roi and args.roi_ras:
        raise MedSegError("Give the ROI either as voxels (--roi) or in RAS mm (--roi-ras), not both.",
                          code=ErrorCode.BAD_ROI)
    voxels = parse_voxel_roi(args.roi) if args.roi else None
    study = read_study(args.input, series=args.series)
    phases = select_phases(study, args.phase)
    roi = resolve_roi(study.phases[phases[0]], voxels=[*voxels.start, *voxels.stop] if voxels else None,
                      ras=_floats(args.roi_ras, 6, "--roi-ras") if args.roi_ras else None)
    # the network's libraries (torch, MONAI: seconds to import) only once the request is known to be sound
    from medsegrwkv.inference.device import describe_device
    from medsegrwkv.inference.segmenter import Segmenter
    from medsegrwkv.inference.study import segment_study
    from medsegrwkv.nets.registry import DEFAULT_MODELS

    segmenter = Segmenter.from_pretrained(args.weights or args.model or DEFAULT_MODELS["segmentation"], args.device)
    print(f"{study.description}; model {segmenter.manifest['name']} on {describe_device(segmenter.device)}",
          file=sys.stderr)
    with progress_bar(100, "segment") as bar:
        result = segment_study(study, phases, segmenter, roi=roi, tta=args.tta,
                               postprocessing=not args.no_postprocess, progress=bar_progress(bar))
    write_labelmap(result.labels, output)
    for row in result.volume_rows():
        print(f"phase {row.pop('phase')}: " + ", ".join(f"{name} {ml:.1f} mL" for name, ml in row.items()))
    print_warnings(result.warnings)
    print(f"wrote {output} ({len(result.labels)} phase{'s' if len(result.labels) > 1 else ''})")
    return 0


def _floats(text: str, count: int, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise MedSegError(f"{option} needs {count} comma-separated numbers, got '{text}'.", code=ErrorCode.BAD_ROI)
    return values


# -- models ----------------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    import json

    from medsegrwkv.nets.complexity import complexity
    from medsegrwkv.nets.registry import DEFAULT_MODELS, list_models
    from medsegrwkv.weights import load_manifest, weights_status

    rows = []
    for spec in list_models():
        manifest = load_manifest(spec.name) or {}
        metrics = manifest.get("metrics", {}).get("validation", {})
        rows.append({
            "name": spec.name, "task": spec.task, "spatial_dims": spec.spatial_dims,
            **complexity(spec.name),
            "weights": weights_status(spec.name).value,
            "default": DEFAULT_MODELS.get(spec.task) == spec.name,
            "validation_mean_dice": metrics.get("mean_dice"),
            "validation_kappa_linear": metrics.get("kappa_linear"),  # grading models (simulated motion)
            "description": spec.description,
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows) + 3  # room for the default's " *"
    print(f"{'model':<{width}}{'task':<14}{'dims':>4}{'params':>10}{'GFLOPs':>9}  {'weights':<18}{'val Dice':>9}  "
          "description")
    for r in rows:
        dice = f"{r['validation_mean_dice']:.4f}" if r["validation_mean_dice"] is not None else "-"
        if r["validation_kappa_linear"] is not None:
            dice = f"k {r['validation_kappa_linear']:.3f}"
        name = r["name"] + (" *" if r["default"] else "")
        print(f"{name:<{width}}{r['task']:<14}{r['spatial_dims']:>3}D{r['params'] / 1e6:>9.2f}M{r['gflops']:>9.2f}  "
              f"{r['weights']:<18}{dice:>9}  {r['description']}")
    print("* default for its task; GFLOPs per 256x256 slice (2D; graders: per 224x224 slice) or per "
          "sliding-window crop (3D); graders show 'k': linear-weighted kappa on simulated motion")
    return 0


# -- evaluate --------------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from medsegrwkv.inference.device import resolve_device, resolve_tta
    from medsegrwkv.inference.segmenter import Segmenter
    from medsegrwkv.io.text import write_text_atomic
    from medsegrwkv.nets.registry import DEFAULT_MODELS
    from medsegrwkv.training.acdc import list_cases
    from medsegrwkv.training.evaluation import evaluate_cases
    from medsegrwkv.io.text import rows_csv
    from medsegrwkv.training.report import worst_structure_dice, write_report
    from medsegrwkv.weights import load_manifest
    from medsegrwkv.weights.model_card import all_patients

    output = Path(args.output) if args.output else None
    if output:
        check_output(output, (".csv",))
    report = Path(args.report) if args.report else None
    if report and report.exists() and not report.is_dir():
        raise MedSegError(f"--report {report} is a file; give a folder for the report.", code=ErrorCode.BAD_OUTPUT)
    if report:  # its folder, or the folder it will be made in, must be writable
        check_output((report if report.is_dir() else report.parent) / "report.md", (".md",))
    tta = resolve_tta(args.tta, resolve_device(args.device))
    if (args.record or args.record_recipe_in) and (not args.weights or args.split != "val" or tta or args.max_cases):
        raise MedSegError("--record and --record-recipe-in need --weights DIR and --split val, without TTA (--no-tta "
                          "on a GPU) or --max-cases: they store the validation metrics in a manifest.",
                          code=ErrorCode.BAD_ARGUMENT)
    weights_manifest = (load_manifest(args.weights) or {}) if args.weights else {}
    if args.record and all_patients(weights_manifest):
        raise MedSegError(f"{args.weights} was trained on the validation patients too, so it has no validation of "
                          "its own; record its recipe's with --record-recipe-in.", code=ErrorCode.BAD_ARGUMENT)
    final = load_manifest(args.record_recipe_in) if args.record_recipe_in else None
    if args.record_recipe_in and not (final and all_patients(final)):
        raise MedSegError(f"--record-recipe-in {args.record_recipe_in} is not a weights folder trained with "
                          "--all-patients.", code=ErrorCode.BAD_ARGUMENT)
    if args.max_cases is not None and args.max_cases < 1:
        raise MedSegError("--max-cases must be at least 1.", code=ErrorCode.BAD_ARGUMENT)
    cases = list_cases(args.data, args.split)[: args.max_cases]
    segmenter = Segmenter.from_pretrained(args.weights or args.model or DEFAULT_MODELS["segmentation"], args.device)
    kept: dict[str, tuple] = {}
    rows, summary = evaluate_cases(segmenter, cases, tta=tta, on_prediction=(
        (lambda case, image, reference, pred: kept.__setitem__(case.name, (image, reference, pred))) if report else None))
    if args.record or args.record_recipe_in:
        from medsegrwkv.training.loop import record_validation
        from medsegrwkv.weights.model_card import render_segmentation_card
    if args.record:
        record_validation(Path(args.weights), summary, len(rows), render_segmentation_card)
    if args.record_recipe_in:
        trained = weights_manifest.get("training", {})
        members = [m["weights"] for m in trained.get("ensemble_of", [])]
        recipe = (f"the ensemble of {' and '.join(members)}, each trained without them, with the same votes"
                  if members else f"{args.weights}, epoch {trained.get('epochs_completed')}")
        record_validation(Path(args.record_recipe_in), summary, len(rows), render_segmentation_card, source=(
            f"Measured on the {len(rows)} validation volumes by the same recipe trained without the validation "
            f"patients ({recipe}); these weights were trained on those patients too, so they have no validation "
            "of their own."))
    if output:
        write_text_atomic(output, rows_csv(rows))
    name = segmenter.manifest["name"]
    print(f"{len(rows)} volumes, model {name}, split {args.split}")
    print(f"{'structure':<10}{'Dice':>8}{'HD95 (mm)':>11}")
    for s in ("RV", "Myo", "LV", "mean"):
        print(f"{s:<10}{summary[f'{s}_dice']:>8.4f}{summary[f'{s}_hd95']:>11.2f}")
    if report:
        worst = write_report(report, rows, summary, kept, segmenter.manifest["labels"],
                             f"{name} on {args.data} ({args.split}, {len(rows)} volumes)", args.worst)
        print("worst volumes (lowest structure Dice): " + ", ".join(
            f"{r['case']} {worst_structure_dice(r):.3f}" for r in worst))
    if args.robustness or args.stress:
        from medsegrwkv.training.robustness import (
            HEART_SIZES, PERTURBATIONS, STRESS, evaluate_robustness, render_robustness,
        )

        table = evaluate_robustness(segmenter, cases, (*PERTURBATIONS, *HEART_SIZES, *(STRESS if args.stress else ())),
                                    tta=tta)
        print(render_robustness(table), end="")
        if report:
            write_text_atomic(report / "robustness.md", f"# {name}: other scanners' looks\n\n" + render_robustness(table))
            write_text_atomic(report / "robustness.csv", rows_csv(table))
    if output:
        print(f"wrote {output}")
    if report:
        print(f"wrote the per-case report to {report}")
    if args.record:
        print(f"recorded the validation metrics in {Path(args.weights) / 'manifest.json'}")
    if args.record_recipe_in:
        print(f"recorded them as the recipe's in {Path(args.record_recipe_in) / 'manifest.json'}")
    return 0


# -- train -----------------------------------------------------------------------------------------
def cmd_compare(args: argparse.Namespace) -> int:
    import torch

    from medsegrwkv.benchmark.compare import compare_weights, render_table, write_comparison

    if args.threads < 1 or args.repeats < 1:
        raise MedSegError("--threads and --repeats must be at least 1.", code=ErrorCode.BAD_ARGUMENT)
    if bool(args.record_in) != bool(args.title):
        raise MedSegError("--record-in WEIGHTS and --title TEXT go together: the table is stored under its title.",
                          code=ErrorCode.BAD_ARGUMENT)
    if args.record_in and not (Path(args.record_in) / "manifest.json").is_file():
        raise MedSegError(f"--record-in {args.record_in} is not a weights folder (no manifest.json).",
                          code=ErrorCode.BAD_ARGUMENT)
    output = Path(args.output)
    check_output(output, (".md",))
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        rows = compare_weights([Path(w) if Path(w).exists() else w for w in args.weights], args.repeats)
    finally:
        torch.set_num_threads(threads)
    write_comparison(rows, output)
    print(render_table(rows))
    if args.record_in:
        from medsegrwkv.training.loop import record_comparison
        from medsegrwkv.weights.model_card import render_segmentation_card

        if rows[0]["task"] == "grading":
            from medsegrwkv.grading.train import model_card

            record_comparison(Path(args.record_in), args.title, rows, lambda manifest, *_: model_card(manifest))
        else:
            record_comparison(Path(args.record_in), args.title, rows, render_segmentation_card)
        print(f"recorded the table in {Path(args.record_in) / 'manifest.json'} and its model card")
    return 0


def cmd_average_weights(args: argparse.Namespace) -> int:
    from medsegrwkv.training.soup import average_weights

    out = average_weights([Path(w) if Path(w).exists() else w for w in args.weights], Path(args.output))
    print(f"wrote {out} (the average of {len(args.weights)} weights folders); validate it with "
          f"`medsegrwkv evaluate --split val --weights {out} --record`")
    return 0


def cmd_ensemble_weights(args: argparse.Namespace) -> int:
    from medsegrwkv.training.ensemble import ensemble_weights

    votes = args.votes or [1.0] * len(args.weights)
    out = ensemble_weights([Path(w) if Path(w).exists() else w for w in args.weights], votes, Path(args.output))
    print(f"wrote {out} (an ensemble of {len(args.weights)} networks, votes {votes}); validate it with "
          f"`medsegrwkv evaluate --split val --weights {out} --record`")
    return 0


def cmd_evaluate_clicks(args: argparse.Namespace) -> int:
    from medsegrwkv.cli.refine import cmd_evaluate_clicks as run

    return run(args)


def cmd_train(args: argparse.Namespace) -> int:
    import json

    for option, tasks in (("all_patients", ("segment",)), ("augmentation", ("segment", "refine")),
                          ("automatic", ("refine",)), ("teacher", ("segment",)), ("teacher_tta", ("segment",)),
                          ("distill_weight", ("segment",)), ("dice", ("segment",)), ("hard_slices", ("segment",)),
                          ("average_from", ("segment",))):
        if getattr(args, option) and args.task not in tasks:
            raise MedSegError(f"--{option.replace('_', '-')} is for `train {' or '.join(tasks)}`, not "
                              f"`train {args.task}`.", code=ErrorCode.BAD_ARGUMENT)
    if args.task == "grade":
        from medsegrwkv.cli.grade import cmd_train_grade

        return cmd_train_grade(args)
    if args.task == "refine":
        from medsegrwkv.cli.refine import cmd_train_refine

        return cmd_train_refine(args)
    from medsegrwkv.nets.registry import parse_overrides
    from medsegrwkv.training.segmentation import TrainConfig, train_segmentation

    model = args.model or TrainConfig.model
    cfg = TrainConfig(data=Path(args.data), output=Path(args.output), device=args.device, max_steps=args.max_steps,
                      max_cases=args.max_cases, validate=not (args.no_validation or args.all_patients), init=args.init,
                      patients="all" if args.all_patients else "train", teacher=args.teacher,
                      teacher_tta=args.teacher_tta,
                      overrides=parse_overrides(model, args.set or []),
                      **given_options(args, "model", "epochs", "batch_size", "lr", "crop", "val_every", "seed",
                                      "workers", "augmentation", "distill_weight", "dice", "hard_slices",
                                      "average_from"))
    if args.show_config:
        return show_config(cfg)
    result = train_segmentation(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in result.items() if k not in ("config", "model")}, indent=2))
        print(f"weights: {Path(args.output) / 'weights'} (use with --weights, or copy into the package)")
    return 0


# -- benchmark -----------------------------------------------------------------------------------
def _sizes(text: str | None, option: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 8:
        raise MedSegError(f"{option} needs comma-separated sizes of at least 8 pixels, got '{text}'.",
                          code=ErrorCode.BAD_ARGUMENT)
    return sizes


def cmd_benchmark(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from medsegrwkv.benchmark import FULL, QUICK, run_benchmark
    from medsegrwkv.benchmark.report import render_markdown
    from medsegrwkv.inference.device import resolve_device

    resolve_device(args.device)  # an unusable device fails before any work
    if args.repeats is not None and args.repeats < 1:
        raise MedSegError("--repeats must be at least 1.", code=ErrorCode.BAD_ARGUMENT)
    base = QUICK if args.quick else FULL
    settings = replace(base, device=args.device, repeats=args.repeats or base.repeats,
                       sizes_2d=_sizes(args.sizes, "--sizes") or base.sizes_2d,
                       sizes_3d=_sizes(args.crops, "--crops") or base.sizes_3d)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    output = Path(args.output)
    report = run_benchmark(models, settings, output)
    print(render_markdown(report))
    print(f"wrote {output / 'benchmark.json'} and {output / 'benchmark.md'}")
    return 0


# -- demo ----------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from medsegrwkv.cli.demo import print_report, run_demo

    result = run_demo(Path(args.output), args.model, args.device)
    print_report(result)
    from medsegrwkv.cli.grade import demo_grading

    demo_grading(Path(args.output), args.device, lv_labels=result["labelmaps"][0])
    return 0


# -- engine --------------------------------------------------------------------------------------
def cmd_engine(args: argparse.Namespace) -> int:
    from medsegrwkv.engine import run_stdio

    return run_stdio()


# -- parser ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medsegrwkv",
        description="Segment the LV cavity, LV myocardium and RV cavity in cardiac cine MRI, locally on the "
                    "GPU or CPU. Labelmaps use 0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity.",
        epilog="Example: medsegrwkv segment study_dicom_folder/ -o labels.nii.gz --phase 0")
    parser.add_argument("--version", action="version", version=f"medsegrwkv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="registered model name (default: the best with weights; see `models`)")
        p.add_argument("--weights", metavar="DIR", help="a weights folder (model.safetensors + manifest.json), "
                       "e.g. from `medsegrwkv train`; overrides --model")
        p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda (default auto)")
        p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                       help="average predictions over the four in-plane rotations (4x the network time; "
                       "default: on with a CUDA GPU, off on the CPU)")

    p = sub.add_parser("segment", help="segment a study (file or DICOM folder) into a labelmap",
                       description="Segment a short-axis study. INPUT is a NIfTI/NRRD/MHA file (3D, or 4D with "
                       "phases on t) or a DICOM folder (a cine series is split into phases). Without --phase every "
                       "phase is segmented and OUTPUT is a 4D labelmap (phases on t); with --phase it is 3D. "
                       "OUTPUT has exactly the input's geometry.")
    p.add_argument("input", help="NIfTI/NRRD/MHA file or DICOM folder")
    p.add_argument("-o", "--output", required=True, help="labelmap to write (.nii.gz, .nrrd, .mha, ...)")
    p.add_argument("--phase", type=int, help="segment only this cardiac phase (0-based)")
    add_series_argument(p)
    p.add_argument("--roi", metavar="i0,j0,k0,i1,j1,k1", help="voxel box to segment (start inclusive, stop "
                   "exclusive, in the input's index order); outside it the labelmap is background")
    p.add_argument("--roi-ras", metavar="r0,a0,s0,r1,a1,s1", help="the same box given as two RAS corners in mm")
    p.add_argument("--no-postprocess", action="store_true",
                   help="keep every connected piece and hole (default: largest component, holes filled)")
    add_model_args(p)
    p.set_defaults(func=cmd_segment)

    from medsegrwkv.cli.cohort import add_cohort_parser
    from medsegrwkv.cli.function import add_function_parser
    from medsegrwkv.cli.grade import add_evaluate_grades_parser, add_grade_parser, add_train_grade_args

    add_cohort_parser(sub, add_model_args)
    add_function_parser(sub, add_model_args)
    add_grade_parser(sub)
    add_evaluate_grades_parser(sub)

    p = sub.add_parser("models", help="list the models, their size and whether weights are installed")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("evaluate", help="Dice and HD95 per volume and structure on a labelled ACDC-layout folder",
                       description="Segment every labelled frame of an ACDC-layout folder with the deployed "
                       "pipeline and report Dice and HD95 (mm, from the image spacing) per structure.")
    p.add_argument("--data", required=True, help="folder with patientNNN/patientNNN_frameXX(.nii.gz|_gt.nii.gz)")
    p.add_argument("--split", default="all", choices=("all", "train", "val"),
                   help="which patients: all, or the fixed train/validation split (number %% 20 in 13-16 -> val)")
    p.add_argument("--output", help="CSV with one row per volume")
    p.add_argument("--report", metavar="DIR", help="per-case report folder: cases.csv, report.md ranking the worst "
                   "volumes, and a PNG of each (reference above, prediction below)")
    p.add_argument("--worst", type=int, default=5, help="how many worst volumes the report shows (default 5)")
    p.add_argument("--robustness", action="store_true",
                   help="also score each volume under other scanners' looks (pixel size 0.75/1.9 mm, lower "
                   "resolution, wider/tighter field of view, bias field, gamma, noise, Gibbs ringing) and with "
                   "hearts 0.6x and 1.6x as large, and print the Dice drop of each; with --report also "
                   "robustness.md/.csv")
    p.add_argument("--stress", action="store_true",
                   help="--robustness with stronger looks too (8%% noise, gamma 0.45 and 2.2, a non-linear "
                   "contrast curve, 3.5 mm acquisition, strong ringing): how far the model is from failing")
    p.add_argument("--max-cases", type=int, help="use only the first N volumes of the split (quick checks)")
    p.add_argument("--record", action="store_true",
                   help="store the validation metrics in the --weights folder's manifest and model card (for "
                   "weights trained without validation); needs --split val")
    p.add_argument("--record-recipe-in", metavar="DIR",
                   help="store these validation metrics, labelled as the recipe's, in DIR: the same recipe's weights "
                        "trained with `train --all-patients`, which have no validation of their own")
    add_model_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train a segmentation model on an ACDC-layout folder",
                       description="Train on the training patients of an ACDC-layout folder, validating on the "
                       "fixed validation split. Resumes from OUTPUT/checkpoint.pt; the best model is written to "
                       "OUTPUT/weights. Multi-process: torchrun --nproc_per_node N -m medsegrwkv train ...")
    p.add_argument("task", nargs="?", default="segment", choices=("segment", "grade", "refine"),
                   help="what to train: segment (default), grade (the motion-artefact grader) or refine (the "
                        "click-refinement network, started from --init segmentation weights, default unet2d)")
    p.add_argument("--data", default=str(data_root() / "acdc"), help=acdc_option_help())
    p.add_argument("--output", required=True, help="run folder: checkpoint, history.jsonl, weights/")
    p.add_argument("--show-config", action="store_true",
                   help="print the task's full settings (its defaults with these options applied) and exit")
    p.add_argument("--model", help="registered model name (default: the task's, see --show-config)")
    p.add_argument("--epochs", type=int, help="epochs (defaults of this and the options below: --show-config)")
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--crop", type=int, help="in-plane training crop for 2D models (pixels)")
    p.add_argument("--augmentation", metavar="wide|mild|appearance|geometry",
                   help="segment and refine: 'wide' (default) also simulates other sites' scanners (lower "
                        "resolution, strong gamma, ringing, Rician noise, rotation to 30 degrees, scale 0.7-1.3); "
                        "'mild' keeps orientations, small rotations and scales and light intensity changes; "
                        "'appearance' is mild's geometry with wide's scanner looks, 'geometry' wide's "
                        "rotations and scales with mild's looks")
    p.add_argument("--dice", metavar="sample|batch",
                   help="segment: the loss's Dice term over each slice (default) or over the whole batch as one, "
                        "so that slices with little or none of a structure weigh less")
    p.add_argument("--hard-slices", type=float, metavar="STRENGTH",
                   help="segment, with --init: draw the slices the starting weights get wrong more often, each in "
                        "proportion to 1 + STRENGTH x its Dice deficit / the mean deficit (default 0: every slice "
                        "once an epoch)")
    p.add_argument("--average-from", type=int, metavar="EPOCH",
                   help="segment: from this epoch on, hold the learning rate and validate and export the average of "
                        "the weights at the end of each epoch since (stochastic weight averaging: one network, "
                        "flatter optimum); validation reports the last weights alone too, and keeps the best epoch")
    p.add_argument("--val-every", type=int, help="validate every N epochs")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="data-loading worker processes")
    p.add_argument("--max-steps", type=int, help="stop after N optimiser steps (smoke tests)")
    p.add_argument("--max-cases", type=int, help="use only the first N training volumes (smoke tests)")
    p.add_argument("--no-validation", action="store_true", help="skip validation; export the last weights")
    p.add_argument("--all-patients", action="store_true",
                   help="segment: train on every patient, the validation patients too, for the final model once a "
                        "run on the split has fixed the recipe (implies --no-validation)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one entry of the model's config, e.g. --set scan=raster, or for a grader "
                        "--set backbone_size=112 (repeatable; `medsegrwkv models --json` lists each model's config)")
    p.add_argument("--init", metavar="NAME|DIR",
                   help="start from these weights (an installed model name or a weights folder) to fine-tune, "
                        "e.g. the bundled model on your own data; segment: the same model and config; "
                        "refine: the segmentation model (default unet2d), or refinement weights to fine-tune "
                        "(with --automatic)")
    p.add_argument("--teacher", metavar="NAME|DIR",
                   help="segment: distil from these weights too: the loss adds the KL divergence from the teacher's "
                        "class probabilities on each training batch (same input as the student), e.g. the default "
                        "with --teacher-tta, or a wider network")
    p.add_argument("--teacher-tta", action="store_true",
                   help="segment: the teacher's probabilities averaged over the in-plane rotations (4 passes a batch)")
    p.add_argument("--distill-weight", type=float,
                   help="segment: the teacher's share of the loss, in (0, 1] (default 0.5; the labels keep the rest)")
    p.add_argument("--automatic", metavar="NAME|DIR",
                   help="refine: the segmentation model whose masks the simulated clicks correct (default: --init), "
                        "e.g. medsegrwkv-t, so the refiner learns the masks its users start from")
    add_train_grade_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="trained weights folders side by side: validation Dice/HD95 (graders: "
                       "accuracy, kappa, ECE), size, CPU time",
                       description="One Markdown table (and a JSON file beside it) from weights folders written by "
                       "`medsegrwkv train` or `train grade` (RUN/weights), all of one task: each folder's validation "
                       "metrics and training budget from its manifest, its parameters and GFLOPs, and the CPU time "
                       "per slice (256x256; graders: their 224x224 input) measured now, in this process, for every "
                       "row alike.")
    p.add_argument("weights", nargs="+", metavar="WEIGHTS_DIR", help="weights folders (or installed model names)")
    p.add_argument("--output", required=True, help="Markdown file to write (the JSON goes beside it)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for the timing (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per model; the median is reported")
    p.add_argument("--record-in", metavar="WEIGHTS_DIR", help="also store the table in this weights folder's "
                   "manifest and model card (the evidence a default is chosen on); needs --title")
    p.add_argument("--title", help="the table's title in the model card; a stored table with this title is replaced")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("average-weights", help="average the weights of runs fine-tuned from the same start into one "
                       "network (a model soup: no extra inference cost)",
                       description="Average segmentation weights folders tensor by tensor (uniform 'model soup', "
                       "Wortsman et al. 2022). The runs must share the network, the pipeline and the starting weights "
                       "(`train --init`) and may differ in seed, augmentation or loss. The new folder keeps the first "
                       "folder's manifest, the union of the runs' measured heart-size and noise ranges and a record of "
                       "every run; it has no validation until `evaluate --record` (or --record-recipe-in) gives one.")
    p.add_argument("weights", nargs="+", metavar="WEIGHTS_DIR", help="two or more weights folders (RUN/weights)")
    p.add_argument("--output", required=True, help="new weights folder to write (an existing one is refused)")
    p.set_defaults(func=cmd_average_weights)

    p = sub.add_parser("ensemble-weights", help="join trained networks of different designs into one model whose "
                       "probabilities are their weighted mean (costs their summed time)",
                       description="Join trained 2D segmentation weights folders into one probability ensemble: each "
                       "network segments the slice and their softmax probabilities are averaged with the given votes. "
                       "The members keep their own weights, so they may differ in design and start (unlike "
                       "average-weights) but must share the pipeline (pixel size, normalisation, post-processing). "
                       "The member architectures must form a registered ensemble, e.g. medsegrwkv-t then unet2d "
                       "(`medsegrwkv models` lists them as A+B). The new folder has no validation until "
                       "`evaluate --record` (or --record-recipe-in) gives one.")
    p.add_argument("weights", nargs="+", metavar="WEIGHTS_DIR", help="two or more weights folders or installed "
                   "model names, in the registered ensemble's order")
    p.add_argument("--votes", type=float, nargs="+", metavar="V",
                   help="one positive vote per folder, normalised to sum to 1 (default: equal votes)")
    p.add_argument("--output", required=True, help="new weights folder to write (an existing one is refused); its "
                   "name becomes the model's name")
    p.set_defaults(func=cmd_ensemble_weights)

    p = sub.add_parser("evaluate-clicks", help="how much simulated clicks improve the masks of labelled volumes",
                       description="Simulated user on an ACDC-layout folder: every slice and structure is corrected "
                       "from the automatic prediction (and from an empty mask) by clicks at the deepest point of the "
                       "largest error. Prints the Dice after 0, 1, 3 and 5 clicks and the clicks needed to reach "
                       "Dice 0.90, per structure.")
    p.add_argument("--data", default=str(data_root() / "acdc"), help=acdc_option_help())
    p.add_argument("--split", default="val", choices=("all", "train", "val"), help="which patients (default val)")
    p.add_argument("--model", help="refinement model name (default: the installed default)")
    p.add_argument("--weights", metavar="DIR", help="a refinement weights folder from `train refine`")
    p.add_argument("--segmenter", help="segmentation model for the automatic masks (default: the default model)")
    p.add_argument("--max-clicks", type=int, default=10, help="clicks per slice and structure (default 10)")
    p.add_argument("--max-cases", type=int, help="use only the first N volumes")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--output", help="JSON file for the summary")
    p.set_defaults(func=cmd_evaluate_clicks)

    p = sub.add_parser("benchmark", help="size, GFLOPs, latency, memory and scaling of every model in one run",
                       description="Measure each segmentation model in a fresh process: parameters, GFLOPs, median "
                       "latency and peak memory for a 10-slice 256x256 study (the demo study's central slices; 2D "
                       "models slice by slice, 3D models by sliding window), and a resolution sweep with fitted time "
                       "and memory exponents; plus the Bi-WKV operator against a per-token loop and a whole cine. "
                       "Ratios are to the default model; each other 2D model's study is also timed in rounds "
                       "alternating with the default's, the ratio to trust on a machine whose speed drifts. Each model runs with its bundled weights where it has "
                       "them, else untrained; accuracy is `medsegrwkv compare`'s. Writes OUTPUT/benchmark.json "
                       "and OUTPUT/benchmark.md.")
    p.add_argument("--models", help="comma-separated model names (default: every segmentation model; the default "
                   "model is always included)")
    p.add_argument("--output", default="outputs/benchmark", help="folder for benchmark.json and benchmark.md")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--repeats", type=int, help="timed runs per measurement; the median is reported (default 5)")
    p.add_argument("--sizes", help="2D sweep: square slice sizes (default 128,256,512,1024)")
    p.add_argument("--crops", help="3D sweep: in-plane crop sizes at the model's crop depth (default 64,128,256)")
    p.add_argument("--quick", action="store_true", help="tiny study and sizes, one repeat: seconds per model")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("demo", help="segment the bundled Sunnybrook cine study and compare with expert contours, "
                       "then grade its motion artefacts")
    p.add_argument("--output", default="outputs/demo", help="folder for labelmaps and the PNG montage")
    p.add_argument("--model", help="registered model name (default: the default segmentation model)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("engine", help="the worker 3D Slicer talks to: JSON lines on stdin/stdout",
                       description="Serve requests (info, models, segment, grade, cancel, shutdown) as JSON lines "
                       "on stdin, answering with progress, result and error lines on stdout; logs go to stderr. "
                       "One request runs at a time (others get the error 'busy'); models stay loaded between "
                       "requests; ends on 'shutdown' or when stdin closes. See docs/design.md section 3.")
    p.set_defaults(func=cmd_engine)
    return parser


VALUE_OPTIONS = ("--roi", "--roi-ras")  # their values may start with a minus sign


def _attach_values(argv: Sequence[str]) -> list[str]:
    """`--roi-ras -10,5,...` as `--roi-ras=-10,5,...`: argparse takes a value that starts with '-'
    (and is not one plain negative number) for an option and would say the value is missing."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in VALUE_OPTIONS and arg.startswith("-") and arg[1:2] in set("0123456789."):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_attach_values(sys.argv[1:] if argv is None else argv))
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except MedSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
