"""The grader outside its own simulator (issue 21): TorchIO's motion and ghosting at graded strengths,
slice positions, and the CMRxMotion-form per-volume evaluation."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medsegrwkv.cli.grade import add_evaluate_grades_parser, slice_rows
from medsegrwkv.grading.dataset import slice_positions
from medsegrwkv.grading.external_evaluation import (
    LEVEL_OF_STRENGTH, corrupt, load_evaluation_slices, summarise,
)
from medsegrwkv.grading.grade import grade_study, volume_levels
from medsegrwkv.grading.simulator import MotionSimulator

VAL_CASES = ("patient034/patient034_frame01", "patient035/patient035_frame01", "patient053/patient053_frame01")


def evaluate_grades(argv: list[str]) -> int:
    """`medsegrwkv evaluate-grades ARGV` through its own parser (cli/grade.py)."""
    parser = argparse.ArgumentParser()
    add_evaluate_grades_parser(parser.add_subparsers())
    args = parser.parse_args(["evaluate-grades", *argv])
    return args.func(args)


def test_slice_positions_split_the_lv_into_thirds_with_the_apex_at_the_small_end():
    labels = np.zeros((8, 40, 40), dtype=np.uint8)
    for z, r in zip(range(1, 7), (14, 12, 10, 8, 6, 4)):  # base at z = 1, apex at z = 6
        labels[z, 20 - r:20 + r, 20 - r:20 + r] = 3
    signal = np.ones(8, dtype=bool)
    signal[7] = False
    assert slice_positions(labels, signal) == ["beyond", "basal", "basal", "mid", "mid", "apical", "apical", None]
    assert slice_positions(labels[::-1], signal[::-1]) == [None, "apical", "apical", "mid", "mid", "basal", "basal",
                                                           "beyond"]


def test_torchio_artefacts_grow_with_strength_and_are_seeded(acdc: Path):
    slices = load_evaluation_slices(acdc, "val", max_cases=1, show_progress=False)
    mid = next(s for s in slices if s.position == "mid")
    for kind in ("motion", "ghosting"):
        errors = [float(np.mean((corrupt(mid.array, mid.spacing, kind, s, 5) - mid.array) ** 2)) for s in (0, 1, 2, 3)]
        assert errors[0] == 0 and errors[1] < errors[2] < errors[3], (kind, errors)
        np.testing.assert_array_equal(corrupt(mid.array, mid.spacing, kind, 3, 9),
                                      corrupt(mid.array, mid.spacing, kind, 3, 9))


def test_summary_metrics_on_known_predictions():
    # 4 slices x (clean + motion 1-3): a perfect grader by the convention, then one that grades everything 5
    strength = np.tile([0, 1, 2, 3], 4)
    samples = {"strength": strength, "kind": np.where(strength == 0, "clean", "motion"),
               "position": np.repeat(["apical", "mid", "basal", "beyond"], 4), "slice": np.repeat(np.arange(4), 4)}
    perfect = np.zeros((16, 5))
    for i, s in enumerate(strength):
        perfect[i, {2: 4, 1: 2, 0: 0}[LEVEL_OF_STRENGTH[int(s)]]] = 1.0
    report = summarise(perfect, samples)
    assert report["motion"]["accuracy_3level"] == 1.0 and report["motion"]["kappa_linear_3level"] == 1.0
    assert report["motion"]["spearman_expected_score_vs_strength"] < -0.8
    assert report["clean_min_position_mild_rate"] == 1.0
    everything_five = np.tile([0, 0, 0, 0, 1.0], (16, 1))
    report = summarise(everything_five, samples)
    assert report["all"]["accuracy_3level"] == 0.5 and report["all"]["kappa_linear_3level"] == 0.0
    assert report["clean_by_position"]["apical"]["below_4_rate"] == 0.0


def test_evaluate_grades_torchio_writes_its_report(tmp_path: Path, acdc: Path, capsys):
    assert evaluate_grades(["--torchio", "--data", str(acdc), "--max-cases", "1", "--output", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "torchio.json").read_text())
    assert set(report["clean_by_position"]) <= {"apical", "mid", "basal", "beyond"}
    assert {"motion", "ghosting", "all", "by_strength", "level_of_strength"} <= set(report)
    assert report["samples"] == 7 * report["slices"]  # clean + 2 kinds x 3 strengths
    assert "Spearman" in capsys.readouterr().out


def test_volume_level_is_the_worst_lv_slice():
    def record(phase, index, score):
        grade = {5: "mild", 4: "mild", 3: "moderate", 2: "severe", 1: "severe"}[score]
        return {"phase": phase, "index": index, "score": score, "expected_score": score, "grade": grade}

    slices = [record(0, 0, 2), record(0, 1, 5), record(0, 2, 3), record(1, 0, 5), record(1, 1, 4), record(1, 2, 5)]
    levels = volume_levels(slices, lv=[1, 2])  # slice 0 is outside the LV
    assert [v["cmrxmotion_level"] for v in levels] == [2, 1] and levels[0]["worst_index"] == 2


@pytest.fixture(scope="module")
def cmrx_folder(acdc: Path, tmp_path_factory) -> Path:
    """A CMRxMotion-layout folder from real ACDC validation volumes: one clean (label 1), one with
    simulated score-3 motion in every slice (label 2), one with score-1 motion (label 3)."""
    root = tmp_path_factory.mktemp("cmrx")
    rows = []
    for n, (case, score, label) in enumerate(zip(VAL_CASES, (None, 3, 1), (1, 2, 3))):
        image = sitk.ReadImage(str(acdc / f"{case}.nii.gz"), sitk.sitkFloat32)
        if score is not None:
            array = sitk.GetArrayFromImage(image)
            sim = MotionSimulator(image.GetSpacing()[1::-1])
            moved = sitk.GetImageFromArray(np.stack([sim.sample(s, score, 50 + k)[0] for k, s in enumerate(array)]))
            moved.CopyInformation(image)
            image = moved
        name = f"P00{n + 1}-{label}-ED"
        (root / "data" / name[:6]).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(root / "data" / name[:6] / f"{name}.nii.gz"))
        rows.append(f"{name},{label}")
    (root / "IQA.csv").write_text("Image,Label\n" + "\n".join(rows) + "\n")
    return root


def test_evaluate_grades_cmrxmotion_scores_volumes_like_the_challenge(cmrx_folder: Path, tmp_path: Path, capsys):
    assert evaluate_grades(["--cmrxmotion", str(cmrx_folder), "--all-slices", "--output", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "cmrxmotion.json").read_text())
    rows = {r["Image"]: r for r in report["volumes"]}
    assert [rows[n]["Label"] for n in sorted(rows)] == [1, 2, 3]
    assert rows["P003-3-ED"]["Predicted"] == 3  # score-1 motion in every slice: severe
    m = report["metrics"]
    assert m["volumes"] == 3 and m["accuracy"] == pytest.approx(np.mean([r["Label"] == r["Predicted"]
                                                                          for r in rows.values()]))
    assert -1.0 <= m["kappa_linear"] <= 1.0 and report["best_published"]["accuracy"] == 0.725
    with open(tmp_path / "cmrxmotion.csv", newline="") as f:
        assert [r["Image"] for r in csv.DictReader(f)] == sorted(rows)
    assert "linear-weighted kappa" in capsys.readouterr().out


def test_grade_report_has_a_cmrxmotion_level_per_volume(acdc: Path):
    report = grade_study(acdc / f"{VAL_CASES[0]}.nii.gz", device="cpu", lv_detection=False)
    assert len(report["volumes"]) == 1 and report["volumes"][0]["cmrxmotion_level"] in (1, 2, 3)
    assert report["study"]["cmrxmotion_level"] in (1, 2, 3) and "worst" in report["study"]["volume_rule"]
    assert {r["volume_cmrxmotion_level"] for r in slice_rows(report)} == {report["volumes"][0]["cmrxmotion_level"]}
