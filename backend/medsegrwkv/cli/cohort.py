"""`medsegrwkv segment-cohort`: many studies, resumable, sharded across torchrun ranks."""

from __future__ import annotations

import argparse
from typing import Callable


def cmd_segment_cohort(args: argparse.Namespace) -> int:
    from medsegrwkv.cohort import run_cohort
    from medsegrwkv.nets.registry import DEFAULT_MODELS

    counts = run_cohort(args.input, args.output, args.weights or args.model or DEFAULT_MODELS["segmentation"],
                        device=args.device, with_function=args.function, tta=args.tta)
    print(f"this rank: {counts['done']} segmented, {counts['skipped']} finished before, {counts['failed']} failed")
    return 0


def add_cohort_parser(sub: argparse._SubParsersAction,
                      add_model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "segment-cohort", help="segment many studies (a list file or a folder), resumable, on many processes",
        description="Segment every study of a cohort. INPUT is a folder (each image file and each subfolder in it "
                    "is a study) or a list file (.txt, one study path per line, relative to the list's folder). "
                    "OUTPUT gets one folder per study (labels.nii.gz, function.json with --function, record.json) "
                    "and summary.csv. A study already finished with the same model is skipped, so rerunning the "
                    "same command resumes; a study that fails is recorded and the run goes on.",
        epilog="On several processes, GPUs or machines, start it with torchrun; each rank takes every "
               "WORLD_SIZE-th study, e.g. `torchrun --standalone --nproc-per-node 4 -m medsegrwkv segment-cohort "
               "studies.txt -o out/` (on N machines: --nnodes N --rdzv-endpoint HOST:PORT). The output folder "
               "must be shared by all ranks.")
    p.add_argument("input", help="a folder of studies or a list file")
    p.add_argument("-o", "--output", required=True, help="output folder (created; shared by every rank)")
    p.add_argument("--function", action="store_true",
                   help="also compute cardiac function (volumes, EF, mass) of each study with 2 or more phases")
    add_model_args(p)
    p.set_defaults(func=cmd_segment_cohort)
