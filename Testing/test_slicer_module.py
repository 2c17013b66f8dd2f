"""MedSegRWKV.py against Slicer's own libraries (PyPI `slicer-core`: MRML, application logic and
the Volumes, Segmentations, Sequences, Terminologies, Markups, Tables, Plots, SubjectHierarchy,
Transforms and Data logics), with the real worker (`medsegrwkv engine` in this Python).

Only the GUI is stubbed (Testing/slicer_scene.py). The tests share one scene and run in order, as
a user would: the bundled Sunnybrook cine as a sequence, an ACDC volume with a markups ROI,
segment -> import -> compare with the command line's labelmap in world RAS (the oblique cine under
a parent transform too), re-import, click correction and undo, grading into table and plot nodes,
File > Close Scene and everything again, a node count around a full run; then the whole cine:
Segment all phases + function into a segmentation sequence that follows the cine's browser, the
results table and volume-time plot, recompute from edited segments, cancel and re-run.
What needs Qt (widgets, Segment Editor hand-off, layouts) stays in the module's self-test.
"""

from __future__ import annotations

import collections
import shutil
import sys
import types
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from vtk.util.numpy_support import vtk_to_numpy

from cli_helpers import run_cli
from conftest import ACDC, require
from medsegrwkv.io import read_study, sample_data_dir
from medsegrwkv.nets.registry import DEFAULT_MODELS
from medsegrwkv.weights import load_manifest

pytest.importorskip("slicer_core", reason="slicer-core (requirements.txt) is not installed")
import slicer_scene  # noqa: E402

slicer = slicer_scene.start()
sys.path.insert(0, str(slicer_scene.MODULE_DIR))
import MedSegRWKV  # noqa: E402
from MedSegRWKVLib import terminology  # noqa: E402
from MedSegRWKVLib.ui_contract import WIDGETS  # noqa: E402

MODEL = "unet2d"  # the fast model: this file checks the glue, not the networks (test_segment.py does)
SAMPLE = sample_data_dir() / "SCD0000101" / "dicom"
ACDC_IMAGE = ACDC / "patient001" / "patient001_frame01.nii.gz"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# A rotation of 20 degrees about a tilted axis and a shift: the cine is placed under it.
OBLIQUE = np.array([[0.94, -0.32, 0.11, 12.0], [0.33, 0.94, -0.06, -7.5], [-0.08, 0.09, 0.99, 30.0], [0, 0, 0, 1]])
Scene = Dict[str, Any]


# -- helpers ----------------------------------------------------------------------------------------
def matrix(m) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def orthonormal(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m[:3, :3])
    out = m.copy()
    out[:3, :3] = u @ vt
    return out


def read_volume(path: Path, node_class: str = "vtkMRMLScalarVolumeNode"):
    """A volume read by Slicer's own reader into a node outside the scene."""
    node = slicer.mrmlScene.CreateNodeByClass(node_class)
    node.UnRegister(None)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node), path
    return node


def load_cine(tmp: Path):
    """The bundled cine as Slicer's DICOM import gives it: a sequence of phases (trigger time in
    ms) shown through a browser's proxy volume."""
    study = read_study(SAMPLE)
    sequence = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", "SCD0000101 cine")
    sequence.SetIndexName("time")
    sequence.SetIndexUnit("ms")
    for p, image in enumerate(study.phases):
        path = tmp / f"phase{p}.nrrd"
        sitk.WriteImage(image, str(path))
        sequence.SetDataNodeAtValue(read_volume(path), f"{study.trigger_times[p]:g}")
    browser = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "SCD0000101 cine")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(browser)
    return browser, browser.GetProxyNode(sequence)


def load_acdc():
    """An ACDC volume loaded as File > Add Data does (display and storage nodes included)."""
    return slicer.modules.volumes.logic().AddArchetypeVolume(str(require(ACDC_IMAGE)), "patient001 ED")


def run(logic, request: Dict[str, Any]) -> Any:
    answer = logic.request(request, timeout=600)
    assert answer.type == "result", answer.text
    return answer


