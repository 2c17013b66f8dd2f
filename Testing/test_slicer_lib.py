"""The Slicer module's Slicer-free parts (MedSegRWKV/MedSegRWKVLib), tested for real: geometry
with the vtk wheel's matrices against SimpleITK and the backend, requests against the worker's
own parser, the client against real (small) processes, table rows from real grader output,
terminology strings in Slicer's format; plus mechanical checks that MedSegRWKV.py, its .ui file
and its CMakeLists.txt agree, and that every module file compiles for Slicer's Python 3.9.
"""

from __future__ import annotations

import ast
import json
import py_compile
import shutil
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Set, Tuple

import numpy as np
import pytest
import SimpleITK as sitk
from vtkmodules.vtkCommonMath import vtkMatrix4x4
from vtkmodules.vtkCommonTransforms import vtkTransform

from medsegrwkv.io import read_study, sample_data_dir
from medsegrwkv.preprocess import roi_from_ras_box
from medsegrwkv.nets.complexity import count_parameters
from medsegrwkv.nets.registry import DEFAULT_MODELS, create_model

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "MedSegRWKV"
sys.path.insert(0, str(MODULE_DIR))
from MedSegRWKVLib import cardiac, dependencies, geometry, panel, plots, protocol, quality, terminology  # noqa: E402
from MedSegRWKVLib.client import EngineClient  # noqa: E402
from MedSegRWKVLib.ui_contract import PARAMETERS, WIDGETS  # noqa: E402

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def sample() -> sitk.Image:
    """A real oblique short-axis stack: the bundled Sunnybrook study, phase 0."""
    return read_study(sample_data_dir() / "SCD0000101" / "dicom").phases[0]


def ijk_to_ras(image: sitk.Image) -> vtkMatrix4x4:
    """Slicer's IJKToRAS matrix of a volume with this (LPS) file geometry."""
    rotation = LPS_TO_RAS @ np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    origin = LPS_TO_RAS @ np.array(image.GetOrigin())
    matrix = vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, rotation[r, c])
        matrix.SetElement(r, 3, origin[r])
    return matrix


def roi_matrix(centre: Tuple[float, float, float], rotate_deg: Tuple[float, float, float] = (0, 0, 0)) -> vtkMatrix4x4:
    """ObjectToWorld of a markups ROI, built as Slicer composes it (vtkTransform)."""
    transform = vtkTransform()
    transform.Translate(*centre)
    transform.RotateX(rotate_deg[0])
    transform.RotateY(rotate_deg[1])
    transform.RotateZ(rotate_deg[2])
    return transform.GetMatrix()


def sitk_box(image: sitk.Image, corners_ras: List[Tuple[float, float, float]]) -> List[int]:
    """The corner rule computed with SimpleITK's own transforms (independent of vtk)."""
    ijk = np.array([image.TransformPhysicalPointToContinuousIndex((-r, -a, s)) for r, a, s in corners_ras])
    start = np.maximum(np.floor(ijk.min(0) + 0.5), 0).astype(int)
    stop = np.minimum(np.floor(ijk.max(0) + 0.5) + 1, image.GetSize()).astype(int)
    return [*start.tolist(), *stop.tolist()]


# -- geometry --------------------------------------------------------------------------------------
def test_axis_aligned_ras_roi_gives_the_backends_voxel_box(sample: sitk.Image) -> None:
    world_to_ijk = geometry.inverted(ijk_to_ras(sample))
    centre_lps = sample.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in sample.GetSize()])
    centre = LPS_TO_RAS @ np.array(centre_lps)
    rng = np.random.default_rng(0)
    for _ in range(20):
        offset, size = rng.uniform(-30, 30, 3), rng.uniform(10, 120, 3)
        lo, hi = centre + offset - size / 2, centre + offset + size / 2
        box = geometry.roi_to_voxel_box(world_to_ijk, roi_matrix(tuple(centre + offset)), size, sample.GetSize())
        expected = roi_from_ras_box(sample, tuple(lo), tuple(hi))
        assert box.as_list() == [*expected.start, *expected.stop]


def test_rotated_roi_covers_its_corners(sample: sitk.Image) -> None:
    world_to_ijk = geometry.inverted(ijk_to_ras(sample))
    centre = tuple(LPS_TO_RAS @ np.array(sample.TransformIndexToPhysicalPoint((128, 120, 6))))
    for angles in ((0, 0, 30), (20, -15, 60), (90, 0, 0)):
        matrix, size = roi_matrix(centre, angles), (80.0, 60.0, 40.0)
        box = geometry.roi_to_voxel_box(world_to_ijk, matrix, size, sample.GetSize())
        assert box.as_list() == sitk_box(sample, geometry.roi_corners_world(matrix, size))
        assert all(n > 0 for n in box.shape)


def test_roi_outside_or_flat_is_refused(sample: sitk.Image) -> None:
    world_to_ijk = geometry.inverted(ijk_to_ras(sample))
    with pytest.raises(geometry.RoiError, match="outside"):
        geometry.roi_to_voxel_box(world_to_ijk, roi_matrix((5000.0, 0.0, 0.0)), (10, 10, 10), sample.GetSize())
    with pytest.raises(geometry.RoiError, match="zero size"):
        geometry.roi_to_voxel_box(world_to_ijk, roi_matrix((0.0, 0.0, 0.0)), (10, 0, 10), sample.GetSize())


