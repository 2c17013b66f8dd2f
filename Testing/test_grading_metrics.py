"""Grading metrics, the set-valued loss and the CMRxMotion loader (real ACDC images in that layout)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medsegrwkv.errors import MedSegError
from medsegrwkv.grading.cmrxmotion import CMRxMotionSlices, load_cmrxmotion, map_segmentation_labels
from medsegrwkv.grading.grade import describe_probabilities
from medsegrwkv.grading.metrics import (
    cohen_kappa, expected_calibration_error, fit_temperature, grading_metrics, level_of_score, softmax,
)
from medsegrwkv.grading.train import _set_nll


def test_cohen_kappa_matches_hand_computation():
    # 2x2 table [[20, 5], [10, 15]]: p_o = 0.7, p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5 -> kappa 0.4
    truth = [1] * 25 + [2] * 25
    pred = [1] * 20 + [2] * 5 + [1] * 10 + [2] * 15
    assert cohen_kappa(truth, pred, (1, 2)) == pytest.approx(0.4)
    assert cohen_kappa(truth, truth, (1, 2, 3)) == pytest.approx(1.0)
    # Linear weights: an off-by-one error costs half as much as an off-by-two on a 3-point scale.
    truth3 = [1, 2, 3, 1, 2, 3]
    near = [2, 2, 3, 1, 2, 2]
    far = [3, 2, 3, 1, 2, 1]
    assert cohen_kappa(truth3, near, (1, 2, 3), "linear") > cohen_kappa(truth3, far, (1, 2, 3), "linear")
    assert cohen_kappa(truth3, near, (1, 2, 3)) == pytest.approx(cohen_kappa(truth3, far, (1, 2, 3)))


def test_temperature_scaling_recovers_a_known_temperature_and_lowers_ece():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 5))
    truth = np.array([rng.choice(5, p=p) for p in softmax(logits, 2.5)])  # true temperature 2.5
    assert fit_temperature(logits, truth) == pytest.approx(2.5, rel=0.1)
    before = expected_calibration_error(softmax(logits), truth)
    after = expected_calibration_error(softmax(logits, 2.5), truth)
    assert after < 0.03 < before
    groups = np.repeat(np.arange(40), 100)
    metrics = grading_metrics(logits, truth + 1, groups)
    assert metrics["ece_temperature_scaled"] < metrics["ece"]
    assert set(metrics["recall"]) == {"1", "2", "3", "4", "5"}
    assert np.array(metrics["confusion"]).sum() == 4000
    assert list(level_of_score([1, 2, 3, 4, 5])) == [0, 0, 1, 2, 2]


def test_reported_score_is_the_median_and_diagnostic_means_p_at_least_half():
    r = describe_probabilities(np.array([0.3, 0.15, 0.1, 0.25, 0.2]))
    assert r["score"] == 3 and r["grade"] == "moderate" and r["diagnostic"]
    assert r["expected_score"] == pytest.approx(0.3 + 0.3 + 0.3 + 1.0 + 1.0)
    assert r["p_diagnostic"] == pytest.approx(0.55) and r["confidence"] == pytest.approx(0.1)
    r = describe_probabilities(np.array([0.5, 0.2, 0.1, 0.1, 0.1]))
    assert r["score"] == 1 and r["grade"] == "severe" and not r["diagnostic"] and r["confidence"] == pytest.approx(0.7)


def test_set_valued_loss():
    logits = torch.tensor([[0.1, 0.5, -0.3, 1.0, 2.0], [1.0, 0.0, 0.0, 0.0, 0.0]])
    one = torch.zeros(2, 5, dtype=torch.bool)
    one[0, 4] = one[1, 0] = True
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([4, 0]))
    assert _set_nll(logits, one) == pytest.approx(float(expected))
    mild = torch.zeros(1, 5, dtype=torch.bool)
    mild[0, 3:] = True  # CMRxMotion "mild" = scores 4-5
    p = torch.softmax(logits[:1], 1)[0]
    assert _set_nll(logits[:1], mild) == pytest.approx(float(-torch.log(p[3] + p[4])))


@pytest.fixture()
def cmrx_folder(tmp_path: Path, acdc: Path) -> Path:
    """Two real ACDC volumes laid out and labelled the way CMRxMotion releases its data."""
    root = tmp_path / "CMRxMotion"
    for name, case in (("P001-1-ED", "patient001/patient001_frame01"), ("P002-4-ES", "patient002/patient002_frame12")):
        (root / "data" / name[:6]).mkdir(parents=True, exist_ok=True)
        shutil.copy(acdc / f"{case}.nii.gz", root / "data" / name[:6] / f"{name}.nii.gz")
        shutil.copy(acdc / f"{case}_gt.nii.gz", root / "data" / name[:6] / f"{name}-label.nii.gz")
    (root / "data" / "IQA.csv").write_text("Image,Label\nP001-1-ED,1\nP002-4-ES.nii.gz,3\n")
    return root


def test_cmrxmotion_loader_maps_levels_to_likert_sets(cmrx_folder: Path):
    volumes = load_cmrxmotion(cmrx_folder)
    assert [(v.name, v.patient, v.slices) for v in volumes] == [("P001-1-ED", "P001", {None: (4, 5)}),
                                                                  ("P002-4-ES", "P002", {None: (1, 2)})]
    data = CMRxMotionSlices(volumes)
    assert len(data) == 10 + 10  # every slice of both volumes (10 slices each)
    first, last = data[0], data[len(data) - 1]
    assert first["image"].shape == (1, 224, 224)
    assert 0 <= float(first["image"].min()) and float(first["image"].max()) <= 1
    assert first["mask"].tolist() == [False, False, False, True, True]
    assert last["mask"].tolist() == [True, True, False, False, False]


def test_cmrxmotion_per_slice_likert_csv_and_bad_labels(cmrx_folder: Path, tmp_path: Path):
    scores = tmp_path / "scores.csv"
    scores.write_text("name,slice,score\nP001-1-ED,0,5\nP001-1-ED,4,2\n")
    volumes = load_cmrxmotion(cmrx_folder, scores)
    assert volumes[0].slices == {0: (5,), 4: (2,)}
    assert len(CMRxMotionSlices(volumes)) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("Image,Label\nP001-1-ED,7\n")
    with pytest.raises(MedSegError, match="outside"):
        load_cmrxmotion(cmrx_folder, bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("Image,Label\nP099-1-ED,1\n")
    with pytest.raises(MedSegError, match="P099-1-ED"):
        load_cmrxmotion(cmrx_folder, missing)
    (cmrx_folder / "data" / "other.csv").write_text("Image,Label\n")
    with pytest.raises(MedSegError, match="2 CSV files|name the quality-label CSV"):
        load_cmrxmotion(cmrx_folder / "data" / "P001-1")  # no CSV in there
    out_of_range = tmp_path / "z.csv"
    out_of_range.write_text("name,slice,score\nP001-1-ED,30,5\n")
    with pytest.raises(MedSegError, match="Slice 30"):
        CMRxMotionSlices(load_cmrxmotion(cmrx_folder, out_of_range))


def test_cmrxmotion_segmentation_labels_are_mapped_to_acdc():
    cmrx = np.array([[0, 1, 2, 3]])  # background, LV, MYO, RV
    assert map_segmentation_labels(cmrx).tolist() == [[0, 3, 2, 1]]  # ACDC: LV cavity 3, myocardium 2, RV 1
    with pytest.raises(MedSegError, match=r"0-3 only, found \[4\]"):
        map_segmentation_labels(np.array([4]))