def segment(env: Scene, volume, roi=None) -> Tuple[Any, Dict[str, Any]]:
    """Segment through the Logic and import through the widget, as the Segment button does."""
    request, folder = env["logic"].segmentRequest(volume, roi, MODEL, "cpu", False)
    answer = run(env["logic"], request)
    env["widget"].onSegmented(answer, volume, request["output"])
    shutil.rmtree(folder)
    return answer, request


def cli_labelmap(tmp: Path, source: Path, *options: str) -> sitk.Image:
    output = tmp / f"cli{len(list(tmp.glob('cli*')))}.nrrd"
    done = run_cli("segment", str(source), "-o", str(output), "--model", MODEL, "--device", "cpu", *options)
    assert done.returncode == 0, done.stderr
    return sitk.ReadImage(str(output))


def to_world(node) -> np.ndarray:
    """Node coordinates -> world RAS, through the node's linear parent transform."""
    toWorld = vtk.vtkMatrix4x4()
    if node.GetParentTransformNode() is not None:
        node.GetParentTransformNode().GetMatrixTransformToWorld(toWorld)
    return matrix(toWorld)


def segment_world_points(segmentationNode, segmentId: str) -> np.ndarray:
    """World RAS of every voxel of the segment, from its own stored labelmap geometry."""
    image = slicer.vtkOrientedImageData()
    assert slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentationNode, segmentId, image, False)
    dims = image.GetDimensions()
    values = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    layer_value = segmentationNode.GetSegmentation().GetSegment(segmentId).GetLabelValue()
    kji = np.argwhere(values == layer_value)
    extent = image.GetExtent()
    ijk = kji[:, ::-1] + np.array([extent[0], extent[2], extent[4]])
    imageToNode = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(imageToNode)
    homogeneous = np.c_[ijk, np.ones(len(ijk))]
    return (to_world(segmentationNode) @ matrix(imageToNode) @ homogeneous.T).T[:, :3]


def assert_same_as_cli(segmentationNode, labels: List[Dict[str, Any]], cli: sitk.Image, sceneToWorld: np.ndarray) -> None:
    """Each segment holds exactly the voxels the command line labelled, at the same world place:
    the CLI labelmap's voxels (LPS file geometry) are put into world RAS by the transform the
    volume sits under, the segment's by its own geometry and parent transform."""
    direction = np.array(cli.GetDirection()).reshape(3, 3) * np.array(cli.GetSpacing())
    ijkToLps = np.eye(4)
    ijkToLps[:3, :3], ijkToLps[:3, 3] = direction, cli.GetOrigin()
    worldToCliIjk = np.linalg.inv(sceneToWorld @ LPS_TO_RAS @ ijkToLps)
    array = sitk.GetArrayFromImage(cli)
    for spec in terminology.segment_specs(labels):
        world = segment_world_points(segmentationNode, spec.segment_id)
        ijk = (worldToCliIjk @ np.c_[world, np.ones(len(world))].T).T[:, :3]
        assert np.abs(ijk - np.round(ijk)).max() < 1e-3, f"{spec.name} voxels are off the CLI's grid"
        mine = {tuple(v) for v in np.round(ijk).astype(int)}
        theirs = {tuple(v) for v in np.argwhere(array == spec.value)[:, ::-1]}
        assert mine == theirs and mine, (spec.name, len(mine), len(theirs), len(mine ^ theirs))


def node_classes() -> collections.Counter:
    scene = slicer.mrmlScene
    return collections.Counter(scene.GetNthNode(i).GetClassName() for i in range(scene.GetNumberOfNodes()))


def pump(widget) -> None:
    """What the QTimer does in Slicer: poll the worker until the running job has finished."""
    while widget.job is not None:
        widget.onPoll()


def masks(segmentationNode, volume) -> Dict[str, np.ndarray]:
    return {segmentId: slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volume).astype(bool)
            for segmentId in segmentationNode.GetSegmentation().GetSegmentIDs()}


