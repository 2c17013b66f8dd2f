"""`medsegrwkv engine` driven over real pipes as a subprocess, as the Slicer module drives it
(docs/design.md §3): every op, progress, cancel mid-study, busy rejection, malformed and unknown
requests, stdin closing, and the Lib's client restarting a worker that was killed mid-request.
"""

from __future__ import annotations

import io
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest
import SimpleITK as sitk

from medsegrwkv import __version__
from medsegrwkv.io import read_study, sample_data_dir
from medsegrwkv.nets.registry import DEFAULT_MODELS
from medsegrwkv.weights import WeightsStatus, weights_status

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedSegRWKV"))
from MedSegRWKVLib import protocol, quality  # noqa: E402
from MedSegRWKVLib.client import EngineClient, engine_command  # noqa: E402

ENGINE = [sys.executable, "-m", "medsegrwkv", "engine"]
TIMEOUT = 300.0
Json = Dict[str, Any]


def weightless_folder(folder: Path, model: str) -> Path:
    """A weights folder with a model's manifest but no weights file: what an interrupted copy leaves."""
    from medsegrwkv.weights.store import weights_dir

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(weights_dir(model) / "manifest.json", folder / "manifest.json")
    return folder


class Worker:
    """A worker process and a thread reading its stdout: this file's own minimal client, so the
    protocol is checked independently of MedSegRWKVLib.client."""

    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.proc = subprocess.Popen(ENGINE, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, cwd=str(REPO))
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.log: List[str] = []
        self.not_protocol: List[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _read(self) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            self.lines.put(raw.decode("utf-8"))
        self.lines.put(None)

    def _drain_stderr(self) -> None:  # an undrained stderr pipe would block the worker
        for raw in iter(self.proc.stderr.readline, b""):
            self.log.append(raw.decode("utf-8", "replace"))

    def send(self, request: Any) -> None:
        data = request if isinstance(request, bytes) else (
            request if isinstance(request, str) else json.dumps(request)).encode("utf-8")
        self.proc.stdin.write(data + b"\n")
        self.proc.stdin.flush()

    def next(self, timeout: float = TIMEOUT) -> Json:
        line = self.lines.get(timeout=timeout)
        assert line is not None, "the worker closed its stdout:\n" + "".join(self.log[-20:])
        message = json.loads(line)  # nothing but protocol JSON may reach stdout
        if message.get("type") not in ("progress", "result", "error") or "id" not in message:
            self.not_protocol.append(line)
        return message

    def answer(self, request_id: Any, timeout: float = TIMEOUT) -> Tuple[List[Json], Json]:
        """Progress events and the final message of one request (other requests' lines fail)."""
        progress = []
        while True:
            message = self.next(timeout)
            assert message["id"] == request_id, f"unexpected message while waiting for {request_id}: {message}"
            if message["type"] != "progress":
                return progress, message
            progress.append(message)

    def call(self, request: Json, timeout: float = TIMEOUT) -> Tuple[List[Json], Json]:
        self.send(request)
        return self.answer(request["id"], timeout)

    def wait_for_slice_progress(self, request_id: Any) -> Json:
        while True:
            message = self.next()
            assert message["id"] == request_id and message["type"] == "progress", message
            if "slice" in message["message"]:
                return message


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """The bundled Sunnybrook cine study as Slicer would hand it over: one phase as a 3D NRRD and
    both phases as a 4D NRRD, plus the DICOM folder itself."""
    folder = tmp_path_factory.mktemp("engine_inputs")
    dicom = sample_data_dir() / "SCD0000101" / "dicom"
    study = read_study(dicom)
    sitk.WriteImage(study.phases[0], str(folder / "phase0.nrrd"))
    sitk.WriteImage(sitk.JoinSeries(study.phases), str(folder / "cine.nrrd"))
    # Requests cancelled, killed or restarted mid-way need work left after their first slice: the
    # two phases four times over (8 x 12 slices; with TTA several seconds even where inference is fast).
    sitk.WriteImage(sitk.JoinSeries(list(study.phases) * 4), str(folder / "long_cine.nrrd"))
    return {"phase0": folder / "phase0.nrrd", "cine": folder / "cine.nrrd", "long_cine": folder / "long_cine.nrrd",
            "dicom": dicom}


@pytest.fixture(scope="module")
def worker() -> Worker:
    w = Worker()
    yield w
    _, final = w.call({"id": "bye", "op": "shutdown"}, timeout=60)
    assert final == {"id": "bye", "type": "result", "result": {"shutdown": True}}
    assert w.proc.wait(timeout=60) == 0
    assert w.lines.get(timeout=10) is None
    assert not w.not_protocol


def segment(input_path: Path, output: Path, **fields: Any) -> Json:
    return {"op": "segment", "input": str(input_path), "output": str(output), "device": "cpu", **fields}


# -- protocol --------------------------------------------------------------------------------------
def test_malformed_lines_are_answered_and_the_worker_survives(worker: Worker, tmp_path: Path) -> None:
    cases: List[Tuple[Any, Any, str]] = [
        ("this is not json", None, "not valid JSON"),
        ("[1, 2, 3]", None, "JSON object"),
        (b"\xff\xfe{}", None, "UTF-8"),
        ({"op": "info"}, None, "'id'"),
        ({"id": True, "op": "info"}, None, "'id'"),
        ({"id": 1}, 1, "'op'"),
        ({"id": 2, "op": "segment", "output": str(tmp_path / "x.nrrd")}, 2, "'input'"),
        ({"id": 3, "op": "segment", "input": "a.nrrd", "output": "b.nrrd", "tta": "yes"}, 3, "'tta'"),
        ({"id": 4, "op": "segment", "input": "a.nrrd", "output": "b.nrrd", "phase": 1.5}, 4, "'phase'"),
        ({"id": 5, "op": "info", "verbose": True}, 5, "unknown field"),
    ]
    for request, expected_id, words in cases:
        worker.send(request)
        message = worker.next()
        assert message["type"] == "error" and message["code"] == "bad_request", message
        assert message["id"] == expected_id
        assert words in message["message"]
    worker.send("")  # blank lines are ignored, not answered
    _, final = worker.call({"id": 6, "op": "info"})
    assert final["type"] == "result"
    assert not list(tmp_path.iterdir())


def test_unknown_op(worker: Worker) -> None:
    _, final = worker.call({"id": "u1", "op": "fly"})
    assert final["type"] == "error" and final["code"] == "unknown_op" and final["id"] == "u1"
    assert "segment" in final["message"]


def test_info(worker: Worker) -> None:
    progress, final = worker.call({"id": "i", "op": "info"})
    info = final["result"]
    assert info["protocol"] == 1 and info["backend_version"] == __version__
    assert info["pid"] == worker.proc.pid and info["busy_policy"] == "reject"
    assert isinstance(info["cuda_available"], bool) and info["auto_device"] in ("cpu", "cuda")
    assert info["gpus"] if info["cuda_available"] else info["gpus"] == []
    assert info["torch"] and info["versions"]["SimpleITK"]
    assert info["default_models"]["segmentation"] == DEFAULT_MODELS["segmentation"]
    ready = weights_status(DEFAULT_MODELS["refinement"]) is WeightsStatus.VERIFIED
    assert [label["value"] for label in info["refinement_labels"]] == ([1, 2, 3] if ready else [])


def test_models(worker: Worker) -> None:
    progress, final = worker.call({"id": "m", "op": "models", "task": "segmentation"})
    rows = {row["name"]: row for row in final["result"]["models"]}
    default = rows[DEFAULT_MODELS["segmentation"]]
    assert default["default"] and default["weights"] == "verified" and default["params"] > 0
    assert all(row["task"] == "segmentation" for row in rows.values())
    assert {"verified", "no weights"} >= {row["weights"] for row in rows.values()}
    assert [p["fraction"] for p in progress] == sorted(p["fraction"] for p in progress)


# -- segment ---------------------------------------------------------------------------------------
def test_segment_sample_writes_the_labelmap_in_the_input_geometry(worker: Worker, study_files: Dict[str, Path],
                                                                   tmp_path: Path, default_segmenter) -> None:
    output = tmp_path / "labels.nrrd"
    progress, final = worker.call({"id": 10, **segment(study_files["phase0"], output)})
    assert final["type"] == "result", final
    result = final["result"]
    assert result["output"] == str(output) and result["model"] == DEFAULT_MODELS["segmentation"]
    assert result["phases"] == [0] and result["roi"] is None and result["device"] == "cpu"
    assert [label["name"] for label in result["labels"]] == ["RV cavity", "LV myocardium", "LV cavity"]

    fractions = [p["fraction"] for p in progress]
    assert fractions == sorted(fractions) and 0.0 <= fractions[0] and fractions[-1] == 1.0
    assert sum("slice" in p["message"] for p in progress) >= 2  # one per slice batch

    image = sitk.ReadImage(str(study_files["phase0"]))
    labels = sitk.ReadImage(str(output))
    assert labels.GetSize() == image.GetSize()
    assert np.allclose(labels.GetSpacing(), image.GetSpacing()) and np.allclose(labels.GetOrigin(), image.GetOrigin())
    assert np.allclose(labels.GetDirection(), image.GetDirection())
    array = sitk.GetArrayFromImage(labels)
    assert set(np.unique(array)) == {0, 1, 2, 3}
    # The worker changes nothing about the result: the same model in this process gives the same labels.
    assert np.array_equal(array, sitk.GetArrayFromImage(default_segmenter.segment(image)))
    lv = result["volumes_ml"][0]["LV cavity"]
    assert lv == pytest.approx(np.count_nonzero(array == 3) * np.prod(image.GetSpacing()) / 1000, abs=0.01)
    assert 20 < lv < 400


def test_loaded_model_is_reused(worker: Worker, study_files: Dict[str, Path], tmp_path: Path) -> None:
    progress, final = worker.call({"id": 11, **segment(study_files["phase0"], tmp_path / "again.nrrd")})
    assert final["type"] == "result"
    assert not any(p["message"].startswith("loading") for p in progress)
    _, info = worker.call({"id": 12, "op": "info"})
    assert f"{DEFAULT_MODELS['segmentation']} (cpu)" in info["result"]["loaded_models"]
    _, models = worker.call({"id": 13, "op": "models", "task": "segmentation"})
    default = next(r for r in models["result"]["models"] if r["default"])
    assert default["measured_seconds_per_slice"]["cpu"] > 0


def test_roi_as_voxels_or_in_ras(worker: Worker, study_files: Dict[str, Path], tmp_path: Path) -> None:
    box = [50, 40, 2, 210, 200, 11]
    _, final = worker.call({"id": 20, **segment(study_files["dicom"], tmp_path / "voxels.nii.gz", phase=1,
                                                roi=box)})
    assert final["type"] == "result", final
    assert final["result"]["roi"] == box and final["result"]["phases"] == [1]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "voxels.nii.gz")))
    inside = np.zeros_like(labels, dtype=bool)
    inside[box[2]:box[5], box[1]:box[4], box[0]:box[3]] = True
    assert labels[inside].any() and not labels[~inside].any()

    # The same box as RAS corners (the centres of its first and last voxels). The study is oblique,
    # so the RAS-aligned box covers more voxels: the worker reports them, as roi_from_ras_box does.
    from medsegrwkv.preprocess import roi_from_ras_box

    image = read_study(study_files["dicom"]).phases[1]
    corners = [image.TransformIndexToPhysicalPoint(tuple(box[:3])),
               image.TransformIndexToPhysicalPoint(tuple(b - 1 for b in box[3:]))]
    ras = [[-x, -y, z] for x, y, z in corners]
    _, final = worker.call({"id": 21, **segment(study_files["dicom"], tmp_path / "ras.nii.gz", phase=1,
                                                roi_ras=ras[0] + ras[1])})
    assert final["type"] == "result", final
    expected = roi_from_ras_box(image, tuple(ras[0]), tuple(ras[1]))
    wide = final["result"]["roi"]
    assert wide == [*expected.start, *expected.stop]
    assert all(w <= b for w, b in zip(wide[:3], box[:3])) and all(w >= b for w, b in zip(wide[3:], box[3:]))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ras.nii.gz")))
    inside[:] = False
    inside[wide[2]:wide[5], wide[1]:wide[4], wide[0]:wide[3]] = True
    assert labels[inside].any() and not labels[~inside].any()


