"""Issue 20: every promise holds under hostile input — a full disk, malformed numbers, headers and
requests, duplicated DICOM files, blank or implausible images. Each case: one sentence (exit 2 or
an `error` answer), the old output intact, or a correct result with a warning; never a traceback."""

from __future__ import annotations

import gzip
import json
import resource
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from medsegrwkv.cli.main import _attach_values
from medsegrwkv.engine.protocol import ProtocolError, parse_request
from medsegrwkv.errors import MedSegError
from medsegrwkv.io import read_study, sample_data_dir
from medsegrwkv.weights import MODELS_DIR
from medsegrwkv.weights.store import MANIFEST, TENSORS, load_model, sha256_file
from cli_helpers import assert_user_error, run_cli

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DICOM = sample_data_dir() / "SCD0000101" / "dicom"
OLD = b"the user's earlier result"


def small_study(path: Path, size: tuple[int, int, int] = (96, 96, 6), spacing=(1.5625, 1.5625, 8.0),
                values: np.ndarray | None = None, dtype=np.float32) -> Path:
    """A real, small short-axis-shaped volume: the sample study's phase cropped to `size`."""
    if values is None:
        phase = sitk.GetArrayFromImage(read_study(SAMPLE_DICOM).phases[0])  # (z, y, x)
        z, y, x = phase.shape
        values = phase[: size[2], (y - size[1]) // 2:(y + size[1]) // 2, (x - size[0]) // 2:(x + size[0]) // 2]
    image = sitk.GetImageFromArray(np.ascontiguousarray(values).astype(dtype))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


# -- 1. a full disk ----------------------------------------------------------------------------------
def _file_size_limit(limit: int):
    def apply() -> None:  # in the child: writes past `limit` bytes fail with EFBIG instead of a signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def run_limited(args: list[str], limit: int) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=str(REPO),
                          preexec_fn=_file_size_limit(limit))


def test_full_disk_segment_is_one_sentence_and_keeps_the_old_labelmap(tmp_path: Path) -> None:
    source = small_study(tmp_path / "study.nii.gz")
    for name in ("labels.nii", "labels.nii.gz"):
        target = tmp_path / name
        target.write_bytes(OLD)
        limit = 600 if name.endswith(".gz") else 20_000  # below the new labelmap's size either way
        result = run_limited([sys.executable, "-m", "medsegrwkv", "segment", str(source), "-o", str(target),
                              "--device", "cpu"], limit)
        assert_user_error(result, f"Cannot write {target}", "disk")
        assert target.read_bytes() == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii", "labels.nii.gz", "study.nii.gz"]


WRITERS = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np, SimpleITK as sitk, torch
    from PIL import Image
    from medsegrwkv.errors import MedSegError
    from medsegrwkv.io import write_labelmap
    from medsegrwkv.io.atomic import write_npz_atomic
    from medsegrwkv.io.montage import save_png_atomic
    from medsegrwkv.io.text import write_text_atomic
    from medsegrwkv.nets.registry import create_model
    from medsegrwkv.training.loop import RunFolder
    from medsegrwkv.weights.store import save_weights

    folder = Path(sys.argv[1])
    labels = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 4, (6, 96, 96)).astype(np.uint8))
    model = create_model("unet2d")
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimiser, 1)
    writers = {
        "labels.nii.gz": lambda p: write_labelmap([labels], p),
        "labels.nrrd": lambda p: write_labelmap([labels, labels], p),
        "report.json": lambda p: write_text_atomic(p, json.dumps(list(range(20000)))),
        "slices.csv": lambda p: write_text_atomic(p, "a,b\\n" * 20000),
        "strip.png": lambda p: save_png_atomic(Image.fromarray(
            np.random.default_rng(1).integers(0, 255, (300, 300, 3)).astype(np.uint8)), p),
        "weights/model.safetensors": lambda p: save_weights(model, {"architecture": "unet2d"}, p.parent),
        "run/checkpoint.pt": lambda p: RunFolder(p.parent).save(model, optimiser, scheduler, {}, {}),
        "run/validation_logits.npz": lambda p: write_npz_atomic(p, {"logits": np.random.default_rng(2).random((300, 5))}),
    }
    outcome = {}
    for name, write in writers.items():
        try:
            write(folder / name)
            outcome[name] = "written"
        except MedSegError as exc:
            outcome[name] = [exc.code, str(exc)]
    print(json.dumps(outcome))
