"""The RWKV network's fast inference route against its plain route, on labelled volumes.

`python -m medsegrwkv.benchmark.fast_path --data DIR [--split val] [--cases N] [--model medsegrwkv-t]
[--look NAME]` segments each volume (or its `--look`, another scanner's look from
`training.robustness`, where the gates may be less decided) twice through the deployed pipeline
(post-processing on, no TTA) with the same weights: once as the network runs by default, once
with `MedSegRWKV.use_reference()` (whole batches, all paths mixed by the gates, cumulative-sum
Bi-WKV, the code as it was before the fast route). It reports the share of voxels whose label
differs and the change of each structure's Dice against the expert labels, per volume and over
all of them, as one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from medsegrwkv import STRUCTURES as STRUCTURE_NAMES
from medsegrwkv.interactive.clicks import dice

STRUCTURES = {label: name.lower() for label, name in STRUCTURE_NAMES.items()}  # the report's keys: rv, myo, lv


def compare_volume(segmenter: Any, image: sitk.Image, reference: sitk.Image) -> dict[str, Any]:
    """Labels of the fast and the plain route for one volume, and their Dice against `reference`."""
    network = segmenter.model
    network.use_reference(False)
    fast = sitk.GetArrayFromImage(segmenter.segment(image))
    network.use_reference(True)
    try:
        plain = sitk.GetArrayFromImage(segmenter.segment(image))
    finally:
        network.use_reference(False)
    ref = sitk.GetArrayFromImage(reference)
    row: dict[str, Any] = {"voxels": int(fast.size), "differing": int((fast != plain).sum())}
    for label, name in STRUCTURES.items():
        row[f"{name}_dice_fast"] = dice(fast == label, ref == label)
        row[f"{name}_dice_plain"] = dice(plain == label, ref == label)
    row["mean_dice_fast"] = float(np.mean([row[f"{n}_dice_fast"] for n in STRUCTURES.values()]))
    row["mean_dice_plain"] = float(np.mean([row[f"{n}_dice_plain"] for n in STRUCTURES.values()]))
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    voxels = sum(r["voxels"] for r in rows)
    differing = sum(r["differing"] for r in rows)
    fast = float(np.mean([r["mean_dice_fast"] for r in rows]))
    plain = float(np.mean([r["mean_dice_plain"] for r in rows]))
    return {"volumes": len(rows), "voxels": voxels, "differing_voxels": differing,
            "identical_share": 1.0 - differing / voxels, "mean_dice_fast": fast, "mean_dice_plain": plain,
            "mean_dice_change": fast - plain,
            "largest_volume_dice_change": max(abs(r["mean_dice_fast"] - r["mean_dice_plain"]) for r in rows)}


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from medsegrwkv.inference.segmenter import Segmenter
    from medsegrwkv.training.acdc import list_cases
    from medsegrwkv.training.robustness import PERTURBATIONS, get_perturbation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--cases", type=int, help="only the first N volumes")
    parser.add_argument("--model", default="medsegrwkv-t")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--look", choices=[p.name for p in PERTURBATIONS],
                        help="compare on this other-scanner look of each volume instead of the volume")
    args = parser.parse_args(argv)
    look = get_perturbation(args.look) if args.look else None
    segmenter = Segmenter.from_pretrained(args.model, args.device)
    cases = list_cases(args.data, args.split)[:args.cases]
    rows = []
    with torch.inference_mode():
        for case in cases:
            pair = sitk.ReadImage(str(case.image), sitk.sitkFloat32), sitk.ReadImage(str(case.label))
            row = compare_volume(segmenter, *(look.apply(*pair) if look else pair))
            rows.append({"case": case.name, **row})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"model": args.model, "split": args.split, "look": args.look or "clean", **summarize(rows),
                      "per_volume": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
