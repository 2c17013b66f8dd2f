"""`medsegrwkv grade`, the `grade_study` API, the default grader's weights, the models list and the demo."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medsegrwkv.cli.main import main
from medsegrwkv.grading.grade import Grader, grade_study
from medsegrwkv.grading.simulator import MotionSimulator
from medsegrwkv.nets.registry import DEFAULT_MODELS
from medsegrwkv.weights import MODELS_DIR, weights_status
from cli_helpers import assert_user_error, run_cli

VAL_CASE = "patient034/patient034_frame01"  # a validation patient (34 % 20 = 14)


@pytest.fixture(scope="module")
def grader() -> Grader:
    return Grader.from_pretrained(None, "cpu")


@pytest.fixture(scope="module")
def clean_and_corrupted(acdc: Path, tmp_path_factory) -> tuple[Path, Path]:
    """A validation volume as stored, and the same volume with severe motion simulated in every slice."""
    folder = tmp_path_factory.mktemp("grade")
    image = sitk.ReadImage(str(acdc / f"{VAL_CASE}.nii.gz"), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    sim = MotionSimulator(image.GetSpacing()[1::-1])
    corrupted = np.stack([sim.sample(s, 1, 100 + k)[0] for k, s in enumerate(array)])
    out = sitk.GetImageFromArray(corrupted.astype(np.float32))
    out.CopyInformation(image)
    clean_path, bad_path = folder / "clean.nii.gz", folder / "motion.nii.gz"
    sitk.WriteImage(image, str(clean_path))
    sitk.WriteImage(out, str(bad_path))
    return clean_path, bad_path


def test_default_grader_weights_are_installed_and_calibrated(grader):
    name = DEFAULT_MODELS["grading"]
    assert weights_status(name).value == "verified"
    manifest = grader.manifest
    assert manifest["task"] == "grading" and manifest["architecture"] == name
    assert 0.2 < grader.temperature < 5.0
    val = manifest["metrics"]["validation"]
    assert val["kappa_linear"] > 0.5 and val["accuracy"] > 0.4
    assert "simulated" in manifest["training"]["caveat"] and "CC BY-NC-SA 4.0" in manifest["licence"]
    assert (MODELS_DIR / name / "MODEL_CARD.md").is_file()


def test_grader_tells_severe_motion_from_a_clean_study(grader, clean_and_corrupted):
    clean, corrupted = (grade_study(p, grader=grader, lv_detection=False) for p in clean_and_corrupted)
    e_clean = np.mean([s["expected_score"] for s in clean["slices"]])
    e_bad = np.mean([s["expected_score"] for s in corrupted["slices"]])
    assert e_clean - e_bad > 1.5, (e_clean, e_bad)
    assert np.mean([s["diagnostic"] for s in clean["slices"]]) >= 0.7
    assert np.mean([not s["diagnostic"] for s in corrupted["slices"]]) >= 0.7
    assert corrupted["study"]["grade"] == "severe" and corrupted["study"]["nondiagnostic_slices"]
    assert "non-diagnostic" in corrupted["study"]["recommendation"]
    json.dumps(clean)  # a plain dict: what the Slicer engine receives


def test_grade_cli_writes_json_csv_and_png(tmp_path, clean_and_corrupted, capsys):
    out, table, strip = tmp_path / "quality.json", tmp_path / "quality.csv", tmp_path / "quality.png"
    assert main(["grade", str(clean_and_corrupted[1]), "-o", str(out), "--csv", str(table), "--png", str(strip),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "recommendation:" in printed and "study: " in printed
    report = json.loads(out.read_text())
    n = sitk.ReadImage(str(clean_and_corrupted[1])).GetSize()[2]
    assert report["n_slices"] == n and report["slice_axis"] == 2 and report["phases"] == [0]
    assert [s["index"] for s in report["slices"]] == list(range(n))  # ACDC: canonical order = file order
    for s in report["slices"]:
        assert sum(s["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
        assert 1.0 <= s["expected_score"] <= 5.0 and s["diagnostic"] == (s["score"] >= 3)
        assert s["grade"] == {1: "severe", 2: "severe", 3: "moderate", 4: "mild", 5: "mild"}[s["score"]]
    study = report["study"]
    assert set(study["lv_slices"]) <= set(range(n)) and study["lv_slices"]
    assert study["score"] == min(p["score"] for p in report["positions"] if p["lv"])
    assert study["nondiagnostic_slices"] == [p["index"] for p in report["positions"] if p["lv"] and p["score"] < 3]
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == n and {"p1", "p5", "expected_score", "diagnostic", "lv"} <= set(rows[0])
    assert Image.open(strip).size[0] >= 128 * n


def test_slice_indices_follow_the_input_layout(grader, acdc):
    """The same anatomy stored with the slices on the first axis, or in reverse order: the same
    grades, reported at the input's own slice indices."""
    image = sitk.ReadImage(str(acdc / f"{VAL_CASE}.nii.gz"), sitk.sitkFloat32)
    n = image.GetSize()[2]
    by_index = {}
    for name, variant in (("original", image), ("permuted", sitk.PermuteAxes(image, [2, 0, 1])),
                          ("reversed", sitk.Flip(image, [False, False, True]))):
        report = grade_study(variant, grader=grader, lv_detection=False)
        assert report["slice_axis"] == (0 if name == "permuted" else 2)
        assert sorted(s["index"] for s in report["slices"]) == list(range(n))
        by_index[name] = {s["index"]: s["expected_score"] for s in report["slices"]}
    for i in range(n):
        assert by_index["permuted"][i] == pytest.approx(by_index["original"][i], abs=0.02)
        assert by_index["reversed"][n - 1 - i] == pytest.approx(by_index["original"][i], abs=0.02)