""")


def test_full_disk_every_writer_refuses_and_keeps_the_old_file(tmp_path: Path) -> None:
    names = ["labels.nii.gz", "labels.nrrd", "report.json", "slices.csv", "strip.png", "weights/model.safetensors",
             "run/checkpoint.pt", "run/validation_logits.npz"]
    for name in names:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(OLD)
    result = run_limited([sys.executable, "-c", WRITERS, str(tmp_path)], 4_000)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.splitlines()[-1])
    for name in names:
        code, message = outcome[name]
        assert code == "output_not_writable" and message.startswith(f"Cannot write {tmp_path / name}:"), message
        assert message.endswith(".") and "\n" not in message
        assert (tmp_path / name).read_bytes() == OLD, name
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.read_bytes() != OLD]
    assert leftovers == [] and not [p for p in tmp_path.rglob("*.tmp*")]


# -- 2. tracebacks instead of one sentence -----------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_roi_ras_that_is_not_a_finite_number(tmp_path: Path, value: str) -> None:
    source = small_study(tmp_path / "study.nii.gz")
    result = run_cli("segment", str(source), "-o", str(tmp_path / "labels.nii.gz"), f"--roi-ras={value},0,0,10,10,10")
    assert_user_error(result, "RAS ROI", "finite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.nii.gz"]


def worker_segment(**fields: Any) -> dict[str, Any]:
    """The worker's segment op in this process, on a request as the wire would carry it."""
    from medsegrwkv.engine.ops import Operations

    request = parse_request(json.dumps({"id": 1, "op": "segment", "device": "cpu", **fields}))
    return Operations().segment(request.fields, lambda fraction, message: None, lambda: False)


def test_worker_refuses_a_non_finite_roi_and_a_folder_output(tmp_path: Path) -> None:
    source = small_study(tmp_path / "study.nii.gz")
    with pytest.raises(MedSegError, match="finite") as info:  # JSON's NaN reaches the worker as a float
        worker_segment(input=str(source), output=str(tmp_path / "l.nrrd"), roi_ras=[float("nan"), 0, 0, 9, 9, 9])
    assert info.value.code == "bad_roi"
    (tmp_path / "out.nrrd").mkdir()
    with pytest.raises(MedSegError, match="it is a folder") as info:  # before the (missing) input is read
        worker_segment(input=str(tmp_path / "missing.nrrd"), output=str(tmp_path / "out.nrrd"))
    assert info.value.code == "output_not_writable"


def copy_weights(tmp_path: Path, name: str = "unet2d") -> Path:
    folder = tmp_path / "weights"
    shutil.copytree(MODELS_DIR / name, folder)
    return folder


def edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps(change(manifest)))


def rehash(folder: Path) -> None:
    edit_manifest(folder, lambda m: {**m, "sha256": sha256_file(folder / TENSORS)})