@pytest.mark.parametrize("flip", [False, True])
def test_fit_roi_to_volume_covers_exactly_the_volume(sample: sitk.Image, flip: bool) -> None:
    image = sample
    if flip:  # a left-handed voxel frame (one axis mirrored in the file)
        image = sitk.Image(sample)
        direction = np.array(sample.GetDirection()).reshape(3, 3)
        direction[:, 2] *= -1
        image.SetDirection(direction.ravel().tolist())
    matrix = ijk_to_ras(image)
    object_to_world, size = geometry.fit_roi_to_volume(matrix, image.GetSize())
    rotation = np.array([[object_to_world.GetElement(r, c) for c in range(3)] for r in range(3)])
    assert np.allclose(rotation.T @ rotation, np.eye(3)) and np.linalg.det(rotation) == pytest.approx(1.0)
    assert np.allclose(size, np.array(image.GetSize()) * np.array(image.GetSpacing()))
    box = geometry.roi_to_voxel_box(geometry.inverted(matrix), object_to_world, size, image.GetSize())
    assert box.as_list() == [0, 0, 0, *image.GetSize()]
    corners = [geometry.transform_point(geometry.inverted(matrix), c)
               for c in geometry.roi_corners_world(object_to_world, size)]
    assert np.allclose(sorted({round(c[0], 6) for c in corners}), [-0.5, image.GetSize()[0] - 0.5])


def test_slice_centre_world_lands_on_the_slice(sample: sitk.Image) -> None:
    matrix = ijk_to_ras(sample)
    for index in (0, 5, sample.GetSize()[2] - 1):
        point = geometry.slice_centre_world(matrix, sample.GetSize(), 2, index)
        lps = (-point[0], -point[1], point[2])
        assert np.allclose(sample.TransformPhysicalPointToContinuousIndex(lps), (127.5, 127.5, index))
    with pytest.raises(ValueError, match="is outside"):
        geometry.slice_centre_world(matrix, sample.GetSize(), 2, sample.GetSize()[2])


def test_parent_transform_is_composed_before_inverting(sample: sitk.Image) -> None:
    """A volume under a linear transform: world -> IJK goes through that transform's inverse."""
    shift = vtkTransform()
    shift.Translate(10.0, -5.0, 2.0)
    ijk_to_world = geometry.multiplied(shift.GetMatrix(), ijk_to_ras(sample))
    point = geometry.transform_point(ijk_to_world, (3, 4, 5))
    unshifted = geometry.transform_point(ijk_to_ras(sample), (3, 4, 5))
    assert np.allclose(np.subtract(point, unshifted), (10.0, -5.0, 2.0))
    assert np.allclose(geometry.transform_point(geometry.inverted(ijk_to_world), point), (3, 4, 5))


# -- protocol --------------------------------------------------------------------------------------
def test_requests_pass_the_workers_own_parser() -> None:
    from medsegrwkv.engine.protocol import parse_request

    requests = [
        protocol.segment_request("/in.nrrd", "/out.nrrd", "unet2d", "cuda", True, (1, 2, 3, 40, 50, 6), phase=1),
        protocol.segment_request("/in.nrrd", "/out.nrrd"),
        protocol.grade_request("/in.nrrd", device="cpu"),
        protocol.grade_request("/in.nrrd", device="cpu", labels="/labels.nrrd"),
        protocol.models_request("segmentation"),
        protocol.info_request(),
        protocol.cancel_request(7),
    ]
    for n, request in enumerate(requests):
        line = protocol.encode(n, request)
        assert line.endswith("\n") and line.count("\n") == 1
        parsed = parse_request(line)
        assert parsed.id == n and parsed.op == request["op"]
        assert {k: parsed.fields[k] for k in request if k != "op"} == {k: v for k, v in request.items() if k != "op"}
    assert parse_request(protocol.encode(0, requests[0])).fields["roi"] == [1, 2, 3, 40, 50, 6]
    # TTA unsaid reaches the worker as None, which runs it on a GPU only (inference.device.resolve_tta)
    assert [parse_request(protocol.encode(0, protocol.segment_request("/i.nrrd", "/o.nrrd", tta=t))).fields["tta"]
            for t in (None, False, True)] == [None, False, True]


def test_function_requests_pass_the_workers_own_parser() -> None:
    from medsegrwkv.engine.protocol import parse_request

    segment_all = protocol.function_request(["/p0.nrrd", "/p1.nrrd"], output="/labels.nrrd", model="unet2d",
                                            device="cpu", tta=True, ed=1, es=0, height_cm=170, weight_kg=70.5)
    recompute = protocol.function_request(["/p0.nrrd", "/p1.nrrd"], labels=["/l0.nrrd", "/l1.nrrd"])
    for n, request in enumerate((segment_all, recompute)):
        parsed = parse_request(protocol.encode(n, request))
        assert parsed.op == "function"
        assert {k: parsed.fields[k] for k in request if k != "op"} == {k: v for k, v in request.items() if k != "op"}
    assert recompute["output"] is None and recompute["model"] is None and segment_all["labels"] is None
    for kwargs, problem in (({"inputs": ["/p0.nrrd"], "output": "/o.nrrd"}, "at least two"),
                            ({"inputs": ["/a", "/b"]}, "either an output"),
                            ({"inputs": ["/a", "/b"], "output": "/o", "labels": ["/l"]}, "either an output"),
                            ({"inputs": ["/a", "/b"], "output": "/o", "ed": 2}, "ed must be"),
                            ({"inputs": ["/a", "/b"], "output": "/o", "es": -1}, "es must be"),
                            ({"inputs": ["/a", "/b"], "output": "/o", "height_cm": 170}, "both"),
                            ({"inputs": ["/a", "/b"], "output": "/o", "height_cm": 0, "weight_kg": 70}, "positive"),
                            ({"inputs": ["/a", "/b"], "output": "/o", "device": "gpu"}, "device")):
        with pytest.raises(ValueError, match=problem):
            protocol.function_request(**kwargs)