def start_correcting(env: Scene, volume, segmentationNode, segmentId: str) -> None:
    widget = env["widget"]
    spec = next(s for s in terminology.segment_specs(env["labels"]) if s.segment_id == segmentId)
    widget.ui.correctSegmentComboBox.currentData = f"{spec.value} {spec.segment_id}"
    request, folder = env["logic"].loadImageRequest(volume)
    widget.onImageLoaded(run(env["logic"], request), volume, segmentationNode)
    shutil.rmtree(folder)


def click(env: Scene, volume, kji: Tuple[int, int, int], positive: bool) -> None:
    """Place a point at a voxel centre, as the user does with Add / Remove region."""
    ijk = np.array([kji[2], kji[1], kji[0], 1.0])
    world = matrix(env["logic"].ijkToWorld(volume)) @ ijk
    env["logic"].pointList(positive).AddControlPointWorld(*world[:3])
    pump(env["widget"])


def boundary_voxel(inside: np.ndarray, outside: np.ndarray) -> Tuple[int, int, int]:
    """A voxel of `outside` next to `inside` on the same slice (k), nearest the inside's centre."""
    grown = inside.copy()
    grown[:, 1:, :] |= inside[:, :-1, :]
    grown[:, :-1, :] |= inside[:, 1:, :]
    grown[:, :, 1:] |= inside[:, :, :-1]
    grown[:, :, :-1] |= inside[:, :, 1:]
    candidates = np.argwhere(grown & outside)
    centre = np.argwhere(inside).mean(axis=0)
    return tuple(int(v) for v in candidates[np.argmin(((candidates - centre) ** 2).sum(axis=1))])


# -- the scene ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[Scene]:
    logic = MedSegRWKV.MedSegRWKVLogic()
    widget = MedSegRWKV.MedSegRWKVWidget(types.SimpleNamespace(isEntered=True))
    widget.ui = slicer_scene.fake_ui(WIDGETS)
    widget.ui.modelComboBox.currentIndex = -1
    widget.ui.correctSegmentComboBox.count = 0
    widget.ui.deviceComboBox.itemData.return_value = "cpu"
    widget.timer = widget.ui.progressBar  # anything with start() and stop(): polling is done by pump()
    widget.logic = logic
    widget.observeScene()
    info = run(logic, {"op": "info"})
    widget.info = info.result
    try:
        yield {"logic": logic, "widget": widget, "tmp": tmp_path_factory.mktemp("scene"),
               "labels": load_manifest(MODEL)["labels"]}
    finally:
        logic.shutdown()


def test_every_segments_terminology_is_found_by_slicers_terminology_logic(env: Scene) -> None:
    terminologies = slicer.modules.terminologies.logic()
    for name in (DEFAULT_MODELS["segmentation"], DEFAULT_MODELS["refinement"], MODEL):
        for spec in terminology.segment_specs(load_manifest(name)["labels"]):
            entry = slicer.vtkSlicerTerminologyEntry()
            assert terminologies.DeserializeTerminologyEntry(spec.terminology, entry)
            category, kind, region = entry.GetCategoryObject(), entry.GetTypeObject(), entry.GetRegionObject()
            found = terminologies.FindTerminologyNames(
                category.GetCodingSchemeDesignator(), category.GetCodeValue(), kind.GetCodingSchemeDesignator(),
                kind.GetCodeValue(), "", "", [])
            assert entry.GetTerminologyContextName() in found, (spec.name, found)
            if region.GetCodeValue():
                assert entry.GetRegionContextName() in terminologies.FindRegionContextNames(
                    region.GetCodingSchemeDesignator(), region.GetCodeValue(), "", "", [])
    # why the module ships a list: Slicer's own lists (loaded from their JSON files) lack the myocardium
    assert terminologies.FindTerminologyNames("SCT", "123037004", "SCT", "74281007", "", "", []) == (
        terminology.CATEGORY_TYPE_CONTEXT,)
    assert "Segmentation category and type - DICOM master list" in terminologies.FindTerminologyNames(
        "SCT", "123037004", "SCT", "87878005", "", "", [])