@pytest.mark.parametrize("fields, code", [
    ({"input": "/nonexistent/study.nrrd"}, "bad_input"),
    ({"output_name": "labels.png"}, "bad_output"),
    ({"model": "no_such_model"}, "unknown_model"),
    ({"model": "WEIGHTLESS"}, "weights_missing"),
    ({"roi": [300, 300, 0, 400, 400, 5]}, "bad_roi"),
    ({"roi": [1, 2, 3]}, "bad_roi"),
    ({"roi": [0, 0, 0, 10, 10, 5], "roi_ras": [0, 0, 0, 1, 1, 1]}, "bad_roi"),
    ({"phase": 5}, "bad_input"),
])
def test_user_errors_are_one_sentence_with_a_code(worker: Worker, study_files: Dict[str, Path], tmp_path: Path,
                                                   fields: Json, code: str) -> None:
    fields = dict(fields)
    if fields.get("model") == "WEIGHTLESS":
        fields["model"] = str(weightless_folder(tmp_path.parent / "weightless", DEFAULT_MODELS["segmentation"]))
    output = tmp_path / fields.pop("output_name", "labels.nrrd")
    request = {"id": f"e-{code}", **segment(study_files["phase0"], output), **fields}
    _, final = worker.call(request)
    assert final["type"] == "error" and final["code"] == code, final
    assert final["message"].endswith(".") and "\n" not in final["message"] and "Traceback" not in final["message"]
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file