def test_request_mistakes_are_caught_before_sending() -> None:
    with pytest.raises(ValueError, match="device"):
        protocol.segment_request("a", "b", device="gpu")
    with pytest.raises(ValueError, match="roi"):
        protocol.segment_request("a", "b", roi=(0, 0, 0, 10, 10))
    with pytest.raises(ValueError, match="roi"):
        protocol.segment_request("a", "b", roi=(5, 0, 0, 5, 10, 10))
    with pytest.raises(ValueError, match="op"):
        protocol.encode(1, {"input": "a"})


def test_worker_messages_are_parsed() -> None:
    from medsegrwkv.engine.protocol import error_message, progress_message, result_message

    progress = protocol.parse_message(json.dumps(progress_message(3, 0.6667, "phase 0: slice 8/12")))
    assert (progress.type, progress.id, progress.final) == ("progress", 3, False)
    assert progress.fraction == pytest.approx(0.6667)
    assert protocol.progress_text("Segmenting", progress) == "Segmenting: phase 0: slice 8/12 (67%)"
    assert protocol.parse_message('{"id": 1, "type": "progress", "fraction": 7}').fraction == 1.0
    result = protocol.parse_message(json.dumps(result_message("a", {"output": "x"})))
    assert result.final and result.result == {"output": "x"}
    error = protocol.parse_message(json.dumps(error_message(4, "no_cuda", "CUDA was requested but none is there.")))
    assert error.final and error.code == "no_cuda"
    assert protocol.error_text(error) == "CUDA was requested but none is there. Choose Auto or CPU as the device."
    for line, problem in (("garbage", "not JSON"), ("[]", "not a worker message"), ('{"id": 1}', "not a worker"),
                          ('{"id": 1, "type": "progress"}', "progress without a fraction"),
                          ('{"id": 1, "type": "result"}', "result without an object"),
                          ('{"id": 1, "type": "chat"}', "unknown message type")):
        with pytest.raises(protocol.ProtocolViolation, match=problem):
            protocol.parse_message(line)


def test_module_error_codes_mirror_the_workers() -> None:
    """Every worker code the module acts on exists in the backend under the same name and value;
    the client's own codes are not worker codes; every advised code is one the module knows."""
    from medsegrwkv.errors import ErrorCode

    client_only = {protocol.ErrorCode.WORKER_DIED, protocol.ErrorCode.WORKER_RESTARTED}
    worker = [code for code in protocol.ErrorCode if code not in client_only]
    assert {code.name: code.value for code in worker} == {code.name: ErrorCode[code.name].value for code in worker}
    assert not {code.value for code in client_only} & {code.value for code in ErrorCode}
    assert set(protocol.ERROR_ADVICE) <= set(protocol.ErrorCode)
    error = protocol.parse_message(json.dumps({"id": 1, "type": "error", "code": ErrorCode.BUSY, "message": "m"}))
    assert error.code == protocol.ErrorCode.BUSY and protocol.error_text(error).startswith("m Wait")