@pytest.mark.parametrize("case", ["missing", "2d", "nan", "phase", "suffix", "folder", "segmentation_model", "labels"])
def test_bad_inputs_give_one_sentence_and_no_files(tmp_path, clean_and_corrupted, case, capsys):
    out, table = tmp_path / "q.json", tmp_path / "q.csv"
    source, extra, word = str(clean_and_corrupted[0]), [], None
    if case == "missing":
        source, word = str(tmp_path / "nope.nii.gz"), "does not exist"
    elif case == "2d":
        path = tmp_path / "slice.nii.gz"
        sitk.WriteImage(sitk.ReadImage(source)[:, :, 3], str(path))
        source, word = str(path), "2D"
    elif case == "nan":
        image = sitk.ReadImage(source, sitk.sitkFloat32)
        array = sitk.GetArrayFromImage(image)
        array[1, 5:9, 5:9] = np.nan
        bad = sitk.GetImageFromArray(array)
        bad.CopyInformation(image)
        source = str(tmp_path / "nan.nii.gz")
        sitk.WriteImage(bad, source)
        word = "NaN"
    elif case == "phase":
        extra, word = ["--phase", "3"], "Phase 3"
    elif case == "suffix":
        out, word = tmp_path / "q.txt", ".json"
    elif case == "folder":
        table, word = tmp_path / "no_such_folder" / "q.csv", "does not exist"
    elif case == "labels":  # a labelmap one slice short of the graded volume
        cropped = sitk.ReadImage(source)[:, :, 1:] > 1e9
        sitk.WriteImage(cropped, str(tmp_path / "labels.nrrd"))
        extra, word = ["--labels", str(tmp_path / "labels.nrrd")], "does not match the graded phase's geometry"
    else:
        extra, word = ["--model", "unet2d"], "not a grading model"
    assert main(["grade", source, "-o", str(out), "--csv", str(table), "--device", "cpu", *extra]) == 2
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert lines[-1].startswith("error: ") and word.lower() in lines[-1].lower(), lines
    assert not out.exists() and not table.exists()
    assert not list(tmp_path.glob(".q.*"))  # no temporary leftovers


def test_grade_cli_counts_the_lv_slices_of_a_given_labelmap(tmp_path, capsys):
    """`grade --labels` with one labelmap per phase (as `segment` writes a cine's): the first graded
    phase's LV slices, here the expert's, decide the study grade; no segmentation model runs."""
    from medsegrwkv.io import read_study, sample_data_dir
    from medsegrwkv.io.contours import sunnybrook_reference

    dicom = sample_data_dir() / "SCD0000101" / "dicom"
    references = sunnybrook_reference(read_study(dicom), dicom.parent / "contours", dicom)
    labels = [sitk.GetArrayFromImage(references[p][0]) for p in (0, 1)]
    lv = [[k for k in range(len(a)) if np.count_nonzero(np.isin(a[k], (2, 3))) >= 20] for a in labels]
    labels[1][lv[1][0]] = 0  # the second phase's most basal LV slice erased, as a user may correct it
    images = [sitk.GetImageFromArray(a) for a in labels]
    for p, image in enumerate(images):
        image.CopyInformation(references[p][0])
    sitk.WriteImage(sitk.JoinSeries(images), str(tmp_path / "labels.nrrd"))
    for phase, expected in ((0, lv[0]), (1, lv[1][1:])):
        out = tmp_path / f"q{phase}.json"
        assert main(["grade", str(dicom), "-o", str(out), "--phase", str(phase), "--labels", str(tmp_path / "labels.nrrd"),
                     "--device", "cpu"]) == 0
        study = json.loads(out.read_text())["study"]
        assert study["lv_slices"] == expected and "the given segmentation" in study["lv_slices_source"]
    capsys.readouterr()