@pytest.mark.parametrize("case, words", [
    ("list", "must be a JSON object"),
    ("unknown_config_key", "cannot be built with"),
    ("zero_spacing", "spacing_xy_mm"),
    ("config_not_object", "'config' must be an object"),
    ("no_architecture", "lacks the field 'architecture'"),
    ("label_without_value", "labels that are not a list"),
    ("unknown_task", "task 'segmenting'"),
    ("trim_not_bool", "'postprocessing.trim_basal_rv' must be true or false"),
    ("heart_size_reversed", "'preprocessing.heart_size_mm' must be two numbers"),
    ("noise_negative", "'preprocessing.noise_sigma' must be two numbers"),
    ("truncated", "damaged"),
    ("garbled_header", "damaged"),
    ("nan_tensor", "NaN"),
])
def test_broken_weights_folders_are_one_sentence(tmp_path: Path, case: str, words: str) -> None:
    folder = copy_weights(tmp_path)
    tensors = folder / TENSORS
    if case == "list":
        (folder / MANIFEST).write_text(json.dumps([json.loads((folder / MANIFEST).read_text())]))
    elif case == "unknown_config_key":
        edit_manifest(folder, lambda m: {**m, "config": {**m.get("config", {}), "bogus": 1}})
    elif case == "zero_spacing":
        edit_manifest(folder, lambda m: {**m, "preprocessing": {**m["preprocessing"], "spacing_xy_mm": [0, 1.5625]}})
    elif case == "config_not_object":
        edit_manifest(folder, lambda m: {**m, "config": [1, 2]})
    elif case == "no_architecture":
        edit_manifest(folder, lambda m: {k: v for k, v in m.items() if k != "architecture"})
    elif case == "label_without_value":
        edit_manifest(folder, lambda m: {**m, "labels": [{"name": "LV cavity"}]})
    elif case == "unknown_task":
        edit_manifest(folder, lambda m: {**m, "task": "segmenting"})
    elif case == "heart_size_reversed":
        edit_manifest(folder, lambda m: {**m, "preprocessing": {**m["preprocessing"], "heart_size_mm": [96, 46]}})
    elif case == "noise_negative":
        edit_manifest(folder, lambda m: {**m, "preprocessing": {**m["preprocessing"], "noise_sigma": [-0.01, 0.02]}})
    elif case == "trim_not_bool":
        edit_manifest(folder, lambda m: {**m, "postprocessing": {"trim_basal_rv": "yes"}})
    elif case == "truncated":
        tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])
        rehash(folder)
    elif case == "garbled_header":
        data = tensors.read_bytes()
        tensors.write_bytes(data[:8] + bytes(64) + data[72:])
        rehash(folder)
    else:  # the last float16 value of the file becomes NaN
        data = bytearray(tensors.read_bytes())
        data[-2:] = b"\x00\x7e"
        tensors.write_bytes(bytes(data))
        rehash(folder)
    with pytest.raises(MedSegError, match=words) as info:
        load_model(folder)
    assert info.value.code == "bad_weights" and "\n" not in str(info.value)
    source = small_study(tmp_path / "study.nii.gz")
    assert_user_error(run_cli("segment", str(source), "-o", str(tmp_path / "l.nii.gz"), "--weights", str(folder),
                              "--device", "cpu"), str(folder))



@pytest.mark.parametrize("case, words", [
    ("run_folder", "the weights of that training run are in"),
    ("empty_folder", "holds no manifest.json, so it is not a weights folder"),
    ("missing", "does not exist"),
    ("a_file", "is a file, not a weights folder"),
    ("manifest_only", "holds a manifest.json but no model.safetensors"),
])
def test_folders_without_weights_are_named_as_folders(tmp_path: Path, case: str, words: str) -> None:
    """A folder given as weights is never mistaken for a model name ("Unknown model '/tmp/run'")."""
    run = tmp_path / "run"
    folder = {"run_folder": run, "empty_folder": tmp_path / "empty", "missing": tmp_path / "nowhere",
              "a_file": tmp_path / "weights.safetensors", "manifest_only": tmp_path / "half"}[case]
    if case == "run_folder":
        copy_weights(run)
    elif case == "empty_folder":
        folder.mkdir()
    elif case == "a_file":
        shutil.copy(MODELS_DIR / "unet2d" / TENSORS, folder)
    elif case == "manifest_only":
        folder.mkdir()
        shutil.copy(MODELS_DIR / "unet2d" / MANIFEST, folder)
    for given in (folder, str(folder)):
        with pytest.raises(MedSegError, match=words) as info:
            load_model(given)
        assert info.value.code == "weights_missing" and "\n" not in str(info.value)
    if case == "run_folder":
        assert load_model(str(run / "weights"))[1]["name"] == "unet2d"
        source = small_study(tmp_path / "study.nii.gz")
        assert_user_error(run_cli("segment", str(source), "-o", str(tmp_path / "l.nii.gz"), "--weights", str(run),
                                  "--device", "cpu"), str(run / "weights"))

# -- 3. a request nested 2000 deep ---------------------------------------------------------------------
@pytest.mark.parametrize("line, words", [
    ("[" * 2000 + "]" * 2000, "too deeply"),
    ('{"id": 1, "op": "info", "x": ' + "[" * 3000 + "]" * 3000 + "}", "too deeply"),
    ('{"id": ' + "9" * 5000 + ', "op": "info"}', "too many digits"),
])
def test_unreadable_request_lines_are_bad_requests(line: str, words: str) -> None:
    with pytest.raises(ProtocolError, match=words) as info:
        parse_request(line)
    assert info.value.code == "bad_request"


def test_worker_survives_a_deeply_nested_request() -> None:
    lines = ["[" * 2000 + "]" * 2000, '{"id": "c", "op": "cancel"}', '{"id": "s", "op": "shutdown"}']
    run = subprocess.run([sys.executable, "-m", "medsegrwkv", "engine"], input="\n".join(lines) + "\n",
                         capture_output=True, text=True, timeout=120, cwd=str(REPO))
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    answers = [json.loads(line) for line in run.stdout.splitlines()]
    assert answers[0]["type"] == "error" and answers[0]["code"] == "bad_request" and answers[0]["id"] is None
    assert [a["id"] for a in answers[1:]] == ["c", "s"] and all(a["type"] == "result" for a in answers[1:])