# -- client against small real processes ------------------------------------------------------------
def python_worker(code: str) -> List[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_client_reports_a_worker_that_exits() -> None:
    client = EngineClient(python_worker("import sys; print('about to fail', file=sys.stderr); sys.exit(3)"))
    request_id = client.send(protocol.info_request())
    message = client.wait(request_id, 30)
    assert message.type == "error" and message.code == protocol.ErrorCode.WORKER_DIED
    assert "exit code 3" in message.text and "about to fail" in message.text
    assert not client.pending and not client.running
    # A request sent before the death was noticed: its answer still comes with the next poll.
    lost = client.send(protocol.info_request())
    while client.running:
        time.sleep(0.01)
    again = client.send(protocol.info_request())  # starts a new worker first
    deadline = time.monotonic() + 30
    seen: Dict[int, str] = {}
    while len(seen) < 2 and time.monotonic() < deadline:
        seen.update({m.id: m.code for m in client.poll()})
        time.sleep(0.01)
    assert seen == {lost: protocol.ErrorCode.WORKER_DIED, again: protocol.ErrorCode.WORKER_DIED}


def test_client_skips_lines_that_are_not_protocol() -> None:
    client = EngineClient(python_worker("""
        import json, sys
        request = json.loads(sys.stdin.readline())
        print("a stray print", flush=True)
        print(json.dumps({"id": request["id"], "type": "progress", "fraction": 0.5, "message": "half"}), flush=True)
        print(json.dumps({"id": request["id"], "type": "result", "result": {"ok": True}}), flush=True)
        sys.stdin.readline()
    """))
    request_id = client.send(protocol.info_request())
    seen: List[protocol.Message] = []
    result = client.wait(request_id, 30, on_progress=seen.append)
    assert result.result == {"ok": True} and [m.text for m in seen] == ["half"]
    assert "ignored a line" in client.log_tail()
    assert client.close() == 0


def test_client_restarts_a_silent_worker() -> None:
    client = EngineClient(python_worker("import time; time.sleep(60)"))
    request_id = client.send(protocol.info_request())
    time.sleep(0.3)
    assert client.silent_for() >= 0.3 and client.unresponsive(limit=0.2) and not client.unresponsive()
    first = client.pid
    failed = client.restart("it sent nothing.")
    assert [(m.id, m.code) for m in failed] == [(request_id, protocol.ErrorCode.WORKER_RESTARTED)]
    assert client.pid != first and client.running and client.silent_for() == 0.0
    assert client.close(timeout=1) == -9  # ignores shutdown, so it is killed


# -- terminology -----------------------------------------------------------------------------------
def test_terminology_strings_in_slicers_format() -> None:
    from medsegrwkv.weights import load_manifest

    specs = terminology.segment_specs(load_manifest("unet2d")["labels"])
    assert [(s.value, s.name, s.segment_id) for s in specs] == [
        (1, "RV cavity", "medsegrwkv_rv_cavity"), (2, "LV myocardium", "medsegrwkv_lv_myocardium"),
        (3, "LV cavity", "medsegrwkv_lv_cavity")]
    context = "Segmentation category and type - MedSegRWKV cardiac structures"
    anatomy = "Anatomic codes - DICOM master list"
    structure = "SCT^123037004^Anatomical Structure"
    assert [s.terminology for s in specs] == [
        f"{context}~{structure}~SCT^53085002^Right ventricle~^^~{anatomy}~^^~^^",
        f"{context}~{structure}~SCT^74281007^Myocardium~^^~{anatomy}~SCT^87878005^Left ventricle~^^",
        f"{context}~{structure}~SCT^87878005^Left ventricle~^^~{anatomy}~^^~^^",
    ]
    for spec in specs:
        parts = spec.terminology.split("~")
        assert len(parts) == 7 and all(len(parts[i].split("^")) == 3 for i in (1, 2, 3, 5, 6))
        assert all(0 <= c <= 1 for c in spec.color)
    label = {"value": 1, "name": "x", "color": [0, 0, 0], "category": {"scheme": "SCT", "code": "1", "meaning": "a~b"},
             "type": {"scheme": "SCT", "code": "2", "meaning": "t"}}
    with pytest.raises(ValueError, match="separator"):
        terminology.segment_specs([label])
    with pytest.raises(ValueError, match="colour"):
        terminology.segment_specs([{**label, "category": label["type"], "color": [255, 0, 0]}])


def test_the_shipped_terminology_list_holds_every_structure_of_every_manifest() -> None:
    """Slicer's terminology selector finds a segment's entry only in the list its context names
    (test_slicer_module.py checks that with Slicer's own logic); here: the module's list is that
    context and holds the category and type of every label of every bundled manifest."""
    from medsegrwkv.weights import load_manifest
    from medsegrwkv.weights.store import MODELS_DIR

    shipped = json.loads((MODULE_DIR / terminology.TERMINOLOGY_FILE).read_text(encoding="utf-8"))
    assert shipped["SegmentationCategoryTypeContextName"] == terminology.CATEGORY_TYPE_CONTEXT
    listed = {(c["CodingSchemeDesignator"], c["CodeValue"], t["CodingSchemeDesignator"], t["CodeValue"])
              for c in shipped["SegmentationCodes"]["Category"] for t in c["Type"]}
    manifests = [load_manifest(p.parent.name) for p in sorted(MODELS_DIR.glob("*/manifest.json"))]
    labels = [label for m in manifests for label in m["labels"] if isinstance(label, dict)]
    assert labels
    for label in labels:
        key = (label["category"]["scheme"], label["category"]["code"], label["type"]["scheme"], label["type"]["code"])
        assert key in listed, (label["name"], key)


# -- quality table ---------------------------------------------------------------------------------
def grade_result() -> Dict[str, Any]:
    """A grade result shaped as the worker sends it, from the grader's own description function."""
    from medsegrwkv.grading.grade import describe_probabilities

    distributions = {0: [0, 0, 0.1, 0.3, 0.6], 1: [0.05, 0.1, 0.7, 0.1, 0.05], 2: [0.6, 0.3, 0.1, 0, 0],
                     3: [0, 0, 0, 0.2, 0.8]}
    positions = [{"slice": k, "index": 3 - k, **describe_probabilities(np.array(p)), "lv": k != 3}
                 for k, p in distributions.items()]
    study = {"grade": "severe", "score": 1, "rule": "worst LV slice",
             "recommendation": "1 of 3 slices through the left ventricle are non-diagnostic (slice 2) — consider "
                               "repeating it."}
    return {"positions": positions[::-1], "study": study, "index_axis": 2, "caveat": "simulated motion"}


def test_quality_rows_and_colours() -> None:
    from medsegrwkv.grading.grade import GRADE_COLOURS

    assert quality.GRADE_COLOURS == {k: tuple(v) for k, v in GRADE_COLOURS.items()}
    result = grade_result()
    rows = quality.quality_rows(result)
    # Rows are numbered and ordered as the file stores its slices, like the recommendation.
    assert [r.index for r in rows] == [0, 1, 2, 3] and [r.slice for r in rows] == [3, 2, 1, 0]
    assert [r.grade for r in rows] == ["mild", "severe", "moderate", "mild"]
    assert rows[0].cells == ("0", f"{rows[0].score:.1f}", "mild", f"{100 * rows[0].confidence:.0f}%")
    assert rows[1].cells[2] == "severe (non-diagnostic)" and not rows[1].diagnostic
    assert rows[2].colour == (240, 170, 30) and rows[2].background == (249, 221, 165)
    assert all(all(b >= c for b, c in zip(r.background, r.colour)) for r in rows)
    assert "outside the left ventricle" in rows[0].tooltip and "canonical position 3" in rows[0].tooltip
    assert quality.summary_line(result).startswith("Study: severe (score 1). 1 of 3 slices")
    assert quality.summary_colour(result) == (215, 48, 39)
    assert "background-color: rgb(239, 172, 169)" in quality.summary_style(result)
    xs, ys = quality.plot_points(result)
    assert xs == [0, 1, 2, 3] and ys == [r.score for r in rows] and ys[1] < ys[2] < ys[0]
    with pytest.raises(ValueError, match="unknown grade"):
        quality.quality_rows({"positions": [{**result["positions"][0], "grade": "awful"}]})


def test_quality_plot_describes_score_per_slice() -> None:
    result = grade_result()
    plot = quality.plot(result)
    xs, ys = quality.plot_points(result)
    assert plot.columns == {"slice": xs, "score": ys} and plot.y_range == (0.5, 5.5)
    (series,) = plot.series
    assert (series.x, series.y, series.line) == ("slice", "score", False)
    assert series.colour == tuple(c / 255 for c in quality.GRADE_COLOURS["severe"])
    with pytest.raises(ValueError, match="differ in length"):
        plots.Plot("t", "x", "y", {"a": [1.0], "b": [1.0, 2.0]}, [])
    with pytest.raises(ValueError, match="lacks"):
        plots.Plot("t", "x", "y", {"a": [1.0]}, [plots.Series("s", "a", "b", (0, 0, 0))])


# -- cardiac function --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def function_result(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """A real `function` result: the module's request for the bundled cine (one NRRD per phase, as
    the module writes a sequence), parsed and run by the worker's own op with the fast model."""
    from medsegrwkv.engine.ops import Operations
    from medsegrwkv.engine.protocol import parse_request

    folder = tmp_path_factory.mktemp("function")
    inputs = []
    for n, image in enumerate(read_study(sample_data_dir() / "SCD0000101" / "dicom").phases):
        inputs.append(str(folder / f"phase{n}.nrrd"))
        sitk.WriteImage(image, inputs[-1])
    request = protocol.function_request(inputs, output=str(folder / "labels.nrrd"), model="unet2d", device="cpu",
                                        **cardiac.request_options(0, 0, 170.0, 70.0))
    return Operations().function(parse_request(protocol.encode(1, request)).fields, lambda f, m: None, lambda: False)


