"""Cardiac function (medsegrwkv.function, `medsegrwkv function`, `evaluate-function`) on real ACDC
and Sunnybrook data: volumes against a hand count of voxels, ED/ES, BSA, geometry, warnings, errors."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import medsegrwkv.io  # noqa: F401  (routes ITK's "unexpected scales in sform" to the log)
from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.function import check_labels_match, compute_function, default_labels, mosteller_bsa
from medsegrwkv.function.plots import save_curve_png
from medsegrwkv.io.dicom import patient_size_weight

PATIENT = "patient013"  # validation patient, DCM; Info.cfg: ED frame 1, ES frame 14
LABELS = default_labels()


def info(folder: Path) -> dict[str, str]:
    from medsegrwkv.training.function_validation import read_info_cfg

    return read_info_cfg(folder / "Info.cfg")


@pytest.fixture(scope="module")
def pair(acdc: Path) -> dict:
    """The ED and ES ground truth and images of one ACDC patient, frames from Info.cfg."""
    folder = acdc / PATIENT
    cfg = info(folder)
    read = lambda frame, gt: sitk.ReadImage(str(folder / f"{PATIENT}_frame{int(frame):02d}{'_gt' if gt else ''}.nii.gz"))  # noqa: E731
    return {"ed": read(cfg["ED"], True), "es": read(cfg["ES"], True), "ed_image": read(cfg["ED"], False),
            "es_image": read(cfg["ES"], False), "height": float(cfg["Height"]), "weight": float(cfg["Weight"])}


def hand_ml(labelmap: sitk.Image, value: int) -> float:
    """Voxel count x voxel volume: no slice axis involved."""
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(labelmap) == value) * np.prod(labelmap.GetSpacing()) / 1000)


def with_array(reference: sitk.Image, array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.CopyInformation(reference)
    return image


def test_two_phase_ground_truth_matches_a_hand_count(pair):
    f = compute_function([pair["ed"], pair["es"]], LABELS)
    edv, esv = hand_ml(pair["ed"], 3), hand_ml(pair["es"], 3)
    assert (f.ed_phase, f.es_phase) == (0, 1)
    assert f.lv["edv_ml"] == pytest.approx(edv, rel=1e-9)
    assert f.lv["esv_ml"] == pytest.approx(esv, rel=1e-9)
    assert f.lv["sv_ml"] == pytest.approx(edv - esv, rel=1e-9)
    assert f.lv["ef_percent"] == pytest.approx(100 * (edv - esv) / edv, rel=1e-9)
    assert f.lv["mass_g"] == pytest.approx(1.05 * hand_ml(pair["ed"], 2), rel=1e-9)
    rv_ed, rv_es = hand_ml(pair["ed"], 1), hand_ml(pair["es"], 1)
    assert f.rv["ef_percent"] == pytest.approx(100 * (rv_ed - rv_es) / rv_ed, rel=1e-9)
    assert f.myo_ml[1] == pytest.approx(hand_ml(pair["es"], 2), rel=1e-9)
    assert f.slice_axis == 2 and f.slice_spacing_mm == pytest.approx(pair["ed"].GetSpacing()[2])
    data = json.loads(json.dumps(f.to_json()))
    assert data["lv"]["edv_ml"] == round(edv, 2) and data["lv"]["ef_percent"] == round(f.lv["ef_percent"], 2)
    assert {"ed_phase", "es_phase", "lv", "rv", "bsa_m2", "curve", "method", "warnings"} <= data.keys()
    assert [row["phase"] for row in data["curve"]] == [0, 1] and data["curve"][0]["time_ms"] is None
    assert "Simpson" in data["method"] and "1.05" in data["method"]
    assert data["bsa_m2"] is None and "edv_ml_m2" not in data["lv"]


def test_ed_and_es_are_the_largest_and_smallest_lv_cavity(pair):
    f = compute_function([pair["es"], pair["ed"], pair["es"]], LABELS, trigger_times_ms=[30.0, 400.0, 700.0])
    assert (f.ed_phase, f.es_phase) == (1, 0)
    assert (f.ed_source, f.es_source) == ("largest LV cavity volume", "smallest LV cavity volume")
    assert [row["time_ms"] for row in f.curve()] == [30.0, 400.0, 700.0]
    given = compute_function([pair["es"], pair["ed"], pair["es"]], LABELS, ed=1, es=2)
    assert (given.ed_phase, given.es_phase, given.ed_source) == (1, 2, "given")
    for ed, es in ((3, 0), (1, -1), (None, 7)):
        with pytest.raises(MedSegError, match="does not exist") as err:
            compute_function([pair["es"], pair["ed"], pair["es"]], LABELS, ed=ed, es=es)
        assert err.value.code is ErrorCode.BAD_PHASE


def test_mosteller_bsa_and_indexed_values(pair):
    assert mosteller_bsa(180.0, 80.0) == pytest.approx(2.0)  # sqrt(180 * 80 / 3600) = sqrt(4)
    assert mosteller_bsa(pair["height"], pair["weight"]) == pytest.approx(math.sqrt(175.0 * 57.0 / 3600.0))
    f = compute_function([pair["ed"], pair["es"]], LABELS, height_cm=180.0, weight_kg=80.0)
    assert f.bsa_m2 == pytest.approx(2.0)
    for key in ("edv_ml", "esv_ml", "sv_ml", "mass_g"):
        assert f.lv[f"{key}_m2"] == pytest.approx(f.lv[key] / 2.0)
    assert f.rv["edv_ml_m2"] == pytest.approx(f.rv["edv_ml"] / 2.0) and "mass_g_m2" not in f.rv
    with pytest.raises(MedSegError, match="centimetres"):
        compute_function([pair["ed"], pair["es"]], LABELS, height_cm=1.75, weight_kg=70.0)
    with pytest.raises(MedSegError, match="positive"):
        compute_function([pair["ed"], pair["es"]], LABELS, height_cm=175.0, weight_kg=float("nan"))


def test_permuted_flipped_and_oblique_labelmaps_give_the_same_volumes(pair):
    reference = compute_function([pair["ed"], pair["es"]], LABELS)
    for order, flips in (([2, 0, 1], [False, True, False]), ([1, 2, 0], [True, False, True])):
        moved = [sitk.Flip(sitk.PermuteAxes(image, order), flips) for image in (pair["ed"], pair["es"])]
        f = compute_function(moved, LABELS)
        assert f.slice_axis == order.index(2)  # the slice axis moved with the permutation
        assert f.lv_ml == pytest.approx(reference.lv_ml, rel=1e-9)
        assert f.rv_ml == pytest.approx(reference.rv_ml, rel=1e-9)
        assert f.lv["mass_g"] == pytest.approx(reference.lv["mass_g"], rel=1e-9)
        assert len(f.warnings) == len(reference.warnings)
    # an oblique orientation (rotated direction cosines) does not change the voxel grid's volumes
    c, s = math.cos(0.5), math.sin(0.5)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    oblique = []
    for image in (pair["ed"], pair["es"]):
        copy = sitk.Image(image)
        copy.SetDirection(rotation.ravel().tolist())
        oblique.append(copy)
    assert compute_function(oblique, LABELS).lv_ml == pytest.approx(reference.lv_ml, rel=1e-9)


def test_structures_are_found_by_name_not_number(pair):
    swap = {1: 3, 3: 1, 2: 2, 0: 0}  # a convention with the LV cavity as 1 and the RV cavity as 3
    swapped = [with_array(p, np.vectorize(swap.get)(sitk.GetArrayFromImage(p)).astype(np.uint8))
               for p in (pair["ed"], pair["es"])]
    names = [{"name": "LV cavity", "value": 1}, {"name": "LV myocardium", "value": 2}, {"name": "RV cavity", "value": 3}]
    assert compute_function(swapped, names).lv_ml == pytest.approx(compute_function([pair["ed"], pair["es"]], LABELS).lv_ml)
    lv_only = compute_function([pair["ed"], pair["es"]], [{"name": "LV cavity", "value": 3}])
    assert lv_only.rv is None and lv_only.lv["mass_g"] is None
    with pytest.raises(MedSegError, match="LV cavity") as err:
        compute_function([pair["ed"], pair["es"]], [{"name": "RV cavity", "value": 1}])
    assert err.value.code is ErrorCode.BAD_LABELS


def test_one_phase_and_mixed_geometry_are_one_sentence(pair):
    with pytest.raises(MedSegError, match="at least two cardiac phases") as err:
        compute_function([pair["ed"]], LABELS)
    assert err.value.code is ErrorCode.BAD_PHASE
    shifted = sitk.Image(pair["es"])
    shifted.SetSpacing((2.0, 2.0, 10.0))
    with pytest.raises(MedSegError, match="different geometry from phase 0") as err:
        compute_function([pair["ed"], shifted], LABELS)
    assert err.value.code is ErrorCode.BAD_LABELS and "\n" not in str(err.value)
    check_labels_match(pair["ed_image"], pair["ed"])
    with pytest.raises(MedSegError, match="does not match the image geometry: it has spacing"):
        check_labels_match(pair["ed_image"], shifted)
    with pytest.raises(MedSegError, match="size"):
        check_labels_match(pair["ed_image"], pair["ed"][:, :, 1:])
    moved = sitk.Image(pair["ed"])
    moved.SetOrigin(tuple(v + 5.0 for v in moved.GetOrigin()))
    with pytest.raises(MedSegError, match="origin"):
        check_labels_match(pair["ed_image"], moved)


def test_coverage_warnings_follow_the_first_and_last_slice(pair):
    ed, es = (sitk.GetArrayFromImage(pair[k]) for k in ("ed", "es"))
    # pad with one empty slice at each end: nothing reaches the ends, volumes unchanged
    full = []
    for key, array in (("ed", ed), ("es", es)):
        bigger = np.concatenate([np.zeros_like(array[:1]), array, np.zeros_like(array[:1])])
        image = sitk.GetImageFromArray(bigger)
        image.SetSpacing(pair[key].GetSpacing())
        image.SetDirection(pair[key].GetDirection())
        full.append(image)
    f = compute_function(full, LABELS)
    assert not [w for w in f.warnings if "slice holds" in w]
    assert f.lv_ml == pytest.approx(compute_function([pair["ed"], pair["es"]], LABELS).lv_ml)
    # crop the stack through the middle of the ventricle: the cavity now reaches both ends
    cropped = [pair[k][:, :, 3:-3] for k in ("ed", "es")]
    warnings = compute_function(cropped, LABELS).warnings
    first = next(w for w in warnings if w.startswith("The first slice holds"))
    last = next(w for w in warnings if w.startswith("The last slice holds"))
    assert "LV cavity in phases 0, 1" in first and "LV cavity" in last and "base or apex" in first
    # the real stack: the structures the ground truth draws on its end slices are named
    real = compute_function([pair["ed"], pair["es"]], LABELS).warnings
    for end, index in (("first", 0), ("last", -1)):
        present = [name for value, name in ((3, "LV cavity"), (2, "LV myocardium"), (1, "RV cavity"))
                   if (ed[index] == value).any()]
        sentence = [w for w in real if w.startswith(f"The {end} slice holds")]
        assert bool(sentence) == bool(present)
        for name in present:
            assert name in sentence[0]


def test_implausible_and_non_monotone_curves_warn(pair):
    same = compute_function([pair["ed"], pair["ed"]], LABELS, ed=0, es=1)
    assert same.lv["ef_percent"] == 0
    assert any("not smaller than at ED" in w for w in same.warnings)
    assert any("LV ejection fraction 0.0% is outside 5-90%" in w for w in same.warnings)
    # ED, ES, then ED again before an ES: the volume rises and falls twice in one cycle
    cycle = compute_function([pair["ed"], pair["es"], pair["ed"], pair["es"], pair["ed"], pair["ed"]], LABELS)
    assert (cycle.ed_phase, cycle.es_phase) == (0, 1)
    assert any(w.startswith("The LV volume curve is not monotone") and "phase 3" in w for w in cycle.warnings)
    assert any(w.startswith("The RV volume curve is not monotone") for w in cycle.warnings)
    smooth = compute_function([pair["ed"], pair["ed"], pair["es"], pair["es"]], LABELS)  # falls once, rises once
    assert (smooth.ed_phase, smooth.es_phase) == (0, 2) and not any("not monotone" in w for w in smooth.warnings)
    empty = with_array(pair["es"], np.zeros_like(sitk.GetArrayFromImage(pair["es"])))
    assert any("No LV cavity was found in phase 1" in w for w in compute_function([pair["ed"], empty], LABELS).warnings)
    with pytest.raises(MedSegError, match="No phase contains any LV cavity"):
        compute_function([empty, empty], LABELS)


def test_patient_size_and_weight_from_dicom(tmp_path):
    import pydicom
    from medsegrwkv.io import sample_data_dir

    source = sorted((sample_data_dir() / "SCD0000101" / "dicom").glob("*.dcm"))[0]
    assert patient_size_weight([source]) == (None, None)  # the anonymised sample has neither
    ds = pydicom.dcmread(source)
    ds.PatientSize, ds.PatientWeight = "1.75", "70"
    good = tmp_path / "good.dcm"
    ds.save_as(good)
    assert patient_size_weight([[good]]) == (175.0, 70.0)
    ds.PatientSize, ds.PatientWeight = "175", "0"  # centimetres where metres belong, and a zero
    odd = tmp_path / "odd.dcm"
    ds.save_as(odd)
    assert patient_size_weight([odd]) == (None, None)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file")
    assert patient_size_weight([junk, good]) == (175.0, 70.0)


def test_curve_png(pair, tmp_path):
    from PIL import Image

    f = compute_function([pair["ed"], pair["es"], pair["ed"]], LABELS, trigger_times_ms=[0.0, 300.0, 800.0])
    save_curve_png(f, tmp_path / "curve.png", title=PATIENT)
    with Image.open(tmp_path / "curve.png") as picture:
        assert picture.size[0] > 400 and picture.format == "PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["curve.png"]


def _four_d(images: list[sitk.Image], path: Path) -> Path:
    sitk.WriteImage(sitk.JoinSeries(images), str(path))
    return path


@pytest.fixture
def cine(pair, tmp_path) -> dict:
    """A real two-phase study (ED, ES) as a 4D image and its 4D ground-truth labelmap."""
    return {"image": _four_d([pair["ed_image"], pair["es_image"]], tmp_path / "cine.nii.gz"),
            "labels": _four_d([sitk.Cast(pair["ed"], sitk.sitkUInt8), sitk.Cast(pair["es"], sitk.sitkUInt8)],
                              tmp_path / "cine_gt.nii.gz")}


def test_cli_with_labels_end_to_end(pair, cine, tmp_path, capsys):
    from medsegrwkv.cli.main import main

    out, table, png = tmp_path / "function.json", tmp_path / "curve.csv", tmp_path / "curve.png"
    code = main(["function", str(cine["image"]), "-o", str(out), "--labels", str(cine["labels"]), "--csv", str(table),
                 "--png", str(png), "--height-cm", "180", "--weight-kg", "80"])
    assert code == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert {"ed_phase", "es_phase", "lv", "rv", "bsa_m2", "curve", "method", "warnings", "source"} <= data.keys()
    assert (data["ed_phase"], data["es_phase"]) == (0, 1) and data["bsa_m2"] == 2.0 and data["model"] is None
    assert data["lv"]["edv_ml"] == pytest.approx(hand_ml(pair["ed"], 3), abs=0.01)
    assert data["lv"]["edv_ml_m2"] == pytest.approx(hand_ml(pair["ed"], 3) / 2, abs=0.01)
    assert table.read_text().splitlines()[0] == "phase,time_ms,lv_ml,rv_ml,myo_ml"
    assert png.stat().st_size > 1000
    assert "LV: EDV" in capsys.readouterr().out
    # an ACDC Info.cfg beside the file gives the height and weight when no flags do
    (cine["image"].parent / "Info.cfg").write_text("ED: 1\nES: 14\nHeight: 175.0\nWeight: 57.0\n")
    assert main(["function", str(cine["image"]), "-o", str(out), "--labels", str(cine["labels"])]) == 0
    data = json.loads(out.read_text())
    assert data["bsa_m2"] == round(mosteller_bsa(175.0, 57.0), 2) and data["body_size_from"].endswith("Info.cfg")


def test_cli_bad_input_is_one_sentence_and_writes_nothing(pair, cine, tmp_path, capsys, monkeypatch):
    from medsegrwkv.cli.main import main

    out = tmp_path / "out" / "function.json"
    out.parent.mkdir()
    single = tmp_path / "single.nii.gz"
    sitk.WriteImage(pair["ed_image"], str(single))
    wrong = tmp_path / "wrong.nii.gz"
    sitk.WriteImage(sitk.Cast(pair["ed"][:, :, 1:], sitk.sitkUInt8), str(wrong))
    cases = [
        ([str(single), "--labels", str(wrong)], "at least two cardiac phases"),
        ([str(cine["image"]), "--labels", str(wrong)], "hold"),
        ([str(cine["image"]), "--labels", str(wrong), str(wrong)], "does not match the image geometry"),
        ([str(cine["image"]), "--labels", str(cine["labels"]), "--ed", "2"], "ED phase 2 does not exist"),
        ([str(cine["image"]), "--labels", str(cine["labels"]), "--height-cm", "170"], "height and the weight"),
        ([str(tmp_path / "missing.nii.gz"), "--labels", str(cine["labels"])], "does not exist"),
    ]
    for extra, message in cases:
        assert main(["function", *extra, "-o", str(out), "--csv", str(out.with_suffix(".csv"))]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and err[-1].startswith("error: "), (extra, err)
        assert list(out.parent.iterdir()) == []
    assert main(["function", str(cine["image"]), "-o", str(tmp_path / "f.txt"), "--labels", str(cine["labels"])]) == 2
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # Slicer's Python without matplotlib
    assert main(["function", str(cine["image"]), "-o", str(out), "--labels", str(cine["labels"]),
                 "--png", str(out.with_suffix(".png"))]) == 2
    assert "needs matplotlib" in capsys.readouterr().err
    assert list(out.parent.iterdir()) == []


def test_agreement_statistics():
    from medsegrwkv.training.function_validation import agreement

    s = agreement([11.0, 22.0, 29.0, 42.0], [10.0, 20.0, 30.0, 40.0])
    d = np.array([1.0, 2.0, -1.0, 2.0])
    assert s["n"] == 4 and s["bias"] == pytest.approx(d.mean()) and s["sd"] == pytest.approx(d.std(ddof=1))
    assert s["loa_high"] == pytest.approx(d.mean() + 1.96 * d.std(ddof=1))
    assert s["mae"] == pytest.approx(np.abs(d).mean())
    assert s["r"] == pytest.approx(np.corrcoef([11, 22, 29, 42], [10, 20, 30, 40])[0, 1])
    assert agreement([None, 1.0], [2.0, None]) == {"n": 0}


def test_validation_of_ground_truth_against_itself_agrees_exactly(acdc, tmp_path, monkeypatch):
    """The validation pipeline end to end on two real patients, with a 'model' that returns the truth."""
    from medsegrwkv.training import function_validation as fv

    studies = fv.patient_studies(acdc, "val")[:2]
    assert len(fv.patient_studies(acdc, "val")) == 20
    monkeypatch.setattr(fv, "patient_studies", lambda data, split="val": studies)
    truth = iter([sitk.ReadImage(str(s[k].label)) for s in studies for k in ("ed", "es")])

    class Truth:
        manifest = {"name": "truth", "labels": LABELS}

        def segment_phases(self, images, tta):
            assert tta is True  # passed through as asked
            return [next(truth) for _ in images]

    report = fv.validate_function(acdc, Truth(), tta=True)
    assert report["tta"] and "TTA over the four in-plane rotations" in report["method"]
    assert [p["patient"] for p in report["patients"]] == [s["patient"] for s in studies]
    for key, *_ in fv.METRICS:
        assert report["summary"][key]["bias"] == 0 and report["summary"][key]["mae"] == 0
    assert report["ed_es_detection"]["from_truth"] == 2
    paths = fv.write_validation(report, tmp_path)
    assert [p.name for p in paths] == ["function_validation.json", "function_validation.md", "function_validation.png"]
    assert "| LV EF (%) | 2 |" in paths[1].read_text()


def test_cli_segments_the_bundled_cine_and_reports_its_function(tmp_path, capsys):
    """The default model on the bundled Sunnybrook study (ES and ED of a real cine): ED and ES are found."""
    from medsegrwkv.cli.main import main
    from medsegrwkv.io import sample_data_dir

    study = tmp_path / "study"
    shutil.copytree(sample_data_dir() / "SCD0000101" / "dicom", study)
    out = tmp_path / "function.json"
    assert main(["function", str(study), "-o", str(out), "--device", "cpu"]) == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert (data["ed_phase"], data["es_phase"]) == (1, 0)  # phase 0 is end-systole in this sample
    assert data["model"] and data["curve"][0]["time_ms"] == pytest.approx(287, abs=15)
    assert 15 < data["lv"]["ef_percent"] < 40  # the expert contours give 26.3%


def test_evaluate_function_bad_data_is_one_sentence(tmp_path, capsys):
    from medsegrwkv.cli.main import main

    out = tmp_path / "validation"
    assert main(["evaluate-function", "--data", str(tmp_path / "nowhere"), "--output", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err and not out.exists()
    (tmp_path / "empty").mkdir()
    assert main(["evaluate-function", "--data", str(tmp_path / "empty"), "--output", str(out)]) == 2
    assert "No labelled ACDC-layout frames" in capsys.readouterr().err and not out.exists()