# -- 4. wrong headers ------------------------------------------------------------------------------------
def zero_pixdim_nifti(path: Path) -> Path:
    """A NIfTI whose header says the voxels are 0 mm wide (nibabel and ITK refuse to write one)."""
    plain = small_study(path.with_name("plain.nii"))
    data = bytearray(plain.read_bytes())
    data[80:92] = struct.pack("<3f", 0.0, 0.0, 0.0)  # pixdim[1:4]
    path.write_bytes(gzip.compress(bytes(data)))
    plain.unlink()
    return path


def test_nifti_with_zero_voxel_size_is_refused(tmp_path: Path) -> None:
    source = zero_pixdim_nifti(tmp_path / "flat.nii.gz")
    with pytest.raises(MedSegError, match="voxel size"):
        read_study(source)
    result = run_cli("segment", str(source), "-o", str(tmp_path / "labels.nii.gz"))
    assert_user_error(result, "flat.nii.gz", "voxel size")
    assert result.stderr.count("\n") == 1  # nothing else: not ITK's own complaint either


def test_float64_values_near_1e300_are_segmented_like_the_original(tmp_path: Path, default_segmenter) -> None:
    original = read_study(small_study(tmp_path / "plain.nii.gz")).phases[0]
    values = sitk.GetArrayFromImage(original).astype(np.float64) * 1e300  # finite, but not in float32
    huge = read_study(small_study(tmp_path / "huge.nii.gz", values=values, dtype=np.float64)).phases[0]
    assert huge.GetPixelID() == sitk.sitkFloat64
    with np.errstate(all="raise"):
        expected = sitk.GetArrayFromImage(default_segmenter.segment(original))
        labels = sitk.GetArrayFromImage(default_segmenter.segment(huge))
    assert expected.any() and np.mean(labels == expected) > 0.99


# -- 5. every DICOM file present twice -----------------------------------------------------------------
def test_dicom_folder_with_every_file_twice_reads_as_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import pydicom
    from pydicom.uid import generate_uid

    folder = tmp_path / "export"
    shutil.copytree(SAMPLE_DICOM, folder / "first")
    shutil.copytree(SAMPLE_DICOM, folder / "second")  # same SOPInstanceUIDs
    for f in sorted(SAMPLE_DICOM.glob("*.dcm")):  # new UIDs, same position, time and pixels
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = generate_uid()
        ds.save_as(folder / f"renamed_{f.name}")
    original = read_study(SAMPLE_DICOM)
    with caplog.at_level("WARNING"):
        doubled = read_study(folder)
    assert len(doubled.phases) == len(original.phases) == 2
    for a, b in zip(original.phases, doubled.phases):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert "ignored 48 duplicate file(s)" in caplog.text


# -- 6. ITK's warnings -------------------------------------------------------------------------------------
def test_itk_warnings_go_to_the_log_not_the_terminal(acdc: Path, capfd: pytest.CaptureFixture,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="medsegrwkv.itk"):
        read_study(acdc / "patient001" / "patient001_frame01.nii.gz")
    assert "WARNING" not in capfd.readouterr().err
    assert "unexpected scales in sform" in caplog.text and "0x" not in caplog.text


def test_uneven_slice_spacing_is_said_in_our_words(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                   capfd: pytest.CaptureFixture) -> None:
    import pydicom

    folder = tmp_path / "gap"
    positions = sorted({tuple(pydicom.dcmread(f).ImagePositionPatient) for f in SAMPLE_DICOM.glob("*.dcm")})
    for f in SAMPLE_DICOM.glob("*.dcm"):  # drop one inner slice position: a missing slice
        if tuple(pydicom.dcmread(f).ImagePositionPatient) != positions[5]:
            (folder / f.name).parent.mkdir(exist_ok=True)
            shutil.copy(f, folder / f.name)
    with caplog.at_level("WARNING"):
        read_study(folder)
    assert "slice gaps range from" in caplog.text and "a slice may be missing" in caplog.text
    assert "Non uniform sampling" not in capfd.readouterr().err