def test_cine_trigger_times_fill_the_curve() -> None:
    assert cardiac.cine_times(["287.09", "708.15"], "ms") == [287.09, 708.15]
    assert cardiac.cine_times(["0.5", "1"], "s") == [500.0, 1000.0]
    assert cardiac.cine_times(["1", "2"], "") is None and cardiac.cine_times(["a", "b"], "ms") is None
    result = {"curve": [{"phase": 0, "time_ms": None}, {"phase": 1, "time_ms": None}]}
    filled = cardiac.with_cine_times(result, [287.094, 708.15])
    assert [row["time_ms"] for row in filled["curve"]] == [287.09, 708.15] and result["curve"][0]["time_ms"] is None
    assert cardiac.with_cine_times(result, None) is result and cardiac.with_cine_times(result, [1.0]) is result
    timed = {"curve": [{"phase": 0, "time_ms": 5.0}, {"phase": 1, "time_ms": 9.0}]}
    assert cardiac.with_cine_times(timed, [1.0, 2.0]) is timed  # the worker's own times win


def test_function_result_rows_show_the_workers_numbers(function_result: Dict[str, Any]) -> None:
    assert all(row["time_ms"] is None for row in function_result["curve"])  # phase files carry no trigger time
    result = cardiac.with_cine_times(function_result, [287.09, 708.15])
    rows = cardiac.result_rows(result)
    by_name = {row.measure: row for row in rows}
    ed, es = result["ed_phase"], result["es_phase"]
    assert {ed, es} == {0, 1} and [r.measure for r in rows[:2]] == ["ED phase", "ES phase"]
    assert by_name["ED phase"].value == str(ed + 1) and by_name["ES phase"].value == str(es + 1)  # 1-based
    assert by_name["ED phase"].note == f"{result['curve'][ed]['time_ms']:g} ms, largest LV cavity volume"
    for ventricle in ("lv", "rv"):
        for field, name, unit, _ in cardiac.MEASURES:
            if field not in result[ventricle]:
                assert field == "mass_g" and ventricle == "rv"
                continue
            row = by_name[f"{ventricle.upper()} {name}"]
            assert float(row.value) == pytest.approx(result[ventricle][field], abs=0.05) and row.unit == unit
            indexed = by_name[f"{ventricle.upper()} {name} index"] if field != "ef_percent" else None
            if indexed is not None:
                assert float(indexed.value) == pytest.approx(result[ventricle][f"{field}_m2"], abs=0.05)
                assert indexed.unit == unit + "/m²"
    assert "LV mass" in by_name and "RV mass" not in by_name and "LV EF index" not in by_name
    assert by_name["BSA"].value == f"{result['bsa_m2']:.2f}" and "170 cm" in by_name["BSA"].note
    warnings = [row.note for row in rows if row.measure == "Warning"]
    assert warnings == result["warnings"] and all(row.measure == "Warning" for row in rows[len(rows) - len(warnings):])
    assert all(len(row.cells) == len(cardiac.COLUMNS) for row in rows)
    line = cardiac.summary_line(result)
    assert line.startswith(f"LV EF {result['lv']['ef_percent']:.1f}% (EDV {result['lv']['edv_ml']:.1f} mL")
    assert line.endswith(f"ED phase {ed + 1}, ES phase {es + 1}.") and "RV EF" in line
    without_bsa = {**result, "bsa_m2": None, "lv": {k: v for k, v in result["lv"].items() if not k.endswith("_m2")},
                   "rv": None, "warnings": []}
    names = [row.measure for row in cardiac.result_rows(without_bsa)]
    assert names == ["ED phase", "ES phase", "LV EDV", "LV ESV", "LV SV", "LV EF", "LV mass"]
    assert cardiac.result_rows({**without_bsa, "lv": {**without_bsa["lv"], "ef_percent": None}})[5].value == "-"
    untimed = cardiac.result_rows({**without_bsa, "curve": function_result["curve"]})
    assert untimed[0].note == "largest LV cavity volume"


def test_volume_time_plot_of_a_function_result(function_result: Dict[str, Any]) -> None:
    result = cardiac.with_cine_times(function_result, [287.09, 708.15])
    plot = cardiac.curve_plot(result, result["labels"])
    assert plot.columns["phase"] == [1.0, 2.0]
    assert plot.columns["time (ms)"] == [row["time_ms"] for row in result["curve"]]
    assert [s.name for s in plot.series] == ["LV cavity", "RV cavity", "LV myocardium"]
    assert all(s.x == "time (ms)" and s.line for s in plot.series)
    lv = next(s for s in plot.series if s.name == "LV cavity")
    assert plot.columns[lv.y] == [row["lv_ml"] for row in result["curve"]]
    manifest = {label["name"]: tuple(label["color"]) for label in result["labels"]}
    assert all(s.colour == manifest[s.name] for s in plot.series)
    untimed = [{**row, "time_ms": None, "rv_ml": None} for row in result["curve"]]
    plot = cardiac.curve_plot({**result, "curve": untimed[::-1]})  # recomputed: no labels, no times
    assert "time (ms)" not in plot.columns and [s.x for s in plot.series] == ["phase", "phase"]
    assert [s.name for s in plot.series] == ["LV cavity", "LV myocardium"]
    assert plot.columns["phase"] == [1.0, 2.0]