def test_cine_phase_segmented_under_an_oblique_transform_matches_the_cli(env: Scene) -> None:
    browser, volume = load_cine(env["tmp"])
    env["browser"], env["cine"] = browser, volume
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "oblique")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(orthonormal(OBLIQUE)))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    widget = env["widget"]
    widget._parameterNode.inputVolume = volume
    widget.ui.phaseSpinBox.setRange.assert_called_with(1, 2)  # the panel followed the parameter node
    browser.SetSelectedItemNumber(1)  # the ES phase: answers must say phase 1, not 0
    answer, request = segment(env, volume)
    assert request["cine_phase"] == 1
    assert answer.result["phases"] == [1] and answer.result["volumes_ml"][0]["phase"] == 1
    segmentationNode = widget._parameterNode.outputSegmentation
    assert segmentationNode is not None and segmentationNode.GetParentTransformNode() is transform
    cli = cli_labelmap(env["tmp"], SAMPLE, "--phase", "1")
    assert_same_as_cli(segmentationNode, answer.result["labels"], cli, to_world(volume))


def test_acdc_volume_with_a_markups_roi_matches_the_cli_and_reimport_replaces(env: Scene) -> None:
    volume = load_acdc()
    widget = env["widget"]
    widget._parameterNode.inputVolume = volume
    widget._parameterNode.outputSegmentation = None
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Heart ROI")
    env["logic"].fitRoi(volume, roi)
    roi.SetSize(*(np.array(roi.GetSize()) * [0.7, 0.7, 1.2]))  # shrunk in plane onto the heart
    widget._parameterNode.roi = roi
    answer, request = segment(env, volume, roi)
    box = request["roi"]
    assert answer.result["roi"] == box and box[:2] != [0, 0]
    segmentationNode = widget._parameterNode.outputSegmentation
    cli = cli_labelmap(env["tmp"], ACDC_IMAGE, "--roi", ",".join(map(str, box)))
    assert_same_as_cli(segmentationNode, answer.result["labels"], cli, np.eye(4))

    mine = segmentationNode.GetSegmentation().AddEmptySegment("user", "my notes")
    before = node_classes()
    answer, _ = segment(env, volume, roi)  # into the same segmentation: replaces its three segments
    assert node_classes() == before
    ids = list(segmentationNode.GetSegmentation().GetSegmentIDs())
    assert sorted(ids) == sorted([mine] + [s.segment_id for s in terminology.segment_specs(env["labels"])])
    assert_same_as_cli(segmentationNode, answer.result["labels"], cli, np.eye(4))
    for spec in terminology.segment_specs(answer.result["labels"]):
        tag = vtk.mutable("")
        assert segmentationNode.GetSegmentation().GetSegment(spec.segment_id).GetTag(terminology.TERMINOLOGY_TAG, tag)
        assert str(tag) == spec.terminology
    env["acdc"], env["acdcSegmentation"] = volume, segmentationNode


def test_click_correction_keeps_segments_exclusive_and_undo_restores(env: Scene) -> None:
    volume, segmentationNode = env["acdc"], env["acdcSegmentation"]
    widget = env["widget"]
    start_correcting(env, volume, segmentationNode, "medsegrwkv_lv_cavity")
    before = masks(segmentationNode, volume)
    lv, myo = before["medsegrwkv_lv_cavity"], before["medsegrwkv_lv_myocardium"]
    target = boundary_voxel(lv, myo)  # myocardium beside the cavity: "the cavity reaches here"
    click(env, volume, target, positive=True)
    assert widget.correction is not None and len(widget.correction.points) == 1, "the point was not used"
    after = masks(segmentationNode, volume)
    assert after["medsegrwkv_lv_cavity"][target], "the positive click did not add its voxel"
    assert not np.array_equal(after["medsegrwkv_lv_myocardium"], myo), "the myocardium gave up nothing"
    stacked = sum(m.astype(int) for m in after.values())
    assert stacked.max() == 1, "segments overlap after the click"
    widget.onUndoPoint()
    restored = masks(segmentationNode, volume)
    for segmentId, mask in before.items():
        assert np.array_equal(restored[segmentId], mask), f"undo did not restore {segmentId}"
    assert widget.logic.pointList(True).GetNumberOfControlPoints() == 0
    widget.stopCorrection("")