# -- 8. command-line details --------------------------------------------------------------------------------
def test_negative_first_roi_value_needs_no_equals_sign() -> None:
    assert _attach_values(["segment", "s", "--roi-ras", "-10,-5,0,10,5,8", "-o", "x.nii.gz"]) == [
        "segment", "s", "--roi-ras=-10,-5,0,10,5,8", "-o", "x.nii.gz"]
    assert _attach_values(["segment", "s", "--roi", "-2,0,0,9,9,3", "--phase", "1"]) == [
        "segment", "s", "--roi=-2,0,0,9,9,3", "--phase", "1"]
    assert _attach_values(["segment", "s", "--roi-ras", "-o", "x.nii.gz"]) == [
        "segment", "s", "--roi-ras", "-o", "x.nii.gz"]  # a missing value stays argparse's error


def test_negative_roi_ras_segments(tmp_path: Path) -> None:
    source = small_study(tmp_path / "study.nii.gz")
    image = sitk.ReadImage(str(source))
    lps = [image.TransformIndexToPhysicalPoint((0, 0, 0)), image.TransformIndexToPhysicalPoint((95, 95, 5))]
    ras = [-lps[1][0], -lps[1][1], lps[0][2], -lps[0][0], -lps[0][1], lps[1][2]]
    assert ras[0] < 0
    out = tmp_path / "labels.nii.gz"
    result = run_cli("segment", str(source), "-o", str(out), "--roi-ras", ",".join(f"{v:g}" for v in ras),
                     "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert sitk.ReadImage(str(out)).GetSize() == image.GetSize()


@pytest.mark.parametrize("case", ["both_rois", "output_is_a_folder", "unwritable_folder"])
def test_cli_rejects_before_any_work(tmp_path: Path, case: str) -> None:
    source = small_study(tmp_path / "study.nii.gz")
    args: list[str] = ["segment", str(source), "-o", str(tmp_path / "labels.nii.gz")]
    if case == "both_rois":
        args += ["--roi", "0,0,0,10,10,3", "--roi-ras", "0,0,0,10,10,10"]
        words: tuple[str, ...] = ("--roi", "--roi-ras", "not both")
    elif case == "output_is_a_folder":
        (tmp_path / "out.nii.gz").mkdir()
        args[3] = str(tmp_path / "out.nii.gz")
        words = ("it is a folder",)
    else:  # /proc refuses new files, also to root
        args[3] = "/proc/labels.nii.gz"
        words = ("/proc", "not writable")
    args += ["--model", "no_such_model"]  # had it got that far, the error would name the model
    assert_user_error(run_cli(*args), *words)


# -- 7. blank images are not graded ----------------------------------------------------------------------
def blank_or_ramp(path: Path, kind: str) -> Path:
    z, y, x = np.mgrid[0:6, 0:96, 0:96]
    return small_study(path, values=np.zeros((6, 96, 96)) if kind == "blank" else (x + y).astype(float))


@pytest.fixture(scope="module")
def grader():
    from medsegrwkv.grading.grade import Grader
    from medsegrwkv.nets.registry import DEFAULT_MODELS
    return Grader.from_pretrained(DEFAULT_MODELS["grading"], "cpu")


def test_blank_study_is_not_graded(tmp_path: Path, grader) -> None:
    from medsegrwkv.grading.grade import grade_study

    report = grade_study(blank_or_ramp(tmp_path / "blank.nii.gz", "blank"), grader=grader)
    assert all(s["grade"] is None and s["score"] is None and s["not_graded"].startswith("no signal")
               for s in report["slices"] + report["positions"])
    study = report["study"]
    assert study["grade"] is None and study["score"] is None and study["lv_slices"] == []
    assert study["ungraded_slices"] == list(range(6)) and "blank" in study["recommendation"]
    assert "no repeat needed" not in study["recommendation"] and study["recommendation"] in report["warnings"]
    assert not any(p["lv"] for p in report["positions"])


def test_study_without_a_heart_is_not_graded_and_blank_slices_are_named(tmp_path: Path, grader) -> None:
    from medsegrwkv.grading.grade import grade_study

    ramp = grade_study(blank_or_ramp(tmp_path / "ramp.nii.gz", "ramp"), grader=grader)
    assert all(s["grade"] is not None for s in ramp["slices"])  # the slices hold an image: graded
    assert ramp["study"]["grade"] is None and "found no left ventricle" in ramp["study"]["recommendation"]

    values = sitk.GetArrayFromImage(read_study(small_study(tmp_path / "heart.nii.gz")).phases[0])
    values[2] = 0  # one blank slice in a real study
    report = grade_study(small_study(tmp_path / "gap.nii.gz", values=values), grader=grader)
    assert [p["index"] for p in report["positions"] if p["grade"] is None] == [2]
    assert report["study"]["ungraded_slices"] == [2] and report["study"]["grade"] is not None
    assert 2 not in report["study"]["nondiagnostic_slices"]
    assert any("not graded: 2" in w for w in report["warnings"])


def test_grade_cli_and_module_show_an_ungraded_study(tmp_path: Path, grader) -> None:
    sys.path.insert(0, str(REPO / "MedSegRWKV"))
    from MedSegRWKVLib import quality

    source = blank_or_ramp(tmp_path / "blank.nii.gz", "blank")
    out, table, strip = tmp_path / "q.json", tmp_path / "q.csv", tmp_path / "q.png"
    result = run_cli("grade", str(source), "-o", str(out), "--csv", str(table), "--png", str(strip), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "warning: Every slice is blank" in result.stderr and "study: not graded" in result.stdout
    report = json.loads(out.read_text())
    assert report["study"]["grade"] is None and table.read_text().count("no signal") == 6 and strip.stat().st_size
    rows = quality.quality_rows(report)
    assert [r.cells[1:] for r in rows] == [("-", "not graded: no signal (the slice is blank)", "-")] * 6
    assert all(r.background == quality.tint(quality.UNGRADED_COLOUR) for r in rows)
    assert quality.summary_line(report).startswith("Study: not graded. Every slice is blank")
    assert quality.plot_points(report) == ([], [])


# -- 9. results outside what the models saw --------------------------------------------------------------
def test_input_and_result_warnings() -> None:
    from medsegrwkv.inference.plausibility import input_warnings, result_warnings

    huge = sitk.Image(2048, 2048, 4, sitk.sitkInt16)
    huge.SetSpacing((1.4, 1.4, 8.0))
    assert ["2867 x 2867 mm" in w for w in input_warnings(huge)] == [True]
    assert input_warnings(read_study(SAMPLE_DICOM).phases[0]) == []
    def labelmap(array: np.ndarray) -> sitk.Image:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.0, 1.0, 8.0))  # 0.008 mL per voxel
        return image

    array = np.zeros((20, 200, 200), np.uint8)
    assert "no heart was found" in result_warnings(labelmap(array), 0)[0]
    array[:5, :100, :100] = 3  # 400 mL of LV cavity: a large heart
    assert result_warnings(labelmap(array), 1) == []
    array[:, :100, :100] = 3  # 1600 mL: no heart
    assert result_warnings(labelmap(array), 2) == ["Phase 2: LV cavity 1600.0 mL lie outside the range of real "
                                                   "hearts; check the result."]