def test_function_options_from_the_panel() -> None:
    assert cardiac.request_options(0, 0, 0.0, 0.0) == {"ed": None, "es": None, "height_cm": None, "weight_kg": None}
    assert cardiac.request_options(2, 1, 170.0, 70.0) == {"ed": 1, "es": 0, "height_cm": 170.0, "weight_kg": 70.0}
    with pytest.raises(ValueError, match="both height and weight"):
        cardiac.request_options(0, 0, 170.0, 0.0)
    with pytest.raises(ValueError, match="must differ"):
        cardiac.request_options(3, 3, 0.0, 0.0)


def test_corrected_phase_labelmaps_use_the_workers_default_labels() -> None:
    from medsegrwkv.function.cardiac import default_labels

    defaults = default_labels()
    assert {(label["name"], label["value"]) for label in defaults} == set(cardiac.LABEL_VALUES)
    assert {label["name"]: tuple(label["color"]) for label in defaults} == cardiac.DEFAULT_COLOURS
    assert cardiac.label_segments() == [(1, "medsegrwkv_rv_cavity"), (2, "medsegrwkv_lv_myocardium"),
                                        (3, "medsegrwkv_lv_cavity")]
    assert [s.segment_id for s in terminology.segment_specs(defaults)] == [i for _, i in cardiac.label_segments()]
    shape = (2, 3, 4)
    rv, myo, lv = (np.zeros(shape, bool) for _ in range(3))
    rv[0, 0, :2] = True
    myo[1, :, :] = True
    lv[1, 1, 1] = True  # overlaps the myocardium: the cavity wins
    labelmap = cardiac.labelmap_from_masks({"medsegrwkv_rv_cavity": rv, "medsegrwkv_lv_myocardium": myo,
                                            "medsegrwkv_lv_cavity": lv, "user": np.ones(shape, bool)}, shape)
    assert labelmap.dtype == np.uint8 and labelmap[0, 0].tolist() == [1, 1, 0, 0]
    assert (labelmap[1] == 2).sum() == 11 and labelmap[1, 1, 1] == 3
    assert not cardiac.labelmap_from_masks({}, shape).any()  # every segment deleted: an empty phase
    with pytest.raises(ValueError, match="shape"):
        cardiac.labelmap_from_masks({"medsegrwkv_lv_cavity": np.zeros((1, 1, 1), bool)}, shape)


# -- panel -----------------------------------------------------------------------------------------
def test_model_choices_from_the_workers_model_list() -> None:
    from medsegrwkv.engine.ops import Operations

    default = DEFAULT_MODELS["segmentation"]
    models = Operations().models({"task": "segmentation"}, lambda f, m: None, lambda: False)["models"]
    for row in models:
        if row["name"] == default:
            row["measured_seconds_per_slice"] = {"cpu": 0.0412}
    choices = panel.model_choices(models)
    assert choices[0].value == default and choices[0].text == f"{default} (default)" and choices[0].enabled
    params = count_parameters(create_model(default))
    assert f"{params / 1e6:.2f} M parameters" in choices[0].tooltip and "Weights: verified" in choices[0].tooltip
    assert "Validation mean Dice" in choices[0].tooltip and "0.041 s per slice on cpu" in choices[0].tooltip
    missing = [c for c in choices if not c.enabled]
    assert missing and all(c.text.endswith(" — no weights") for c in missing)
    assert panel.pick_choice(choices, missing[0].value) == 0  # a model without weights is never selected
    assert panel.pick_choice(choices, default) == 0
    assert panel.pick_choice([panel.Choice("x", "x", False)], None) is None


def test_device_choices_name_the_gpu() -> None:
    with_gpu = panel.device_choices({"gpus": ["NVIDIA H100 80GB HBM3"]})
    assert [c.value for c in with_gpu] == ["auto", "cuda", "cpu"]
    assert with_gpu[0].text == "Auto (GPU: NVIDIA H100 80GB HBM3)" and with_gpu[1].enabled
    without = panel.device_choices({"gpus": []})
    assert without[0].text == "Auto (CPU: no CUDA GPU found)" and not without[1].enabled
    assert panel.device_choices(None)[0].text == "Auto"
    assert panel.pick_choice(without, "cuda") == 0


def test_tta_box_starts_as_the_backends_default() -> None:
    """The box starts ticked exactly where the worker would run TTA unasked: with a CUDA GPU."""
    import torch

    from medsegrwkv.engine.ops import Operations
    from medsegrwkv.inference.device import resolve_device, resolve_tta

    info = Operations().info({}, lambda f, m: None, lambda: False)  # this machine's real answer
    assert panel.tta_default(info) == resolve_tta(None, resolve_device(info["auto_device"])) == torch.cuda.is_available()
    assert panel.tta_default({**info, "cuda_available": True}) and not panel.tta_default({**info, "cuda_available": False})
    assert not panel.tta_default(None)  # no worker yet