def test_grading_fills_the_table_and_plot_nodes_of_the_parameter_node(env: Scene) -> None:
    volume = env["cine"]
    request, folder = env["logic"].gradeRequest(volume, "cpu")
    assert request["cine_phase"] == env["browser"].GetSelectedItemNumber() == 1
    answer = run(env["logic"], request)
    shutil.rmtree(folder)
    assert answer.result["phases"] == [1] and {s["phase"] for s in answer.result["slices"]} == {1}
    env["widget"].onGraded(answer, volume)
    parameters = env["logic"].getParameterNode()
    table, series, chart = parameters.qualityTable, parameters.qualitySeries, parameters.qualityChart
    assert table.GetNumberOfRows() == answer.result["n_slices"]
    assert series.GetTableNode() is table and chart.GetNthPlotSeriesNode(0) is series
    env["widget"].onGraded(answer, volume)  # a second grading reuses the three nodes
    assert (parameters.qualityTable, parameters.qualitySeries, parameters.qualityChart) == (table, series, chart)
    env["plotNodes"] = (table, series, chart)


def test_grading_counts_the_lv_slices_of_the_users_corrected_segmentation(env: Scene) -> None:
    """The study grade's LV slices come from the segmentation as the user left it, not from a model."""
    logic, volume, segmentationNode = env["logic"], env["acdc"], env["acdcSegmentation"]
    empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "no heart yet")
    request, folder = logic.gradeRequest(volume, "cpu", empty)
    shutil.rmtree(folder)
    assert request["labels"] is None, "a segmentation without LV must leave the LV slices to the worker's model"
    slicer.mrmlScene.RemoveNode(empty)

    def lv_slices() -> List[int]:
        labelmap = logic.segmentsLabelmap(segmentationNode, volume)
        return [k for k in range(len(labelmap)) if np.count_nonzero(np.isin(labelmap[k], (2, 3))) >= 20]

    first = lv_slices()[0]
    for segmentId in ("medsegrwkv_lv_cavity", "medsegrwkv_lv_myocardium"):  # the user erases the most basal LV slice
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volume)
        mask[first] = 0
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentationNode, segmentId, volume)
    corrected = lv_slices()
    assert first not in corrected and len(corrected) >= 3
    request, folder = logic.gradeRequest(volume, "cpu", segmentationNode)
    assert request["labels"] and Path(request["labels"]).parent == Path(folder)
    answer = run(logic, request)
    shutil.rmtree(folder)
    study = answer.result["study"]
    assert answer.result["index_axis"] == 2 and study["lv_slices"] == corrected
    assert "the given segmentation" in study["lv_slices_source"]
    env["widget"].onGraded(answer, volume)
    assert "LV slices: slices with left ventricle in the given segmentation" in \
        env["widget"].ui.qualitySummaryLabel.setToolTip.call_args.args[0]


