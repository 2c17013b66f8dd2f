"""`medsegrwkv train refine` and `medsegrwkv evaluate-clicks`: the click-refinement network."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medsegrwkv.cli.common import given_options, show_config
from medsegrwkv.errors import ErrorCode, MedSegError


def cmd_train_refine(args: argparse.Namespace) -> int:
    from medsegrwkv.training.refinement import RefineTrainConfig, train_refinement

    cfg = RefineTrainConfig(data=Path(args.data), output=Path(args.output), device=args.device,
                            max_cases=args.max_cases, max_steps=args.max_steps,
                            **given_options(args, "model", "init", "automatic", "epochs", "batch_size", "lr", "crop",
                                            "val_every", "seed", "augmentation"),
                            **({"val_cases": 0} if args.no_validation else {}))
    if args.show_config:
        return show_config(cfg)
    result = train_refinement(cfg)
    best = result["best"] or {}
    print(json.dumps({"best_epoch": result["best_epoch"], "steps": result["steps"],
                      "validation_mean_dice_3_clicks": best.get("mean_dice_3_clicks")}, indent=2))
    print(f"weights: {Path(args.output) / 'weights'} (use with `evaluate-clicks --weights`, or copy into the package)")
    return 0


def cmd_evaluate_clicks(args: argparse.Namespace) -> int:
    from medsegrwkv.inference.segmenter import Segmenter
    from medsegrwkv.interactive import Refiner
    from medsegrwkv.io.text import write_text_atomic
    from medsegrwkv.nets.registry import DEFAULT_MODELS
    from medsegrwkv.training.acdc import list_cases
    from medsegrwkv.training.click_evaluation import evaluate_clicks
    from medsegrwkv.weights.model_card import click_tables

    if args.max_clicks < 1:
        raise MedSegError("--max-clicks must be at least 1.", code=ErrorCode.BAD_ARGUMENT)
    cases = list_cases(args.data, args.split)[: args.max_cases]
    refiner = Refiner.from_pretrained(args.weights or args.model or DEFAULT_MODELS["refinement"], args.device)
    segmenter = Segmenter.from_pretrained(args.segmenter or DEFAULT_MODELS["segmentation"], refiner.device)
    summary = evaluate_clicks(refiner, segmenter, cases, max_clicks=args.max_clicks)
    summary.update({"refinement_model": refiner.manifest["name"], "segmentation_model": segmenter.manifest["name"],
                    "split": args.split})
    if args.output:
        write_text_atomic(Path(args.output), json.dumps(summary, indent=2) + "\n")
    print(f"{len(cases)} volumes, refinement {refiner.manifest['name']}, automatic masks from "
          f"{segmenter.manifest['name']}, split {args.split}")
    print("\n".join(click_tables(summary)))
    return 0