def test_a_cancel_is_acknowledged_before_the_answer_of_the_request_it_stops() -> None:
    """A running request that sees the cancel flag at once must not get its `cancelled` error out
    before the cancel's own answer: the client reads the acknowledgment first. The race (it went
    the wrong way once in CI) is made certain here: an op polls the flag in a tight loop, and the
    reading thread is held up 50 ms on its way from setting the flag to writing the answer."""
    from medsegrwkv.engine.ops import Operations
    from medsegrwkv.engine.server import Engine
    from medsegrwkv.progress import check_cancel

    class Spinning(Operations):
        def info(self, fields: Json, progress: Any, cancel: Any) -> Json:
            progress(0.0, "spinning")
            while True:
                check_cancel(cancel)

    class SlowAcknowledgment(Engine):
        def send(self, message: Json) -> None:
            if "cancelled" in message.get("result", {}):
                time.sleep(0.05)
            super().send(message)

    class Lines(io.TextIOBase):
        def __init__(self) -> None:
            self.queue: "queue.Queue[Json]" = queue.Queue()

        def write(self, text: str) -> int:
            self.queue.put(json.loads(text))
            return len(text)

    out = Lines()
    read, write = os.pipe()
    server = threading.Thread(target=SlowAcknowledgment(out, Spinning()).serve, args=(os.fdopen(read, "rb"),),
                              daemon=True)
    server.start()
    requests = os.fdopen(write, "wb", buffering=0)
    for n in range(5):
        requests.write(json.dumps({"id": n, "op": "info"}).encode() + b"\n")
        assert out.queue.get(timeout=TIMEOUT) == {"id": n, "type": "progress", "fraction": 0.0, "message": "spinning"}
        requests.write(json.dumps({"id": f"c{n}", "op": "cancel", "target": n}).encode() + b"\n")
        first, second = out.queue.get(timeout=TIMEOUT), out.queue.get(timeout=TIMEOUT)
        assert first == {"id": f"c{n}", "type": "result", "result": {"cancelled": True, "target": n}}, (first, second)
        assert second["id"] == n and second["code"] == "cancelled", second
    requests.close()
    server.join(timeout=TIMEOUT)
    assert not server.is_alive()