def test_phase_and_about_texts() -> None:
    assert panel.phase_text(0, 1) == "Single volume (no cine phases)"
    assert panel.phase_text(1, 2, "708.2", "ms") == "of 2 (708.2 ms)"
    assert panel.phase_text(4, 20) == "of 20"
    from medsegrwkv.engine.ops import Operations

    info = Operations().info({}, lambda f, m: None, lambda: False)
    text = panel.about_text(info, "2.14.1", "0.1.0")
    assert f"Worker PyTorch {info['torch']}" in text and f"pid {info['pid']}" in text
    assert ("no CUDA GPU" in text) != bool(info["gpus"]) and f"segmentation: {DEFAULT_MODELS['segmentation']}" in text
    assert panel.about_text(None, None, None, "Install PyTorch.").splitlines() == [
        "PyTorch in Slicer's Python: not installed", "medsegrwkv backend package: not installed", "Install PyTorch."]


# -- dependencies ----------------------------------------------------------------------------------
def test_bundled_backend_of_this_checkout() -> None:
    from medsegrwkv import __version__

    bundled = dependencies.find_bundled_backend(MODULE_DIR)
    assert bundled == dependencies.BundledBackend(REPO / "backend", __version__, ">=2.1", True)
    assert dependencies.backend_pip_args(bundled) == ["--upgrade", "-e", f"{REPO / 'backend'}"]
    assert dependencies.find_sample_dicom(MODULE_DIR) == sample_data_dir() / "SCD0000101" / "dicom"


def test_setup_plans() -> None:
    bundled = dependencies.BundledBackend(Path("/x/MedSegRWKVBackend"), "0.1.0", ">=2.1", False)
    plan = dependencies.plan_setup("2.14.1+cu130", "0.1.0", bundled, pytorch_utils=False)
    assert plan.ready and not plan.pip_args and not plan.message
    plan = dependencies.plan_setup(None, None, bundled, pytorch_utils=True)
    assert plan.torch == "install" and plan.install_backend and not plan.ready
    assert plan.pip_args == ["--upgrade", "/x/MedSegRWKVBackend"]
    assert "PyTorch extension will install PyTorch >=2.1" in plan.message
    plan = dependencies.plan_setup("2.0.1", "0.1.0", bundled, pytorch_utils=False)
    assert plan.torch == "missing" and plan.blocked and "Extensions Manager" in plan.message
    assert dependencies.plan_setup("2.0.1", "0.1.0", bundled, pytorch_utils=True).torch == "install"
    plan = dependencies.plan_setup("2.3", "0.0.9", bundled, pytorch_utils=False)
    assert plan.torch == "ok" and plan.install_backend and "0.1.0 will be installed" in plan.message
    assert dependencies.plan_setup("2.3", "0.1.0", bundled, False, force_backend=True).install_backend
    plan = dependencies.plan_setup("2.3", None, None, pytorch_utils=False)
    assert plan.blocked and not plan.ready and "reinstall the MedSegRWKV extension" in plan.message
    assert dependencies.plan_setup("2.3", "0.1.0", None, pytorch_utils=False).ready  # installed some other way
    assert dependencies.version_at_least("2.1", "2.1.0") and not dependencies.version_at_least("2.0.9", "2.1")
    with pytest.raises(ValueError, match="not a version"):
        dependencies.parse_version("unknown")


# -- module files: compile, .ui contract, CMake -----------------------------------------------------
def module_sources() -> List[Path]:
    return sorted(MODULE_DIR.rglob("*.py"))


def test_every_module_file_compiles_for_python_3_9(tmp_path: Path) -> None:
    for path in module_sources():
        py_compile.compile(str(path), cfile=str(tmp_path / (path.name + "c")), doraise=True)
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


def test_lib_never_imports_slicer_qt_or_torch() -> None:
    for path in (MODULE_DIR / "MedSegRWKVLib").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in {"slicer", "qt", "ctk", "torch", "medsegrwkv"}, (path.name, name)


# What the module may call on each widget class: from the Qt, CTK and Slicer (qMRML) APIs, plus
# PythonQt's connect. Properties are read or set as attributes in PythonQt.
KNOWN_API: Dict[str, Set[str]] = {
    "QPushButton": {"connect", "setText", "setEnabled", "setToolTip", "text", "enabled", "setChecked", "checked"},
    "QLabel": {"setText", "setStyleSheet", "setToolTip", "text"},
    "QComboBox": {"connect", "clear", "addItem", "setItemData", "itemData", "model", "setCurrentIndex", "currentIndex",
                  "count", "blockSignals", "setEnabled", "currentData", "currentText"},
    "QSpinBox": {"connect", "blockSignals", "setRange", "setValue", "setEnabled", "value"},
    "QCheckBox": {"connect", "checked", "setChecked"},
    "QProgressBar": {"setValue", "value"},
    "QTableWidget": {"connect", "setHorizontalHeaderLabels", "setRowCount", "setItem", "rowCount", "item"},
    "qMRMLNodeComboBox": {"connect", "currentNode", "setCurrentNode"},
    "qMRMLSegmentsTableView": {"setSegmentationNode"},
    "qMRMLTableView": {"setMRMLTableNode"},
    "QDoubleSpinBox": {"value"},
    "ctkCollapsibleButton": {"collapsed"},
}
KNOWN_SIGNALS: Dict[str, Set[str]] = {
    "QPushButton": {"clicked()", "clicked(bool)", "toggled(bool)"},
    "QComboBox": {"currentIndexChanged(int)", "activated(int)"},
    "QSpinBox": {"valueChanged(int)"},
    "QCheckBox": {"toggled(bool)", "stateChanged(int)"},
    "QTableWidget": {"cellClicked(int,int)", "itemSelectionChanged()"},
    "qMRMLNodeComboBox": {"currentNodeChanged(vtkMRMLNode*)", "currentNodeChanged(bool)"},
}


def ui_widgets() -> Tuple[Dict[str, str], ET.Element]:
    root = ET.parse(MODULE_DIR / "Resources" / "UI" / "MedSegRWKV.ui").getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}, root