def test_after_close_scene_segment_click_and_grade_work_again_and_add_only_their_outputs(env: Scene) -> None:
    widget = env["widget"]
    closed = widget._parameterNode
    request, folder = env["logic"].segmentRequest(env["cine"], None, MODEL, "cpu", False)
    widget.submit("Segmenting", request, lambda message: widget.onSegmented(message, env["cine"], request["output"]),
                  folder, cancellable=True)  # still running when the scene closes
    slicer.mrmlScene.Clear(0)  # File > Close Scene
    pump(widget)
    assert not slicer.util.getNodesByClass("vtkMRMLSegmentationNode"), "a closed scene's result reached the next"
    status = widget.ui.statusLabel.setText.call_args.args[0]
    assert "cancelled" in status or "not used" in status, status
    parameters = widget._parameterNode
    assert parameters is not closed and slicer.mrmlScene.IsNodePresent(parameters.parameterNode)
    assert parameters.outputSegmentation is None and parameters.qualityTable is None
    volume = load_acdc()
    parameters.inputVolume = volume
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)  # the scene's singleton, made lazily
    before = node_classes()

    answer, _ = segment(env, volume)
    segmentationNode = parameters.outputSegmentation
    assert slicer.mrmlScene.IsNodePresent(segmentationNode)
    start_correcting(env, volume, segmentationNode, "medsegrwkv_lv_cavity")
    current = masks(segmentationNode, volume)
    lv = current["medsegrwkv_lv_cavity"]
    target = boundary_voxel(lv, current["medsegrwkv_lv_myocardium"])
    click(env, volume, target, positive=True)  # the point lists are new nodes: their clicks must count
    assert len(widget.correction.points) == 1, "the click after Close Scene was ignored"
    assert masks(segmentationNode, volume)["medsegrwkv_lv_cavity"][target]
    widget.onUndoPoint()
    assert np.array_equal(masks(segmentationNode, volume)["medsegrwkv_lv_cavity"], lv)
    widget.onAcceptCorrection()
    widget.stopCorrection("")

    outputs = collections.Counter({"vtkMRMLSegmentationNode": 1, "vtkMRMLSegmentationDisplayNode": 1,
                                   "vtkMRMLMarkupsFiducialNode": 2, "vtkMRMLMarkupsFiducialDisplayNode": 2})
    request, folder = env["logic"].gradeRequest(volume, "cpu")
    answer = run(env["logic"], request)
    shutil.rmtree(folder)
    widget.onGraded(answer, volume)
    plotNodes = (parameters.qualityTable, parameters.qualitySeries, parameters.qualityChart)
    assert all(slicer.mrmlScene.IsNodePresent(n) for n in plotNodes), "the plot went into removed nodes"
    assert parameters.qualityTable.GetNumberOfRows() == answer.result["n_slices"]
    outputs.update({"vtkMRMLTableNode": 1, "vtkMRMLPlotSeriesNode": 1, "vtkMRMLPlotChartNode": 1})
    after = node_classes()
    assert after - before == outputs and not before - after, after - before
    print(f"nodes before a full run {sum(before.values())}, after {sum(after.values())}: {dict(after - before)}")


# -- whole cine: segmentation sequence and cardiac function ---------------------------------------------
def cells_by_measure(table) -> Dict[str, List[str]]:
    content = table.GetTable()
    rows = [[content.GetValue(r, c).ToString() for c in range(content.GetNumberOfColumns())]
            for r in range(content.GetNumberOfRows())]
    return {row[0]: row[1:] for row in rows}


def phase_counts(proxy, volume, browser, labels) -> List[Dict[str, int]]:
    """Voxels of each segment that the proxy segmentation shows at each browser item."""
    counts = []
    for item in range(browser.GetNumberOfItems()):
        browser.SetSelectedItemNumber(item)
        shown = masks(proxy, volume)
        counts.append({spec.name: int(shown[spec.segment_id].sum()) for spec in terminology.segment_specs(labels)})
    return counts