def test_cancel_mid_study_and_busy_rejection(worker: Worker, study_files: Dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "cancelled.nrrd"
    worker.send({"id": 30, **segment(study_files["long_cine"], output, tta=True)})  # 8 phases x 12 slices x 4 rotations
    worker.wait_for_slice_progress(30)
    worker.send({"id": 31, "op": "info"})
    worker.send({"id": 32, "op": "cancel", "target": 30})
    seen: Dict[Any, Json] = {}
    while 30 not in seen:
        message = worker.next()
        if message["type"] != "progress":
            seen[message["id"]] = message
        else:
            assert message["id"] == 30
    assert seen[31]["type"] == "error" and seen[31]["code"] == "busy" and "30" in seen[31]["message"]
    assert seen[32] == {"id": 32, "type": "result", "result": {"cancelled": True, "target": 30}}
    assert seen[30]["type"] == "error" and seen[30]["code"] == "cancelled"
    assert not output.exists() and not list(tmp_path.iterdir())
    _, idle = worker.call({"id": 33, "op": "cancel"})  # nothing runs now
    assert idle["result"] == {"cancelled": False, "target": None}
    _, final = worker.call({"id": 34, "op": "info"})  # the worker is free again
    assert final["type"] == "result"


# -- cardiac function ------------------------------------------------------------------------------
def test_function_of_a_cine_sent_as_phase_files_then_of_corrected_labels(worker: Worker, study_files: Dict[str, Path],
                                                                         tmp_path: Path) -> None:
    """The module's whole-cine request: one NRRD per phase in, the phases' labelmap and the function
    out; sending back that labelmap (as after a correction) gives the same numbers without a model."""
    phases = read_study(study_files["cine"]).phases
    files = []
    for n, image in enumerate(phases):
        files.append(tmp_path / f"phase{n}.nrrd")
        sitk.WriteImage(image, str(files[-1]))
    output = tmp_path / "cine_labels.nrrd"
    progress, final = worker.call({"id": "fn", "op": "function", "inputs": [str(f) for f in files],
                                   "output": str(output), "model": "unet2d", "device": "cpu",
                                   "height_cm": 170, "weight_kg": 70})
    assert final["type"] == "result", final
    result = final["result"]
    assert any(p["message"].startswith("phase 0-1: slice") for p in progress)  # both phases in one batch stream
    labels = sitk.ReadImage(str(output))
    assert labels.GetDimension() == 4 and labels.GetSize()[3] == 2 and result["output"] == str(output)
    assert {label["name"] for label in result["labels"]} == {"RV cavity", "LV myocardium", "LV cavity"}
    assert [row["phase"] for row in result["curve"]] == [0, 1] and {result["ed_phase"], result["es_phase"]} == {0, 1}
    lv = result["lv"]
    assert 0 < lv["esv_ml"] < lv["edv_ml"] and lv["sv_ml"] == pytest.approx(lv["edv_ml"] - lv["esv_ml"], abs=0.02)
    assert result["bsa_m2"] == pytest.approx(((170 * 70) / 3600) ** 0.5, abs=0.01) and lv["edv_ml_m2"] > 0

    _, again = worker.call({"id": "fn-labels", "op": "function", "inputs": [str(f) for f in files],
                            "labels": [str(output)]})
    assert again["type"] == "result", again
    assert again["result"]["lv"]["edv_ml"] == lv["edv_ml"] and again["result"]["model"] is None

    _, single = worker.call({"id": "fn-1", "op": "function", "inputs": [str(files[0])], "model": "unet2d"})
    assert single["type"] == "error" and single["code"] == "bad_phase" and "two cardiac phases" in single["message"]
    _, both = worker.call({"id": "fn-2", "op": "function", "inputs": [str(files[0])], "input": str(files[0])})
    assert both["type"] == "error" and both["code"] == "bad_input"
    shifted = sitk.Image(phases[1])
    shifted.SetOrigin([v + 5.0 for v in phases[1].GetOrigin()])
    sitk.WriteImage(shifted, str(tmp_path / "shifted.nrrd"))
    _, moved = worker.call({"id": "fn-3", "op": "function", "inputs": [str(files[0]), str(tmp_path / "shifted.nrrd")],
                            "output": str(tmp_path / "never.nrrd")})
    assert moved["type"] == "error" and moved["code"] == "bad_input" and "different geometry" in moved["message"]
    _, mismatch = worker.call({"id": "fn-4", "op": "function", "input": str(study_files["cine"]),
                               "labels": [str(tmp_path / "shifted.nrrd"), str(files[0])]})
    assert mismatch["type"] == "error" and mismatch["code"] == "bad_labels"
    assert not (tmp_path / "never.nrrd").exists()


# -- grade -----------------------------------------------------------------------------------------
def test_grade_without_grader_weights_is_a_clean_error(worker: Worker, study_files: Dict[str, Path],
                                                       tmp_path: Path) -> None:
    weights = weightless_folder(tmp_path, DEFAULT_MODELS["grading"])
    _, final = worker.call({"id": 40, "op": "grade", "input": str(study_files["phase0"]), "device": "cpu",
                            "model": str(weights)})
    assert final["type"] == "error" and final["code"] == "weights_missing", final


def test_grade_sample(worker: Worker, study_files: Dict[str, Path]) -> None:
    progress, final = worker.call({"id": 41, "op": "grade", "input": str(study_files["phase0"]), "device": "cpu"})
    assert final["type"] == "result", final
    report = final["result"]
    image = sitk.ReadImage(str(study_files["phase0"]))
    assert report["index_axis"] == 2 and report["n_slices"] == image.GetSize()[2]
    assert sorted(p["index"] for p in report["positions"]) == list(range(image.GetSize()[2]))
    for position in report["positions"]:
        assert position["grade"] in ("mild", "moderate", "severe") and 1 <= position["expected_score"] <= 5
        assert 0 <= position["confidence"] <= 1 and isinstance(position["diagnostic"], bool)
    assert report["study"]["recommendation"] and progress and progress[-1]["fraction"] == 1.0
    rows = quality.quality_rows(report)  # what the module's table shows
    assert [r.slice for r in rows] == list(range(image.GetSize()[2]))
    assert all(r.background == quality.tint(quality.GRADE_COLOURS[r.grade]) for r in rows)
    assert quality.summary_line(report).startswith(f"Study: {report['study']['grade']} ")


def test_grade_refuses_lv_labels_that_are_not_the_graded_phases(worker: Worker, study_files: Dict[str, Path],
                                                                 tmp_path: Path) -> None:
    """A labelmap for the LV slices must be one phase on the graded phase's grid, and LV detection on:
    else one sentence."""
    phase = sitk.ReadImage(str(study_files["phase0"]))
    cropped = sitk.Image([n - 1 for n in phase.GetSize()], sitk.sitkUInt8)
    cropped.CopyInformation(phase[:-1, :-1, :-1])
    sitk.WriteImage(cropped, str(tmp_path / "cropped.nrrd"))
    for n, (labels, words) in enumerate(((study_files["cine"], "holds 2 phases"),
                                         (tmp_path / "cropped.nrrd", "does not match the graded phase's geometry"))):
        _, final = worker.call({"id": f"gl-{n}", "op": "grade", "input": str(study_files["phase0"]), "device": "cpu",
                                "labels": str(labels)})
        assert final["type"] == "error" and final["code"] == "bad_labels" and words in final["message"], final
    _, final = worker.call({"id": "gl-2", "op": "grade", "input": str(study_files["phase0"]), "device": "cpu",
                            "labels": str(study_files["phase0"]), "lv_detection": False})
    assert final["type"] == "error" and final["code"] == "bad_argument" and "one or the other" in final["message"]


# -- process lifetime ------------------------------------------------------------------------------
def test_stray_output_of_an_op_goes_to_stderr_not_into_the_protocol() -> None:
    """A library that prints (Python or C, through file descriptor 1) cannot corrupt stdout."""
    script = textwrap.dedent("""
        import os, sys
        from medsegrwkv.engine import ops, run_stdio

        def noisy_info(self, fields, progress, cancel):
            print("a stray print")
            os.write(1, b"a raw write to fd 1\\n")
            return {"ok": True}

        ops.Operations.info = noisy_info
        sys.exit(run_stdio())
    """)
    run = subprocess.run([sys.executable, "-c", script], input='{"id": 1, "op": "info"}\n', capture_output=True,
                         text=True, timeout=120, cwd=str(REPO))
    assert run.returncode == 0, run.stderr
    assert [json.loads(line) for line in run.stdout.splitlines()] == [{"id": 1, "type": "result",
                                                                       "result": {"ok": True}}]
    assert "a stray print" in run.stderr and "a raw write to fd 1" in run.stderr



def test_closing_stdin_cancels_the_running_request_and_exits(study_files: Dict[str, Path], tmp_path: Path) -> None:
    worker = Worker()
    output = tmp_path / "never.nrrd"
    worker.send({"id": 50, **segment(study_files["long_cine"], output, tta=True)})
    worker.wait_for_slice_progress(50)
    worker.proc.stdin.close()
    while True:
        message = worker.next()
        if message["type"] != "progress":
            break
    assert message["id"] == 50 and message["code"] == "cancelled"
    assert worker.proc.wait(timeout=60) == 0
    assert not output.exists()


def test_client_restarts_a_worker_killed_mid_request(study_files: Dict[str, Path], tmp_path: Path) -> None:
    client = EngineClient(engine_command(sys.executable), cwd=str(REPO))
    output = tmp_path / "killed.nrrd"
    request_id = client.send(protocol.segment_request(str(study_files["long_cine"]), str(output), device="cpu",
                                                      tta=True))
    first_pid = client.pid
    deadline = time.monotonic() + TIMEOUT
    while not any(m.type == "progress" and "slice" in m.text for m in client.poll()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(first_pid, signal.SIGKILL)
    died = client.wait(request_id, 60)
    assert died.type == "error" and died.code == protocol.ErrorCode.WORKER_DIED
    assert "exit code -9" in died.text and not client.pending and not output.exists()

    info = client.wait(client.send(protocol.info_request()), TIMEOUT)  # a new worker starts on demand
    assert info.type == "result" and info.result["pid"] == client.pid != first_pid

    busy_id = client.send(protocol.segment_request(str(study_files["long_cine"]), str(output), device="cpu", tta=True))
    while not any(m.type == "progress" and "slice" in m.text for m in client.poll()):
        time.sleep(0.05)
    second_pid = client.pid
    failed = [m for m in client.restart("the test asked for it.") if m.final]
    assert [(m.id, m.code) for m in failed] == [(busy_id, protocol.ErrorCode.WORKER_RESTARTED)]
    assert client.pid != second_pid and not output.exists()
    assert client.close() == 0


# -- click refinement ------------------------------------------------------------------------------
def test_refine_with_a_cached_image(worker: Worker, study_files: Dict[str, Path], tmp_path: Path) -> None:
    from medsegrwkv.engine.protocol import decode_mask, encode_mask

    _, final = worker.call({"id": "seg", **segment(study_files["phase0"], tmp_path / "labels.nrrd")})
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.nrrd")))  # (k, j, i)
    _, loaded = worker.call({"id": "load", "op": "load_image", "input": str(study_files["phase0"])})
    assert loaded["type"] == "result", loaded
    image_id, axis = loaded["result"]["image_id"], loaded["result"]["slice_axis"]
    assert loaded["result"]["size"] == list(reversed(labels.shape))
    mask = labels == 3
    slice_axis_numpy = 2 - axis
    n = int(np.argmax(mask.sum(axis=tuple(a for a in range(3) if a != slice_axis_numpy))))  # the largest LV slice
    voxels = np.argwhere(np.take(mask, n, axis=slice_axis_numpy))
    centre = voxels[np.argmin(((voxels - voxels.mean(axis=0)) ** 2).sum(axis=1))]
    ijk = [0.0, 0.0, 0.0]
    ijk[axis] = float(n)
    in_plane = [a for a in (2, 1, 0) if a != axis]  # IJK axes of the slice's (row, column) = numpy order
    ijk[in_plane[0]], ijk[in_plane[1]] = float(centre[0]), float(centre[1])
    request = {"op": "refine", "image_id": image_id, "label": 3, "device": "cpu", "mask": encode_mask(mask),
               "points": [{"ijk": ijk, "positive": False}]}
    _, answer = worker.call({"id": "r1", **request})
    assert answer["type"] == "result", answer
    result = answer["result"]
    assert result["index_axis"] == axis and [s["index"] for s in result["slices"]] == [n]
    new_slice = decode_mask(result["slices"][0])
    old_slice = np.take(mask, n, axis=slice_axis_numpy)
    assert new_slice.shape == old_slice.shape and new_slice.sum() < old_slice.sum()  # "not here" removed voxels
    assert not new_slice[tuple(centre)]

    def error(fields: Json) -> Json:
        _, reply = worker.call({"id": "bad", **request, **fields})
        assert reply["type"] == "error" and reply["message"].endswith(".") and "Traceback" not in reply["message"]
        return reply

    assert error({"image_id": "no-such-image"})["code"] == "image_expired"
    assert error({"points": [{"ijk": [-40.0, 0.0, 0.0], "positive": True}]})["code"] == "bad_click"
    assert error({"points": [{"ijk": [1, 2], "positive": True}]})["code"] == "bad_click"
    assert error({"points": []})["code"] == "bad_click"
    assert error({"label": 9})["code"] == "unknown_segment"
    assert error({"mask": {"shape": list(mask.shape), "bits": "AAAA"}})["code"] == "bad_mask"
    assert error({"mask": encode_mask(mask[:-1])})["code"] == "bad_mask"
    assert error({"label": "LV"})["code"] == "bad_request"
    _, multi = worker.call({"id": "load4d", "op": "load_image", "input": str(study_files["cine"])})
    assert multi["type"] == "error" and multi["code"] == "bad_phase"


def test_one_phase_of_a_cine_is_reported_as_the_phase_the_client_names(worker: Worker, study_files: Dict[str, Path],
                                                                        tmp_path: Path) -> None:
    """Slicer sends the displayed sequence item as a 3D file; `cine_phase` makes answers name that
    phase instead of the file's only phase, 0."""
    progress, final = worker.call({"id": "cine", **segment(study_files["phase0"], tmp_path / "p.nrrd", cine_phase=1)})
    assert final["type"] == "result", final
    assert final["result"]["phases"] == [1] and final["result"]["volumes_ml"][0]["phase"] == 1
    assert progress and all(p["message"].startswith("phase 1") for p in progress if "slice" in p["message"])
    _, loaded = worker.call({"id": "cine-load", "op": "load_image", "input": str(study_files["phase0"]),
                             "cine_phase": 1})
    assert loaded["type"] == "result" and loaded["result"]["phase"] == 1
    _, graded = worker.call({"id": "cine-grade", "op": "grade", "input": str(study_files["phase0"]),
                             "device": "cpu", "cine_phase": 1})
    assert graded["result"]["phases"] == [1] and {s["phase"] for s in graded["result"]["slices"]} == {1}
    _, wrong = worker.call({"id": "cine-4d", **segment(study_files["cine"], tmp_path / "q.nrrd", cine_phase=1)})
    assert wrong["type"] == "error" and wrong["code"] == "bad_phase" and not (tmp_path / "q.nrrd").exists()