def test_reference_labelmaps_raise_no_warning(acdc: Path) -> None:
    from medsegrwkv.inference.plausibility import input_warnings, result_warnings

    for case in sorted(acdc.glob("patient0[0-2]*/*_gt.nii.gz")):
        labels = sitk.ReadImage(str(case))
        assert input_warnings(labels) == [] and result_warnings(labels, 0) == [], case


def test_segment_warns_in_cli_and_worker(tmp_path: Path) -> None:
    source = blank_or_ramp(tmp_path / "blank.nii.gz", "blank")
    wide = small_study(tmp_path / "wide.nii.gz", spacing=(8.0, 8.0, 8.0))
    result = run_cli("segment", str(source), "-o", str(tmp_path / "l.nii.gz"), "--device", "cpu")
    assert result.returncode == 0 and "warning: Phase 0: no heart was found" in result.stderr, result.stderr
    result = run_cli("segment", str(wide), "-o", str(tmp_path / "w.nii.gz"), "--device", "cpu")
    assert result.returncode == 0 and "warning: The image covers 768 x 768 mm" in result.stderr, result.stderr

    answer = worker_segment(input=str(source), output=str(tmp_path / "worker.nrrd"))
    assert answer["warnings"] == ["Phase 0: no heart was found (the labelmap is empty); check that this is a "
                                  "short-axis cardiac study."]

    sys.path.insert(0, str(REPO / "MedSegRWKV"))
    from MedSegRWKVLib import panel

    assert panel.with_warnings("Segmented.", answer) == f"Segmented. Warning: {answer['warnings'][0]}"
    assert panel.with_warnings("Segmented.", {"warnings": []}) == "Segmented."