def test_grade_exits_2_from_the_shell(tmp_path):
    out = tmp_path / "q.json"
    assert_user_error(run_cli("grade", str(tmp_path / "nope.nii.gz"), "-o", str(out), "--device", "cpu"),
                      "does not exist")
    assert not out.exists()


def test_models_lists_the_graders(capsys, monkeypatch):
    import medsegrwkv.nets.registry as registry

    every = registry.list_models
    assert {s.name for s in every("grading")} >= {"grader_regnetx_002", "grader_resnet101d", "grader_swin_base",
                                                  "grader_coat_lite_small", "grader_twins_pcpvt_base",
                                                  "grader_twins_svt_base"}
    assert all(s.spatial_dims == 2 and s.defaults["num_classes"] == 5 for s in every("grading"))
    # FLOP counting of every backbone is slow on a CPU: list the default and Swin (fixed 224 input).
    shown = [registry.get_spec("grader_regnetx_002"), registry.get_spec("grader_swin_base")]
    monkeypatch.setattr(registry, "list_models", lambda task=None: shown)  # other models: test_cli
    assert main(["models", "--json"]) == 0
    graders = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    lite, swin = graders["grader_regnetx_002"], graders["grader_swin_base"]
    assert lite["default"] and lite["weights"] == "verified" and lite["flops_input"] == [1, 1, 224, 224]
    assert lite["validation_kappa_linear"] > 0.5 and swin["weights"] == "no weights" and not swin["default"]
    assert lite["params"] < 3e6 and swin["params"] > 80e6 and swin["gflops"] > 20
    assert main(["models"]) == 0
    assert "grader_regnetx_002 *" in capsys.readouterr().out


def test_demo_grades_the_bundled_study(tmp_path, capsys, monkeypatch):
    import medsegrwkv.cli.demo as demo

    from medsegrwkv.io import read_study, sample_data_dir
    from medsegrwkv.io.contours import sunnybrook_reference

    # The segmentation is test_cli's; here the expert's ED labelmap stands in for the demo's own, and
    # the grading must read the LV slices from it rather than segment the study again.
    case = sample_data_dir() / "SCD0000101"
    expert, contoured = sunnybrook_reference(read_study(case / "dicom"), case / "contours", case / "dicom")[0]
    monkeypatch.setattr(demo, "run_demo", lambda output, model=None, device="auto": {"labelmaps": [expert]})
    monkeypatch.setattr(demo, "print_report", lambda result: None)
    assert main(["demo", "--output", str(tmp_path), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "motion grading, model grader_regnetx_002" in printed and "recommendation:" in printed
    report = json.loads((tmp_path / "SCD0000101_quality.json").read_text())
    assert report["n_slices"] == 12 and report["phases"] == [0, 1] and len(report["slices"]) == 24
    with_lv = [k for k in range(12) if np.count_nonzero(np.isin(sitk.GetArrayViewFromImage(expert)[k], (2, 3))) >= 20]
    assert report["study"]["lv_slices"] == with_lv and set(with_lv) <= set(contoured)
    assert "the given segmentation" in report["study"]["lv_slices_source"]
    assert all(s["file"].endswith(".dcm") for s in report["slices"])
    assert (tmp_path / "SCD0000101_quality.png").stat().st_size > 0


def test_grading_refuses_a_labelmap_off_the_phases_grid():
    from medsegrwkv.errors import MedSegError

    image = sitk.GetImageFromArray(np.random.default_rng(0).random((4, 64, 64)).astype(np.float32))
    labels = sitk.Image(64, 64, 5, sitk.sitkUInt8)
    with pytest.raises(MedSegError, match=r"does not match the graded phase's geometry: it has size \(64, 64, 5\)"):
        grade_study(image, device="cpu", lv_labels=labels)


def test_grading_stops_when_cancelled_with_the_shared_cancel_error():
    """grade_study polls cancel between batches and raises the one Cancelled (medsegrwkv.progress)."""
    import numpy as np
    import SimpleITK as sitk

    from medsegrwkv.grading.grade import grade_study
    from medsegrwkv.progress import Cancelled

    image = sitk.GetImageFromArray(np.random.default_rng(0).random((4, 64, 64)).astype(np.float32))
    with pytest.raises(Cancelled, match="cancelled"):
        grade_study(image, device="cpu", cancel=lambda: True)
