"""The command line: `models`, bad inputs (one sentence, exit 2, no output file), evaluate, demo."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medsegrwkv.cli.main import main
from medsegrwkv.nets.registry import DEFAULT_MODELS, get_spec
from medsegrwkv.weights import MODELS_DIR, WeightsStatus, weights_status
from cli_helpers import assert_user_error, run_cli

CASE = "patient014/patient014_frame01"


@pytest.fixture()
def volume(tmp_path: Path, acdc: Path) -> Path:
    path = tmp_path / "study.nii.gz"
    shutil.copy(acdc / f"{CASE}.nii.gz", path)
    return path


def test_models_lists_every_model_with_size_and_weights(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    unet = rows["unet2d"]
    assert unet["task"] == "segmentation" and unet["spatial_dims"] == 2
    assert unet["params"] == 1_625_849  # MONAI UNet (16..256 channels, 2 residual units)
    assert unet["weights"] == "verified"
    assert unet["validation_mean_dice"] >= 0.85
    assert all(r["weights"] in ("verified", "no weights", "checksum mismatch") for r in rows.values())
    # the default is the best single segmentation network with weights on the validation split; an
    # ensemble (its members' summed time, beyond the CPU budget for a default) may score above it
    default = DEFAULT_MODELS["segmentation"]
    assert [n for n, r in rows.items() if r["default"] and r["task"] == "segmentation"] == [default]
    verified = {n: r for n, r in rows.items() if r["task"] == "segmentation" and r["weights"] == "verified"}
    ensembles = {n for n in verified if "members" in get_spec(n).defaults}
    assert ensembles == {"medsegrwkv-t+unet2d"}
    assert rows[default]["validation_mean_dice"] == max(r["validation_mean_dice"] for n, r in verified.items()
                                                        if n not in ensembles)
    assert rows["medsegrwkv-t+unet2d"]["validation_mean_dice"] > rows[default]["validation_mean_dice"]
    assert main(["models"]) == 0
    assert f"{default} *" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "truncated", "2d", "nan", "empty_dir"])
def test_unreadable_inputs(tmp_path, volume, case):
    out = tmp_path / "labels.nii.gz"
    if case == "missing":
        source, word = tmp_path / "nope.nii.gz", "nope.nii.gz"
    elif case == "truncated":
        source, word = tmp_path / "cut.nii.gz", "cut.nii.gz"
        source.write_bytes(volume.read_bytes()[: volume.stat().st_size // 2])
    elif case == "2d":
        source, word = tmp_path / "slice.nii.gz", "2D"
        sitk.WriteImage(sitk.ReadImage(str(volume))[:, :, 3], str(source))
    elif case == "nan":
        source, word = tmp_path / "nan.nii.gz", "NaN"
        image = sitk.ReadImage(str(volume), sitk.sitkFloat32)
        array = sitk.GetArrayFromImage(image)
        array[2, 10:20, 10:20] = np.nan
        bad = sitk.GetImageFromArray(array)
        bad.CopyInformation(image)
        sitk.WriteImage(bad, str(source))
    else:
        source, word = tmp_path / "empty", "DICOM"
        source.mkdir()
    assert_user_error(run_cli("segment", str(source), "-o", str(out), "--device", "cpu"), word)
    assert not out.exists()


@pytest.mark.parametrize("roi,word", [("10,10,0,10,50,5", "empty"), ("900,900,0,950,950,5", "outside"),
                                      ("1,2,3", "six integers")])
def test_bad_roi(tmp_path, volume, roi, word):
    out = tmp_path / "labels.nii.gz"
    assert main(["segment", str(volume), "-o", str(out), "--roi", roi, "--device", "cpu"]) == 2
    assert not out.exists()
    result = run_cli("segment", str(volume), "-o", str(out), "--roi", roi)
    assert_user_error(result, word)


@pytest.mark.parametrize("command,case", [("segment", "roi_outside"), ("segment", "unreadable_input"),
                                          ("segment", "output_is_a_folder"), ("grade", "unreadable_input"),
                                          ("function", "unreadable_input")])
def test_a_refused_request_does_not_import_the_network_libraries(tmp_path, volume, command, case):
    """A refused request does not keep the user waiting for torch and MONAI (seconds to import)."""
    out, source = tmp_path / ("labels.nii.gz" if command == "segment" else "report.json"), volume
    options = ["--roi", "900,900,0,950,950,5" if case == "roi_outside" else "0,0,0,10,10,3"] if command == "segment" else []
    if case == "unreadable_input":
        source = tmp_path / "broken.nii.gz"
        source.write_bytes(b"not a NIfTI file")
    elif case == "output_is_a_folder":
        out.mkdir()
    code = ("import sys; from medsegrwkv.cli.main import main; "
            f"code = main({[command, str(source), '-o', str(out), *options]!r}); "
            "print(code, [m for m in ('torch', 'monai') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().splitlines()[-1] == "2 []", result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not out.is_file()


def test_unknown_model_and_device(tmp_path, volume):
    out = tmp_path / "labels.nii.gz"
    assert_user_error(run_cli("segment", str(volume), "-o", str(out), "--model", "no-such-net"), "unknown model",
                      "segmentation: ", "unet2d")
    assert_user_error(run_cli("segment", str(volume), "-o", str(out), "--model", "medsegrwkv-tt"),
                      "did you mean 'medsegrwkv-t'")
    assert_user_error(run_cli("segment", str(volume), "-o", str(out), "--device", "tpu"), "device")
    assert not out.exists()


def test_checksum_mismatch_is_refused(tmp_path, volume):
    weights = tmp_path / "weights"
    shutil.copytree(MODELS_DIR / "unet2d", weights)
    blob = bytearray((weights / "model.safetensors").read_bytes())
    blob[-10] ^= 0xFF
    (weights / "model.safetensors").write_bytes(bytes(blob))
    out = tmp_path / "labels.nii.gz"
    assert_user_error(run_cli("segment", str(volume), "-o", str(out), "--weights", str(weights)), "checksum")
    assert not out.exists()


def test_unwritable_output_leaves_nothing(tmp_path, volume):
    assert_user_error(run_cli("segment", str(volume), "-o", str(tmp_path / "missing" / "l.nii.gz")), "does not exist")
    assert_user_error(run_cli("segment", str(volume), "-o", str(tmp_path / "labels.txt")), "must end")
    existing = tmp_path / "keep.nii.gz"
    existing.write_bytes(b"user data")
    assert_user_error(run_cli("segment", str(tmp_path / "nope.nii.gz"), "-o", str(existing)), "nope.nii.gz")
    assert existing.read_bytes() == b"user data"


def test_dicom_folder_with_two_series_asks_which(tmp_path, sunnybrook):
    import pydicom

    folder = tmp_path / "dicom"
    folder.mkdir()
    for n in range(1, 241, 20):  # one phase, 12 positions, as two series
        ds = pydicom.dcmread(sunnybrook / "SCD0000101" / f"{n}.dcm")
        if n > 120:
            ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
            ds.SeriesNumber = 301
        ds.save_as(folder / f"{n}.dcm")
    out = tmp_path / "labels.nii.gz"
    assert_user_error(run_cli("segment", str(folder), "-o", str(out)), "301", "--series")
    assert not out.exists()


def test_segment_cine_dicom_writes_4d_labelmap_and_phase_selects_one(tmp_path):
    from medsegrwkv.inference.plausibility import label_volumes_ml
    from medsegrwkv.inference.postprocess import systolic_phases
    from medsegrwkv.io import read_study, sample_data_dir

    dicom = sample_data_dir() / "SCD0000101" / "dicom"
    study = read_study(dicom)
    out4d, out3d = tmp_path / "all.nrrd", tmp_path / "es.nii.gz"
    assert main(["segment", str(dicom), "-o", str(out4d), "--device", "cpu"]) == 0
    labels = sitk.ReadImage(str(out4d))
    assert labels.GetDimension() == 4 and labels.GetSize() == (*study.phases[0].GetSize(), 2)
    np.testing.assert_allclose(labels.GetSpacing()[:3], study.phases[0].GetSpacing(), atol=1e-4)
    # a phase alone gets the basal-RV trim, as the cine's systolic phase does (its diastolic one does not)
    cine = [sitk.GetImageFromArray(a) for a in sitk.GetArrayFromImage(labels)]
    k = systolic_phases([label_volumes_ml(phase)[3] for phase in cine]).index(True)
    assert main(["segment", str(dicom), "-o", str(out3d), "--phase", str(k), "--device", "cpu"]) == 0
    one = sitk.ReadImage(str(out3d))
    assert one.GetSize() == study.phases[k].GetSize()
    np.testing.assert_allclose(one.GetOrigin(), study.phases[k].GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(one.GetDirection(), study.phases[k].GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(one), sitk.GetArrayFromImage(labels)[k])
    assert set(np.unique(sitk.GetArrayFromImage(one))) == {0, 1, 2, 3}
    assert main(["segment", str(dicom), "-o", str(out3d), "--phase", "5"]) == 2


def test_segment_enhanced_dicom_file_gives_the_classic_series_labels(tmp_path):
    from medsegrwkv.io import sample_data_dir
    from test_io import enhanced_export

    dicom = sample_data_dir() / "SCD0000101" / "dicom"
    enhanced_export(dicom).save_as(tmp_path / "enhanced.dcm")
    classic, enhanced = tmp_path / "classic.nii.gz", tmp_path / "enhanced.nii.gz"
    assert main(["segment", str(dicom), "-o", str(classic), "--phase", "0", "--device", "cpu"]) == 0
    assert main(["segment", str(tmp_path / "enhanced.dcm"), "-o", str(enhanced), "--phase", "0", "--device", "cpu"]) == 0
    a, b = sitk.ReadImage(str(classic)), sitk.ReadImage(str(enhanced))
    np.testing.assert_allclose(b.GetOrigin(), a.GetOrigin(), atol=1e-3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(b), sitk.GetArrayFromImage(a))
    assert (sitk.GetArrayFromImage(a) == 3).sum() > 1000


def test_evaluate_writes_csv_with_hand_checkable_rows(tmp_path, acdc):
    data = tmp_path / "acdc"
    (data / "patient014").mkdir(parents=True)
    for suffix in (".nii.gz", "_gt.nii.gz"):
        shutil.copy(acdc / f"{CASE}{suffix}", data / "patient014")
    csv_path = tmp_path / "metrics.csv"
    assert main(["evaluate", "--data", str(data), "--output", str(csv_path), "--device", "cpu"]) == 0
    import csv

    rows = list(csv.DictReader(csv_path.open()))
    assert [r["case"] for r in rows] == ["patient014_frame01"]
    assert float(rows[0]["LV_dice"]) > 0.85 and 0 < float(rows[0]["LV_hd95"]) < 15


def test_evaluate_record_stores_validation_metrics_in_the_weights_folder(tmp_path, acdc):
    """Weights trained without validation (e.g. on a GPU machine) get their validation recorded afterwards."""
    from medsegrwkv.weights.store import load_manifest

    data = tmp_path / "acdc"
    shutil.copytree(acdc / "patient014", data / "patient014")  # a validation patient: 2 frames
    weights = tmp_path / "weights"
    shutil.copytree(MODELS_DIR / "unet2d", weights)
    manifest = load_manifest(weights)
    del manifest["metrics"]["validation"]
    (weights / "manifest.json").write_text(json.dumps(manifest))
    assert_user_error(run_cli("evaluate", "--data", str(data), "--weights", str(weights), "--record"),
                      "--split val")
    csv_path = tmp_path / "val.csv"
    assert main(["evaluate", "--data", str(data), "--split", "val", "--weights", str(weights), "--record",
                 "--output", str(csv_path), "--device", "cpu"]) == 0
    import csv

    rows = list(csv.DictReader(csv_path.open()))
    recorded = load_manifest(weights)["metrics"]["validation"]
    assert recorded["volumes"] == len(rows) == 2 and recorded["epoch"] == manifest["training"]["epochs_completed"]
    assert recorded["LV_dice"] == pytest.approx(np.mean([float(r["LV_dice"]) for r in rows]))
    card = (weights / "MODEL_CARD.md").read_text()
    assert f"{recorded['mean_dice']:.4f}" in card and "final epoch's weights, validated after training" in card
    assert weights_status(weights) == WeightsStatus.VERIFIED  # the checksum still matches the tensors

    # weights a run chose by its own validation (the trainer writes no "selection"): recording them through
    # the deployed pipeline keeps the epoch they were chosen at and says how they were chosen
    manifest = load_manifest(weights)
    manifest["metrics"]["validation"] = {"mean_dice": 0.5, "epoch": 7, "volumes": 2}
    (weights / "manifest.json").write_text(json.dumps(manifest))
    assert main(["evaluate", "--data", str(data), "--split", "val", "--weights", str(weights), "--record",
                 "--device", "cpu"]) == 0
    recorded = load_manifest(weights)["metrics"]["validation"]
    assert recorded["epoch"] == 7 and "selection" not in recorded and recorded["mean_dice"] > 0.5
    assert "Best of the validations made every few epochs (epoch 7" in (weights / "MODEL_CARD.md").read_text()


def test_demo_reports_dice_against_expert_contours(tmp_path, capsys):
    from medsegrwkv.cli.demo import run_demo

    result = run_demo(tmp_path, device="cpu")
    ed, es = result["phases"]["ED"], result["phases"]["ES"]
    assert ed["lv_volume_ml"] > es["lv_volume_ml"]  # ED identified as the larger LV
    assert ed["lv_dice"] > 0.85 and es["lv_dice"] > 0.8 and ed["myo_dice"] > 0.6
    assert 0.1 < result["ejection_fraction"] < 0.5  # expert: ~26 %
    for name in ("SCD0000101_ED_labels.nii.gz", "SCD0000101_ES_labels.nii.gz", "SCD0000101_montage.png"):
        assert (tmp_path / name).stat().st_size > 0
