"""`medsegrwkv demo`: the bundled Sunnybrook study (DICOM, ED and ES phases) end to end.

Reads the DICOM folder, segments both phases, writes the labelmaps and a PNG montage, and
compares with the expert contours: LV cavity and myocardium Dice on the contoured slices, LV
end-diastolic / end-systolic volumes and the ejection fraction (predicted over the whole stack,
expert over the contoured slices).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.interactive.clicks import dice

LV, MYO = 3, 2


def _volume_ml(mask: np.ndarray, image: sitk.Image) -> float:
    return float(mask.sum() * np.prod(image.GetSpacing()) / 1000.0)


def run_demo(output: Path, model: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Segment, write and compare the bundled study; the result also holds the labelmaps (`labelmaps`)."""
    from medsegrwkv.inference.segmenter import Segmenter
    from medsegrwkv.io import read_study, sample_data_dir, write_labelmap
    from medsegrwkv.io.contours import sunnybrook_reference
    from medsegrwkv.io.montage import overlay_rows, save_png_atomic
    from medsegrwkv.nets.registry import DEFAULT_MODELS

    case = sample_data_dir() / "SCD0000101"
    dicom_dir, contour_dir = case / "dicom", case / "contours"
    output.mkdir(parents=True, exist_ok=True)
    study = read_study(dicom_dir)
    if len(study.phases) != 2:
        raise MedSegError(f"The bundled sample in {dicom_dir} should hold 2 phases, found {len(study.phases)}.",
                          code=ErrorCode.BAD_INPUT)
    segmenter = Segmenter.from_pretrained(model or DEFAULT_MODELS["segmentation"], device)
    print(f"{study.description}; model {segmenter.manifest['name']}", file=sys.stderr)
    predictions = segmenter.segment_phases(study.phases)
    references = sunnybrook_reference(study, contour_dir, dicom_dir)

    lv_volumes = [_volume_ml(sitk.GetArrayViewFromImage(p) == LV, p) for p in predictions]
    ed, es = (0, 1) if lv_volumes[0] >= lv_volumes[1] else (1, 0)
    result: dict[str, Any] = {"model": segmenter.manifest["name"], "phases": {}}
    for name, index in (("ED", ed), ("ES", es)):
        pred = sitk.GetArrayViewFromImage(predictions[index])
        ref_image, slices = references[index]
        ref = sitk.GetArrayViewFromImage(ref_image)
        phase: dict[str, Any] = {"phase_index": index, "contoured_slices": list(slices),
                                 "lv_volume_ml": lv_volumes[index]}
        phase["lv_dice"] = dice(pred[slices] == LV, ref[slices] == LV)
        myo_slices = [k for k in slices if (ref[k] == MYO).any()]
        phase["myo_dice"] = dice(pred[myo_slices] == MYO, ref[myo_slices] == MYO) if myo_slices else None
        phase["expert_lv_volume_ml"] = _volume_ml(ref == LV, ref_image)
        phase["predicted_lv_volume_on_contoured_slices_ml"] = _volume_ml(pred[slices] == LV, ref_image)
        result["phases"][name] = phase
        write_labelmap([predictions[index]], output / f"SCD0000101_{name}_labels.nii.gz")
    edv, esv = result["phases"]["ED"]["lv_volume_ml"], result["phases"]["ES"]["lv_volume_ml"]
    eedv, eesv = result["phases"]["ED"]["expert_lv_volume_ml"], result["phases"]["ES"]["expert_lv_volume_ml"]
    result["ejection_fraction"] = (edv - esv) / edv if edv else None
    result["expert_ejection_fraction"] = (eedv - eesv) / eedv if eedv else None
    picture = overlay_rows([study.phases[ed], study.phases[es]], [predictions[ed], predictions[es]],
                           segmenter.manifest["labels"], ["ED (predicted)", "ES (predicted)"])
    save_png_atomic(picture, output / "SCD0000101_montage.png")
    result["outputs"] = sorted(str(p) for p in output.iterdir())
    result["labelmaps"] = predictions  # in phase order: motion grading finds the LV slices in the first
    return result


def print_report(result: dict[str, Any]) -> None:
    print(f"Sunnybrook SCD0000101 (CC0), model {result['model']}")
    print(f"{'phase':<6}{'LV Dice':>9}{'Myo Dice':>10}{'LV vol (mL)':>13}{'expert LV (mL)':>16}  (expert volumes and "
          "Dice on the contoured slices)")
    for name in ("ED", "ES"):
        p = result["phases"][name]
        myo = f"{p['myo_dice']:.3f}" if p["myo_dice"] is not None else "n/a"
        print(f"{name:<6}{p['lv_dice']:>9.3f}{myo:>10}{p['predicted_lv_volume_on_contoured_slices_ml']:>13.1f}"
              f"{p['expert_lv_volume_ml']:>16.1f}")
    ed, es = result["phases"]["ED"], result["phases"]["ES"]
    print(f"LV EDV {ed['lv_volume_ml']:.1f} mL, ESV {es['lv_volume_ml']:.1f} mL, EF {100 * result['ejection_fraction']:.1f}% "
          f"(whole stack); expert EF {100 * result['expert_ejection_fraction']:.1f}% (contoured slices)")
    print("ES has no expert epicardium, so no myocardium Dice there.")
    for path in result["outputs"]:
        print(f"wrote {path}")