def module_ui_uses() -> Dict[str, List[Tuple[str, str]]]:
    """For each `<x>.ui.<name>` in MedSegRWKV.py, directly or through a local alias
    (`combo = self.ui.modelComboBox`): (member used on it, its first string argument)."""
    tree = ast.parse((MODULE_DIR / "MedSegRWKV.py").read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def widget_name(node: ast.AST) -> str:
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui":
            return node.attr
        return ""

    uses: Dict[str, List[Tuple[str, str]]] = {}
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        aliases = {}
        for node in ast.walk(function):
            if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                    and widget_name(node.value)):
                aliases[node.targets[0].id] = widget_name(node.value)
                uses.setdefault(widget_name(node.value), [])
        for node in ast.walk(function):
            loaded_alias = isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
            name = widget_name(node) or (aliases.get(node.id, "") if loaded_alias else "")
            parent = parents.get(node)
            if not name or isinstance(parent, ast.Assign) and parent.value is node and name in aliases.values():
                continue
            member, argument = "", ""
            if isinstance(parent, ast.Attribute) and parent.value is node:
                member = parent.attr
                call = parents.get(parent)
                if isinstance(call, ast.Call) and call.args and isinstance(call.args[0], ast.Constant):
                    argument = str(call.args[0].value)
            uses.setdefault(name, []).append((member, argument))
    return uses


def test_every_widget_the_module_touches_is_in_the_ui_with_the_expected_class() -> None:
    declared, _ = ui_widgets()
    uses = module_ui_uses()
    assert set(uses) | set(PARAMETERS) == set(WIDGETS), "ui_contract.WIDGETS and MedSegRWKV.py disagree"
    for name, cls in WIDGETS.items():
        assert declared.get(name) == cls, f"{name}: the .ui has {declared.get(name)}, the module expects {cls}"
        for member, argument in uses.get(name, []):
            assert member in KNOWN_API[cls], f"{name}.{member} is not part of the {cls} API"
            if member == "connect":
                assert argument in KNOWN_SIGNALS[cls], f"{name} ({cls}) has no signal {argument}"


def test_widgets_bound_to_the_parameter_node_name_its_fields() -> None:
    _, root = ui_widgets()
    bound = {w.get("name"): w.findtext("property[@name='SlicerParameterName']/string") for w in root.iter("widget")
             if w.find("property[@name='SlicerParameterName']") is not None}
    assert bound == PARAMETERS
    tree = ast.parse((MODULE_DIR / "MedSegRWKV.py").read_text(encoding="utf-8"))
    wrapper = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "MedSegRWKVParameterNode")
    fields = {n.target.id for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    assert set(PARAMETERS.values()) <= fields


def test_ui_file_is_complete() -> None:
    declared, root = ui_widgets()
    assert root.find("widget").get("class") == "qMRMLWidget" and root.findtext("class") == "MedSegRWKV"
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    assert {cls for cls in declared.values() if not cls.startswith("Q")} <= custom
    scene_receivers = {c.findtext("receiver") for c in root.iter("connection")
                       if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                       and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert scene_receivers == {n for n, cls in declared.items() if cls.startswith("qMRML") and n != "MedSegRWKV"}
    table = next(w for w in root.iter("widget") if w.get("name") == "qualityTable")
    headers = [c.find("property/string").text for c in table.findall("column")]
    assert headers == list(quality.COLUMNS)


def test_cmake_lists_every_module_file_and_bundles_backend_and_sample(tmp_path: Path) -> None:
    if not (shutil.which("cmake") and shutil.which("cc") and shutil.which("c++")):
        pytest.skip("cmake and a C/C++ compiler are needed to configure the extension")
    stub = tmp_path / "slicer"
    stub.mkdir()
    (stub / "empty.cmake").write_text("")
    (stub / "SlicerConfig.cmake").write_text(textwrap.dedent("""
        # A stand-in for Slicer's build tree: records what the extension hands to Slicer's macros.
        set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
        set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
        set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
        set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)
        set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR ${Slicer_QTSCRIPTEDMODULES_LIB_DIR})
        set(BUILD_TESTING ON)
        function(slicerMacroBuildScriptedModule)
          cmake_parse_arguments(M "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
          foreach(f ${M_SCRIPTS} ${M_RESOURCES})
            file(APPEND ${CMAKE_BINARY_DIR}/listed.txt "${f}\\n")
          endforeach()
        endfunction()
        function(slicer_add_python_unittest)
          cmake_parse_arguments(M "" "SCRIPT" "" ${ARGN})
          file(APPEND ${CMAKE_BINARY_DIR}/unittests.txt "${M_SCRIPT}\\n")
        endfunction()
    """))
    build = tmp_path / "build"
    run = subprocess.run(["cmake", "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={stub}"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    listed = set((build / "listed.txt").read_text().split())
    expected = {str(p.relative_to(MODULE_DIR)) for p in module_sources()}
    expected |= {"Resources/UI/MedSegRWKV.ui", "Resources/Icons/MedSegRWKV.png", terminology.TERMINOLOGY_FILE}
    assert listed == expected and all((MODULE_DIR / f).is_file() for f in listed)
    assert (build / "unittests.txt").read_text().split() == ["MedSegRWKV.py"]
    module_dir = build / "lib" / "Slicer-5.8" / "qt-scripted-modules"
    bundled = dependencies.find_bundled_backend(module_dir)
    assert bundled is not None and not bundled.checkout and bundled.path == module_dir / "MedSegRWKVBackend"
    assert (bundled.path / "medsegrwkv" / "engine" / "server.py").is_file()
    assert not list(bundled.path.rglob("__pycache__"))
    sample = dependencies.find_sample_dicom(module_dir)
    assert sample is not None and len(list(sample.iterdir())) == len(list(
        (sample_data_dir() / "SCD0000101" / "dicom").iterdir()))