def test_whole_cine_gives_a_segmentation_sequence_that_follows_the_browser_and_its_function(env: Scene) -> None:
    """Segment all phases + function on the cine (under an oblique transform): one segmentation per
    phase, synchronized with the cine's browser; the results table, volume-time plot; recompute from
    the segments gives the same numbers, and a smaller LV EDV after erasing part of the ED LV cavity."""
    logic, widget = env["logic"], env["widget"]
    browser, volume = load_cine(env["tmp"])
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "oblique cine")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(orthonormal(OBLIQUE)))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    widget._parameterNode.inputVolume = volume
    widget._parameterNode.outputSegmentation = None
    widget.ui.edSpinBox.setRange.assert_called_with(0, 2)
    widget.ui.edSpinBox.value, widget.ui.esSpinBox.value = 0, 0
    widget.ui.heightSpinBox.value, widget.ui.weightSpinBox.value = 170.0, 70.0
    browser.SetSelectedItemNumber(1)

    request, folder = logic.functionRequest(volume, MODEL, "cpu", False, widget.functionOptions())
    assert len(request["inputs"]) == 2 and browser.GetSelectedItemNumber() == 1, "the shown phase changed"
    answer = run(logic, request)
    result = answer.result
    phases = sitk.GetArrayFromImage(sitk.ReadImage(request["output"]))  # (phase, k, j, i)
    widget.onFunctionMeasured(answer, MedSegRWKV.MEASURING, volume)
    shutil.rmtree(folder)

    parameters = logic.getParameterNode()
    sequence, proxy = parameters.phaseSegmentationSequence, parameters.phaseSegmentation
    assert sequence.GetNumberOfDataNodes() == 2 and browser.IsSynchronizedSequenceNodeID(sequence.GetID())
    assert browser.GetProxyNode(sequence) is proxy and widget._parameterNode.outputSegmentation is proxy
    assert [sequence.GetNthIndexValue(n) for n in range(2)] == [
        browser.GetMasterSequenceNode().GetNthIndexValue(n) for n in range(2)]
    assert proxy.GetParentTransformNode() is transform and browser.GetSelectedItemNumber() == 1
    counts = phase_counts(proxy, volume, browser, result["labels"])
    for item, shown in enumerate(counts):
        expected = {spec.name: int((phases[item] == spec.value).sum()) for spec in terminology.segment_specs(result["labels"])}
        assert shown == expected, (item, shown, expected)
    assert counts[0] != counts[1], "both phases show the same segments"
    segment = proxy.GetSegmentation().GetSegment("medsegrwkv_lv_cavity")
    tag = vtk.mutable("")
    assert segment.GetName() == "LV cavity" and segment.GetTag(terminology.TERMINOLOGY_TAG, tag) and str(tag)

    table = parameters.functionTable
    cells = cells_by_measure(table)
    assert cells["ED phase"][0] == str(result["ed_phase"] + 1) and cells["ES phase"][0] == str(result["es_phase"] + 1)
    assert float(cells["LV EF"][0]) == pytest.approx(result["lv"]["ef_percent"], abs=0.05)
    assert float(cells["RV EF"][0]) == pytest.approx(result["rv"]["ef_percent"], abs=0.05)
    assert float(cells["LV EDV index"][0]) == pytest.approx(result["lv"]["edv_ml_m2"], abs=0.05)
    widget.ui.functionTableView.setMRMLTableNode.assert_called_with(table)
    saved = env["tmp"] / "function.tsv"  # what saving the scene does with the table
    storage = table.CreateDefaultStorageNode()
    storage.SetFileName(str(saved))
    assert storage.WriteData(table)
    reread = slicer.vtkMRMLTableNode()
    reader = slicer.vtkMRMLTableStorageNode()
    reader.SetFileName(str(saved))
    assert reader.ReadData(reread)
    assert cells_by_measure(reread) == cells
    chart, curve = parameters.functionChart, parameters.curveTable
    series = [chart.GetNthPlotSeriesNode(n) for n in range(chart.GetNumberOfPlotSeriesNodes())]
    assert [s.GetName() for s in series] == ["LV cavity", "RV cavity", "LV myocardium"]
    assert all(s.GetTableNode() is curve for s in series) and curve.GetNumberOfRows() == 2
    assert slicer.util.arrayFromTableColumn(curve, series[0].GetYColumnName()).tolist() == [
        row["lv_ml"] for row in result["curve"]]
    master = browser.GetMasterSequenceNode()
    assert series[0].GetXColumnName() == "time (ms)"  # the cine's trigger times: the phase files carry none
    assert slicer.util.arrayFromTableColumn(curve, "time (ms)").tolist() == pytest.approx(
        [float(master.GetNthIndexValue(n)) for n in range(2)], abs=0.01)
    assert cells["ED phase"][2].startswith(f"{round(float(master.GetNthIndexValue(result['ed_phase'])), 2):g} ms")
    plotNodes = (table, curve, chart, *series)

    request, folder = logic.recomputeRequest(volume, widget.functionOptions())
    assert request["labels"] and request["output"] is None and browser.GetSelectedItemNumber() == 1
    again = run(logic, request)
    shutil.rmtree(folder)
    widget.onFunctionMeasured(again, MedSegRWKV.RECOMPUTING, volume)
    assert again.result["lv"]["ef_percent"] == pytest.approx(result["lv"]["ef_percent"], abs=0.01)
    assert again.result["lv"]["edv_ml"] == pytest.approx(result["lv"]["edv_ml"], abs=0.01)
    assert all(slicer.mrmlScene.IsNodePresent(n) for n in plotNodes)
    assert (parameters.functionTable, parameters.curveTable, parameters.functionChart) == plotNodes[:3]

    ed = result["ed_phase"]
    browser.SetSelectedItemNumber(ed)
    lv = masks(proxy, volume)["medsegrwkv_lv_cavity"]
    middle = int(np.median(np.argwhere(lv)[:, 0]))
    erased = int(lv[middle].sum())
    lv[middle] = False  # the user erases the LV cavity on one slice of the ED phase
    slicer.util.updateSegmentBinaryLabelmapFromArray(lv.astype(np.uint8), proxy, "medsegrwkv_lv_cavity", volume)
    browser.SetSelectedItemNumber(1 - ed)
    browser.SetSelectedItemNumber(ed)
    assert int(masks(proxy, volume)["medsegrwkv_lv_cavity"].sum()) == int(lv.sum()), "the edit was not kept"
    request, folder = logic.recomputeRequest(volume, widget.functionOptions())
    edited = run(logic, request)
    shutil.rmtree(folder)
    spacing = np.array(volume.GetSpacing())
    assert edited.result["ed_phase"] == ed
    assert edited.result["lv"]["edv_ml"] == pytest.approx(result["lv"]["edv_ml"] - erased * spacing.prod() / 1000,
                                                          abs=0.05)
    assert edited.result["lv"]["esv_ml"] == pytest.approx(result["lv"]["esv_ml"], abs=0.01)

    before = node_classes()  # the button again: the same sequence, proxy, table and plot nodes are refilled
    widget.modelChoices = [MedSegRWKV.panel.Choice(MODEL, MODEL, True)]
    widget.ui.modelComboBox.currentIndex = 0
    try:
        widget.onFunctionButton()
        widget.ui.functionButton.setText.assert_called_with("Cancel")
        widget.onRecomputeFunction()  # another function button while one runs: ignored
        widget.onFunctionButton()  # its own button again: Cancel
        pump(widget)
        status = widget.ui.statusLabel.setText.call_args.args[0]
        assert status == f"{MedSegRWKV.MEASURING} cancelled." or status.startswith("Measured"), status
        print(f"Cancel pressed right after the start: {status}")
        assert node_classes() == before
        widget.ui.functionButton.setText.assert_called_with(MedSegRWKV.FUNCTION_BUTTON)

        widget.onFunctionButton()
        assert widget.job is not None and widget.job.action == MedSegRWKV.MEASURING, widget.ui.statusLabel.setText.call_args
        pump(widget)
        status = widget.ui.statusLabel.setText.call_args.args[0]
        assert status.startswith(f"Measured 2 phases from {MODEL}") and "LV EF" in status, status
    finally:
        widget.ui.modelComboBox.currentIndex = -1
        widget.modelChoices = []
    assert node_classes() == before
    assert phase_counts(proxy, volume, browser, result["labels"]) == counts
