"""MedSegRWKV: segment cardiac cine MRI (LV cavity, LV myocardium, RV cavity) and grade
respiratory-motion artefacts per slice, from Slicer's GUI.

Thin on purpose: every decision lives in MedSegRWKVLib, which is tested without Slicer; this
file moves values between Slicer's nodes and widgets and that library. The heavy work runs in
the `medsegrwkv engine` worker (JSON lines over pipes, polled with a QTimer), so torch is never
imported into Slicer's process and the GUI stays responsive.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import qt
import slicer
import vtk
from slicer import (
    vtkMRMLMarkupsROINode, vtkMRMLPlotChartNode, vtkMRMLPlotSeriesNode, vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode, vtkMRMLSequenceNode, vtkMRMLTableNode,
)
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from MedSegRWKVLib import cardiac, clicks, dependencies, geometry, panel, plots, protocol, quality, terminology
from MedSegRWKVLib.client import UNRESPONSIVE_AFTER_S, EngineClient, engine_command
from MedSegRWKVLib.protocol import Message

MODULE_DIR = Path(__file__).resolve().parent
POLL_INTERVAL_MS = 100
REQUEST_TIMEOUT_S = 900.0  # blocking requests (self-test) only; the GUI never blocks
STARTING = "Starting the backend worker"
REFINING = "Refining"
MEASURING = "Segmenting all phases"
RECOMPUTING = "Recomputing the function"
FUNCTION_BUTTON = "Segment all phases + function"
RECOMPUTE_BUTTON = "Recompute from edited segments"
POINT_LISTS = {True: ("MedSegRWKV add", (0.2, 0.8, 0.2)), False: ("MedSegRWKV remove", (0.9, 0.2, 0.2))}
SHORTCUTS = {"P": "onPositivePoint", "N": "onNegativePoint", "U": "onUndoPoint", "Return": "onAcceptCorrection"}


class MedSegRWKV(ScriptedLoadableModule):
    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedSegRWKV"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedSegRWKV developers"]
        self.parent.helpText = (
            "Segments the LV cavity, LV myocardium and RV cavity of a short-axis cine MRI volume and grades "
            "respiratory-motion artefacts of every slice (5-point score: mild 4-5, moderate 3, severe 1-2). "
            "Runs locally, on the CUDA GPU when there is one. The work is done by the medsegrwkv backend "
            "worker; 'About backend' shows its versions and device.")
        self.parent.acknowledgementText = (
            "Sample data: Sunnybrook Cardiac Data (Radau et al., MIDAS Journal 2009, CC0). Bundled weights were "
            "trained on ACDC (Bernard et al., IEEE TMI 2018, CC BY-NC-SA 4.0): research and non-commercial use.")


# -- logic -----------------------------------------------------------------------------------------
@parameterNodeWrapper
class MedSegRWKVParameterNode:
    """The panel's scene state, saved with the scene; File > Close Scene starts a new one, so no
    node of a closed scene is reused (MRML reuses node IDs). The selectors and the TTA box are bound
    to it by their SlicerParameterName in the .ui; the plots' and whole-cine nodes are reused through it."""

    inputVolume: vtkMRMLScalarVolumeNode
    roi: vtkMRMLMarkupsROINode
    outputSegmentation: vtkMRMLSegmentationNode
    tta: bool = False
    qualityTable: vtkMRMLTableNode
    qualitySeries: vtkMRMLPlotSeriesNode
    qualityChart: vtkMRMLPlotChartNode
    # Whole cine: the segmentation sequence (synchronized with the cine's browser) and its proxy,
    # the results table and the volume-time plot.
    phaseSegmentationSequence: vtkMRMLSequenceNode
    phaseSegmentation: vtkMRMLSegmentationNode
    functionTable: vtkMRMLTableNode
    curveTable: vtkMRMLTableNode
    lvSeries: vtkMRMLPlotSeriesNode
    rvSeries: vtkMRMLPlotSeriesNode
    myoSeries: vtkMRMLPlotSeriesNode
    functionChart: vtkMRMLPlotChartNode


class MedSegRWKVLogic(ScriptedLoadableModuleLogic):
    """The worker's lifetime, backend set-up and the conversions between nodes and files."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._client: Optional[EngineClient] = None
        slicer.app.connect("aboutToQuit()", self.shutdown)
        self.loadTerminology()

    def getParameterNode(self) -> MedSegRWKVParameterNode:
        return MedSegRWKVParameterNode(super().getParameterNode())

    @staticmethod
    def loadTerminology() -> None:
        """Slicer's terminology lists lack the myocardium: load the module's list (once per session)."""
        terminologies = slicer.modules.terminologies.logic()
        if not terminologies.IsTerminologyContextLoaded(terminology.CATEGORY_TYPE_CONTEXT):
            if not terminologies.LoadTerminologyFromFile(str(MODULE_DIR / terminology.TERMINOLOGY_FILE)):
                logging.error(f"MedSegRWKV: could not load {terminology.TERMINOLOGY_FILE}")

    # backend set-up ---------------------------------------------------------------------------
    def setupPlan(self, force: bool = False) -> dependencies.SetupPlan:
        pytorchUtils = importlib.util.find_spec("PyTorchUtils") is not None  # the PyTorch extension's module
        return dependencies.plan_setup(
            dependencies.installed_version("torch"), dependencies.installed_version(dependencies.BACKEND_DIST),
            dependencies.find_bundled_backend(MODULE_DIR), pytorchUtils, force_backend=force)

    def setupBackend(self, force: bool = False, interactive: bool = True) -> dependencies.SetupPlan:
        """Install what the plan asks for; raises RuntimeError with the sentence to show."""
        plan = self.setupPlan(force)
        if plan.ready:
            return plan
        if plan.blocked:
            raise RuntimeError(plan.message)
        if interactive and not slicer.util.confirmOkCancelDisplay(plan.message, "MedSegRWKV set-up"):
            raise RuntimeError("The backend set-up was cancelled.")
        if plan.torch == "install":
            import PyTorchUtils

            bundled = dependencies.find_bundled_backend(MODULE_DIR)
            requirement = bundled.torch_requirement if bundled else None
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                             torchVersionRequirement=requirement) is None:
                raise RuntimeError("PyTorch could not be installed; install it with the PyTorch Utils module "
                                   "and try again.")
        if plan.install_backend:
            slicer.util.pip_install(plan.pip_args)
        importlib.invalidate_caches()  # let importlib.metadata see the new distributions
        self.shutdown()  # the next request starts a worker with the new packages
        after = self.setupPlan()
        if not after.ready:
            raise RuntimeError(after.message or "The backend is still not ready; see the Python console.")
        return after

    # worker ---------------------------------------------------------------------------------------
    @property
    def client(self) -> EngineClient:
        if self._client is None:
            python = shutil.which("PythonSlicer") or sys.executable
            self._client = EngineClient(engine_command(python), env=slicer.util.startupEnvironment())
        return self._client

    def send(self, request: Dict[str, Any]) -> int:
        return self.client.send(request)

    def poll(self) -> List[Message]:
        messages = self.client.poll()
        if self.client.unresponsive():
            messages += self.client.restart(f"it sent nothing for {UNRESPONSIVE_AFTER_S:.0f} s while working.")
        return messages

    def cancel(self, requestId: int) -> None:
        self.client.send(protocol.cancel_request(requestId))

    def request(self, request: Dict[str, Any], timeout: float = REQUEST_TIMEOUT_S) -> Message:
        """Blocking request for the self-test; keeps the GUI painting."""
        return self.client.wait(self.send(request), timeout, idle=slicer.app.processEvents)

    def restartWorker(self, reason: str) -> List[Message]:
        return self.client.restart(reason)

    def workerLog(self) -> str:
        return self._client.log_tail() if self._client is not None else ""

    def shutdown(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # nodes <-> files ------------------------------------------------------------------------------
    @classmethod
    def writeVolume(cls, volume) -> Tuple[str, str]:
        """The volume (its current sequence item) as an uncompressed NRRD in a new temporary folder."""
        folder = tempfile.mkdtemp(prefix="medsegrwkv-")
        path = str(Path(folder) / "input.nrrd")
        cls.writeVolumeFile(volume, path)
        return folder, path

    @staticmethod
    def writeVolumeFile(volume, path: str) -> str:
        """A volume node (in the scene or not) as an uncompressed NRRD at `path`."""
        storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        try:
            storage.SetFileName(path)
            storage.UseCompressionOff()
            if not storage.WriteData(volume):
                raise RuntimeError(f"Could not write {volume.GetName()} to {path}.")
        finally:
            slicer.mrmlScene.RemoveNode(storage)
        return path

    @staticmethod
    def ijkToWorld(volume) -> vtk.vtkMatrix4x4:
        """Voxel index -> world RAS, through a linear parent transform if there is one."""
        ijkToRas = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijkToRas)
        transformNode = volume.GetParentTransformNode()
        if transformNode is None:
            return ijkToRas
        toWorld = vtk.vtkMatrix4x4()
        if not transformNode.GetMatrixTransformToWorld(toWorld):
            raise RuntimeError(f"{volume.GetName()} is under a non-linear transform; harden it first.")
        return geometry.multiplied(toWorld, ijkToRas)

    def roiBox(self, volume, roi) -> Optional[List[int]]:
        if roi is None:
            return None
        box = geometry.roi_to_voxel_box(geometry.inverted(self.ijkToWorld(volume)), roi.GetObjectToWorldMatrix(),
                                        roi.GetSize(), volume.GetImageData().GetDimensions())
        return box.as_list()

    def segmentRequest(self, volume, roi, model: Optional[str], device: str, tta: bool) -> Tuple[Dict[str, Any], str]:
        box = self.roiBox(volume, roi)
        folder, path = self.writeVolume(volume)
        return protocol.segment_request(path, str(Path(folder) / "labels.nrrd"), model, device, tta, box,
                                        cine_phase=self.cinePhase(volume)), folder

    def gradeRequest(self, volume, device: str, segmentationNode=None) -> Tuple[Dict[str, Any], str]:
        """With a segmentation whose LV segments reach into the volume (the user's, corrected or not),
        the study grade counts the slices through that LV; else the worker finds them with its model."""
        folder, path = self.writeVolume(volume)
        labels = None
        if segmentationNode is not None:
            array = self.segmentsLabelmap(segmentationNode, volume)
            if cardiac.holds_left_ventricle(array):
                labels = self.writeLabelmapFile(volume, array, str(Path(folder) / "labels.nrrd"))
        return protocol.grade_request(path, device=device, cine_phase=self.cinePhase(volume), labels=labels), folder

    @staticmethod
    def readLabelmap(path: str) -> np.ndarray:
        """The worker's labelmap, (k, j, i), read by Slicer's volume reader into a node that never
        joins the scene, so an import leaves no display or storage node behind."""
        labelNode = slicer.vtkMRMLLabelMapVolumeNode()
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(path)
        if not storage.ReadData(labelNode):
            raise RuntimeError(f"Could not read the worker's labelmap {path}.")
        return slicer.util.arrayFromVolume(labelNode).copy()

    def importSegmentation(self, volume, segmentationNode, labelmapPath: str, labels: List[Dict[str, Any]]):
        """Named, coloured segments with terminology from the worker's labelmap; segments of the same
        names are replaced, any others the user made are kept."""
        array = self.readLabelmap(labelmapPath)
        if segmentationNode is None:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                                  f"{volume.GetName()} heart")
        segmentationNode.CreateDefaultDisplayNodes()
        self.fillSegments(volume, segmentationNode, array, labels)
        segmentationNode.CreateClosedSurfaceRepresentation()
        return segmentationNode

    @staticmethod
    def fillSegments(volume, segmentationNode, array: np.ndarray, labels: List[Dict[str, Any]]) -> None:
        """The labels' segments (name, colour, terminology) set from a labelmap array in the
        volume's geometry; the segmentation follows the volume's parent transform."""
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentationNode.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
        segmentation = segmentationNode.GetSegmentation()
        for spec in terminology.segment_specs(labels):
            if segmentation.GetSegment(spec.segment_id) is None:
                segmentation.AddEmptySegment(spec.segment_id, spec.name, spec.color)
            segment = segmentation.GetSegment(spec.segment_id)
            segment.SetName(spec.name)
            segment.SetColor(*spec.color)
            segment.SetNameAutoGenerated(False)
            segment.SetColorAutoGenerated(False)
            segment.SetTag(terminology.TERMINOLOGY_TAG, spec.terminology)
            slicer.util.updateSegmentBinaryLabelmapFromArray((array == spec.value).astype(np.uint8),
                                                             segmentationNode, spec.segment_id, volume)

    def loadImageRequest(self, volume) -> Tuple[Dict[str, Any], str]:
        folder, path = self.writeVolume(volume)
        return protocol.load_image_request(path, cine_phase=self.cinePhase(volume)), folder

    @staticmethod
    def pointList(positive: bool):
        """The markups list for positive or negative points (created once, distinct colours)."""
        name, color = POINT_LISTS[positive]
        node = slicer.mrmlScene.GetFirstNodeByName(name)
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor(*color)
            node.GetDisplayNode().SetColor(*color)
            node.GetDisplayNode().SetPointLabelsVisibility(False)
        return node

    def lastPointIjk(self, volume, pointList) -> Tuple[float, float, float]:
        ras = [0.0, 0.0, 0.0]
        pointList.GetNthControlPointPositionWorld(pointList.GetNumberOfControlPoints() - 1, ras)
        return geometry.transform_point(geometry.inverted(self.ijkToWorld(volume)), ras)

    def fitRoi(self, volume, roi) -> None:
        objectToWorld, size = geometry.fit_roi_to_volume(self.ijkToWorld(volume),
                                                         volume.GetImageData().GetDimensions())
        worldToNode = vtk.vtkMatrix4x4()
        if roi.GetParentTransformNode() is not None:
            roi.GetParentTransformNode().GetMatrixTransformFromWorld(worldToNode)
        roi.SetAndObserveObjectToNodeMatrix(geometry.multiplied(worldToNode, objectToWorld))
        roi.SetSize(*size)

    def jumpToSlice(self, volume, axis: int, index: int) -> None:
        x, y, z = geometry.slice_centre_world(self.ijkToWorld(volume), volume.GetImageData().GetDimensions(),
                                              axis, index)
        slicer.modules.markups.logic().JumpSlicesToLocation(x, y, z, True)

    @staticmethod
    def sequenceBrowser(volume):
        if volume is None:
            return None
        return slicer.modules.sequences.logic().GetFirstBrowserNodeForProxyNode(volume)

    def cinePhase(self, volume) -> Optional[int]:
        """The sequence item a cine's proxy volume shows (the worker gets that one volume only)."""
        browser = self.sequenceBrowser(volume)
        return browser.GetSelectedItemNumber() if browser is not None else None

    def showQualityPlot(self, result: Dict[str, Any]):
        """Expected score against slice in Slicer's plot view."""
        return self.showPlot(quality.plot(result), "qualityTable", "qualityChart", {"Expected score": "qualitySeries"})

    def parameterNodeNode(self, field: str, className: str, name: str):
        """The node kept in the parameter node's `field`, made anew when the scene has none (after a
        close, or when the user deleted it)."""
        parameters = self.getParameterNode()
        node = getattr(parameters, field)
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass(className, name)
            setattr(parameters, field, node)
        return node

    def showPlot(self, plot: plots.Plot, tableField: str, chartField: str, seriesFields: Dict[str, str]):
        """A Plot in table, plot-series and chart nodes kept in the parameter node (reused on the next
        call), shown in the layout's plot view; returns the chart."""
        table = self.parameterNodeNode(tableField, "vtkMRMLTableNode", f"{plot.title} (data)")
        chart = self.parameterNodeNode(chartField, "vtkMRMLPlotChartNode", plot.title)
        slicer.util.updateTableFromArray(table, [np.array(v, dtype=float) for v in plot.columns.values()],
                                         list(plot.columns))
        chart.RemoveAllPlotSeriesNodeIDs()
        for spec in plot.series:
            series = self.parameterNodeNode(seriesFields[spec.name], "vtkMRMLPlotSeriesNode", spec.name)
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName(spec.x)
            series.SetYColumnName(spec.y)
            series.SetPlotType(series.PlotTypeScatter)
            series.SetLineStyle(series.LineStyleSolid if spec.line else series.LineStyleNone)
            series.SetMarkerStyle(series.MarkerStyleCircle)
            series.SetColor(*spec.colour)
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
        chart.SetTitle(plot.title)
        chart.SetXAxisTitle(plot.x_title)
        chart.SetYAxisTitle(plot.y_title)
        chart.SetYAxisRangeAuto(plot.y_range is None)
        if plot.y_range is not None:
            chart.SetYAxisRange(*plot.y_range)
        slicer.modules.plots.logic().ShowChartInLayout(chart)
        return chart

    # whole cine: segmentation sequence and cardiac function -------------------------------------
    def cineBrowser(self, volume):
        browser = self.sequenceBrowser(volume)
        if browser is None or browser.GetNumberOfItems() < 2:
            raise RuntimeError("Cardiac function needs a cine: choose the proxy volume of a sequence with at least "
                               "two phases (a cine DICOM series loads as one).")
        return browser

    def forEachPhase(self, volume, visit: Callable[[int], None]) -> None:
        """Show every phase of the volume's cine in turn (browser item order, as the phase box
        counts), call `visit(item)`, then show the phase that was shown before."""
        browser = self.cineBrowser(volume)
        selected = browser.GetSelectedItemNumber()
        try:
            for item in range(browser.GetNumberOfItems()):
                browser.SetSelectedItemNumber(item)
                visit(item)
        finally:
            browser.SetSelectedItemNumber(selected)

    def writePhases(self, volume, folder: str) -> List[str]:
        """Every phase of the cine as its own NRRD file, in phase order."""
        paths: List[str] = []
        self.forEachPhase(volume, lambda item: paths.append(
            self.writeVolumeFile(volume, str(Path(folder) / f"phase{item:03d}.nrrd"))))
        return paths

    def functionRequest(self, volume, model: Optional[str], device: str, tta: bool,
                        options: Dict[str, Any]) -> Tuple[Dict[str, Any], str]:
        """Segment every phase and measure the function: the phases as files, the 4D labelmap back."""
        folder = tempfile.mkdtemp(prefix="medsegrwkv-")
        try:
            inputs = self.writePhases(volume, folder)
            return protocol.function_request(inputs, output=str(Path(folder) / "phase_labels.nrrd"), model=model,
                                             device=device, tta=tta, **options), folder
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def phaseSegmentations(self, volume) -> Tuple[Any, Any]:
        """(segmentation sequence, its proxy segmentation) made for this volume's cine; (None, None)
        when there are none (not segmented yet, another cine's, or deleted by the user)."""
        parameters = self.getParameterNode()
        sequence, proxy = parameters.phaseSegmentationSequence, parameters.phaseSegmentation
        browser = self.sequenceBrowser(volume)
        if (browser is None or sequence is None or proxy is None
                or not browser.IsSynchronizedSequenceNodeID(sequence.GetID())
                or browser.GetProxyNode(sequence) is not proxy):
            return None, None
        return sequence, proxy

    @staticmethod
    def readPhaseLabelmaps(path: str) -> List[np.ndarray]:
        """The worker's 4D labelmap as one (k, j, i) array per phase, read by Slicer's sequence reader."""
        sequence = slicer.vtkMRMLSequenceNode()
        storage = slicer.vtkMRMLVolumeSequenceStorageNode()
        storage.SetFileName(path)
        if not storage.ReadData(sequence):
            raise RuntimeError(f"Could not read the worker's labelmap {path}.")
        return [slicer.util.arrayFromVolume(sequence.GetNthDataNode(n)).copy()
                for n in range(sequence.GetNumberOfDataNodes())]

    def importPhaseSegmentations(self, volume, labelmapPath: str, labels: List[Dict[str, Any]]):
        """One segmentation per phase (named, coloured segments as importSegmentation makes them) in a
        sequence synchronized with the cine's browser, shown through a proxy segmentation: browsing
        the cine shows each phase's segments, and edits in a phase are saved into it. A second run
        on the same cine refills the same sequence and proxy. Returns the proxy."""
        browser = self.cineBrowser(volume)
        arrays = self.readPhaseLabelmaps(labelmapPath)
        if len(arrays) != browser.GetNumberOfItems():
            raise RuntimeError(f"The worker's labelmap holds {len(arrays)} phases, the cine {browser.GetNumberOfItems()}.")
        master = browser.GetMasterSequenceNode()
        sequence, proxy = self.phaseSegmentations(volume)
        if sequence is None:
            sequence = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", f"{volume.GetName()} heart phases")
        sequence.RemoveAllDataNodes()
        sequence.SetIndexName(master.GetIndexName())
        sequence.SetIndexUnit(master.GetIndexUnit())
        sequence.SetIndexType(master.GetIndexType())
        work = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "MedSegRWKV phase (temporary)")
        try:
            for item, array in enumerate(arrays):
                self.fillSegments(volume, work, array, labels)
                sequence.SetDataNodeAtValue(work, master.GetNthIndexValue(item))  # a copy
        finally:
            slicer.mrmlScene.RemoveNode(work)
        if proxy is None:
            proxy = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume.GetName()} heart (all phases)")
            proxy.CreateDefaultDisplayNodes()
            browser.AddSynchronizedSequenceNodeID(sequence.GetID())
            browser.AddProxyNode(proxy, sequence, False)
            parameters = self.getParameterNode()
            parameters.phaseSegmentationSequence, parameters.phaseSegmentation = sequence, proxy
        browser.SetSaveChanges(sequence, True)  # Segment Editor edits of a phase stay in that phase
        proxy.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
        slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(browser)
        return proxy

    @staticmethod
    def segmentsLabelmap(segmentationNode, volume) -> np.ndarray:
        """The module's segments of `segmentationNode` as they are now, on the volume's voxel grid, as one
        labelmap (k, j, i) in the worker's convention; segments the user deleted are empty."""
        segmentation = segmentationNode.GetSegmentation()
        masks = {segmentId: slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volume)
                 for _, segmentId in cardiac.label_segments() if segmentation.GetSegment(segmentId) is not None}
        return cardiac.labelmap_from_masks(masks, slicer.util.arrayFromVolume(volume).shape)

    def writeLabelmapFile(self, volume, array: np.ndarray, path: str) -> str:
        """A labelmap array (k, j, i) in the volume's voxel grid as an NRRD file."""
        labelNode = slicer.vtkMRMLLabelMapVolumeNode()
        ijkToRas = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijkToRas)
        labelNode.SetIJKToRASMatrix(ijkToRas)
        slicer.util.updateVolumeFromArray(labelNode, array)
        return self.writeVolumeFile(labelNode, path)

    def recomputeRequest(self, volume, options: Dict[str, Any]) -> Tuple[Dict[str, Any], str]:
        """The function of the phases' segments as they are now (after corrections): every phase and
        its segments as files, measured without a model."""
        _, proxy = self.phaseSegmentations(volume)
        if proxy is None:
            raise RuntimeError("Segment all phases first: there is no segmentation sequence for this cine.")
        folder = tempfile.mkdtemp(prefix="medsegrwkv-")
        inputs: List[str] = []
        labelmaps: List[str] = []

        def write(item: int) -> None:
            inputs.append(self.writeVolumeFile(volume, str(Path(folder) / f"phase{item:03d}.nrrd")))
            labelmaps.append(self.writeLabelmapFile(volume, self.segmentsLabelmap(proxy, volume),
                                                    str(Path(folder) / f"labels{item:03d}.nrrd")))

        try:
            self.forEachPhase(volume, write)
            return protocol.function_request(inputs, labels=labelmaps, **options), folder
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def showFunction(self, result: Dict[str, Any], volume=None):
        """The results table (saved with the scene) and the volume-time plot, over the cine's trigger
        times when the volume is a cine's proxy; returns the table."""
        browser = self.sequenceBrowser(volume)
        if browser is not None:
            master = browser.GetMasterSequenceNode()
            times = cardiac.cine_times([master.GetNthIndexValue(n) for n in range(master.GetNumberOfDataNodes())],
                                       master.GetIndexUnit())
            result = cardiac.with_cine_times(result, times)
        table = self.parameterNodeNode("functionTable", "vtkMRMLTableNode", "Cardiac function")
        rows = cardiac.result_rows(result)
        content = vtk.vtkTable()
        for c, name in enumerate(cardiac.COLUMNS):
            column = vtk.vtkStringArray()
            column.SetName(name)
            for row in rows:
                column.InsertNextValue(row.cells[c])
            content.AddColumn(column)
        table.SetAndObserveTable(content)
        table.SetUseColumnNameAsColumnHeader(True)
        self.showPlot(cardiac.curve_plot(result, result.get("labels")), "curveTable", "functionChart",
                      {"LV cavity": "lvSeries", "RV cavity": "rvSeries", "LV myocardium": "myoSeries"})
        return table


# -- widget ----------------------------------------------------------------------------------------
@dataclass
class Job:
    id: int
    action: str  # what the status line says while it runs
    onDone: Callable[[Message], None]
    folder: Optional[str] = None  # temporary files, removed when the job ends
    cancellable: bool = False


class MedSegRWKVWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[MedSegRWKVLogic] = None
        self._parameterNode: Optional[MedSegRWKVParameterNode] = None
        self.ttaDefaulted = False  # the TTA box set from the worker's devices (panel.tta_default) yet
        self._parameterNodeGuiTag = None
        self.shownNodes: Tuple[Any, Any] = (None, None)  # (input, output) the panel was last updated for
        self.job: Optional[Job] = None
        self.info: Optional[Dict[str, Any]] = None
        self.modelChoices: List[panel.Choice] = []
        self.gradeResult: Optional[Dict[str, Any]] = None
        self.gradedVolume = None
        self.correction: Optional[clicks.ClickSession] = None
        self.correctionNodes: Tuple[Any, Any] = (None, None)  # (volume, segmentation) being corrected
        self.shortcuts: List[Any] = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSegRWKV.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedSegRWKVLogic()
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onPoll)

        self.ui.phaseSpinBox.connect("valueChanged(int)", self.onPhaseChanged)
        self.ui.placeRoiButton.connect("clicked(bool)", self.onPlaceRoi)
        self.ui.fitRoiButton.connect("clicked(bool)", self.onFitRoi)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.editSegmentsButton.connect("clicked(bool)", self.onEditSegments)
        self.ui.startCorrectionButton.connect("clicked(bool)", self.onStartCorrection)
        self.ui.positivePointButton.connect("clicked(bool)", self.onPositivePoint)
        self.ui.negativePointButton.connect("clicked(bool)", self.onNegativePoint)
        self.ui.undoPointButton.connect("clicked(bool)", self.onUndoPoint)
        self.ui.acceptCorrectionButton.connect("clicked(bool)", self.onAcceptCorrection)
        self.ui.gradeButton.connect("clicked(bool)", self.onGradeButton)
        self.ui.functionButton.connect("clicked(bool)", self.onFunctionButton)
        self.ui.recomputeFunctionButton.connect("clicked(bool)", self.onRecomputeFunction)
        self.ui.qualityTable.connect("cellClicked(int,int)", self.onQualityRowClicked)
        self.ui.installBackendButton.connect("clicked(bool)", self.onInstallBackend)
        self.ui.restartWorkerButton.connect("clicked(bool)", self.onRestartWorker)
        self.ui.qualityTable.setHorizontalHeaderLabels(list(quality.COLUMNS))
        self.fillDevices()
        self.observeScene()

    def observeScene(self) -> None:
        """Everything the panel keeps in or observes on the scene (also run by the scene test)."""
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.refreshBackend()

    def cleanup(self) -> None:
        self.removeObservers()
        self.timer.stop()
        if self.logic is not None:
            self.logic.shutdown()

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self.clearQuality()
        self.clearFunction()
        if self.correction is not None:
            self.stopCorrection("")
        if self.job is not None and self.job.cancellable:  # its volume is going; so is its result
            self.logic.cancel(self.job.id)

    def closedMeanwhile(self, action: str, volume) -> bool:
        """True (and says so) when the scene was closed while the worker ran: a result that
        arrived before the cancel must not land in the next scene."""
        if slicer.mrmlScene.IsNodePresent(volume):
            return False
        self.setStatus(f"{action} finished after its volume was closed; the result was not used.")
        return True

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, parameterNode: Optional[MedSegRWKVParameterNode]) -> None:
        """Bind the selectors to `parameterNode` (None: unbind, while a scene closes)."""
        if self._parameterNode is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = parameterNode
        if parameterNode is not None:
            self._parameterNodeGuiTag = parameterNode.connectGui(self.ui)
            self.addObserver(parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        volume, _, output = self.nodes()
        self.shownNodes = (volume, output)
        self.onInputChanged()
        self.onOutputChanged()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """A selector wrote the parameter node: follow a new input or output."""
        volume, _, output = self.nodes()
        shownVolume, shownOutput = self.shownNodes
        self.shownNodes = (volume, output)
        if volume is not shownVolume:
            self.onInputChanged()
        if output is not shownOutput:
            self.onOutputChanged()

    def nodes(self) -> Tuple[Any, Any, Any]:
        """(input volume, ROI, output segmentation); all None while no scene is bound."""
        parameters = self._parameterNode
        if parameters is None:
            return None, None, None
        return parameters.inputVolume, parameters.roi, parameters.outputSegmentation

    # status ---------------------------------------------------------------------------------------
    def setStatus(self, text: str, error: bool = False) -> None:
        self.ui.statusLabel.setText(text)
        self.ui.statusLabel.setStyleSheet("color: #c0392b" if error else "")
        if error:
            logging.error(f"MedSegRWKV: {text}")

    def updateButtons(self) -> None:
        volume, _, output = self.nodes()
        busy = self.job is not None
        ready = self.info is not None and volume is not None
        hasModel = self.selectedModel() is not None
        segmenting = busy and self.job.action == "Segmenting"
        grading = busy and self.job.action == "Grading"
        self.ui.segmentButton.setText("Cancel" if segmenting else "Segment")
        self.ui.segmentButton.setEnabled(segmenting or (not busy and ready and hasModel))
        self.ui.gradeButton.setText("Cancel" if grading else "Grade motion")
        self.ui.gradeButton.setEnabled(grading or (not busy and ready))
        cine = self.logic.sequenceBrowser(volume) is not None
        measuring = busy and self.job.action == MEASURING
        recomputing = busy and self.job.action == RECOMPUTING
        self.ui.functionButton.setText("Cancel" if measuring else FUNCTION_BUTTON)
        self.ui.functionButton.setEnabled(measuring or (not busy and ready and hasModel and cine))
        segmented = cine and self.logic.phaseSegmentations(volume)[1] is not None
        self.ui.recomputeFunctionButton.setText("Cancel" if recomputing else RECOMPUTE_BUTTON)
        self.ui.recomputeFunctionButton.setEnabled(recomputing or (not busy and ready and segmented))
        self.ui.editSegmentsButton.setEnabled(volume is not None and output is not None)
        self.ui.installBackendButton.setEnabled(not busy)
        correcting = self.correction is not None
        self.ui.startCorrectionButton.setEnabled(correcting or (not busy and ready and
                                                                self.ui.correctSegmentComboBox.count > 0))
        self.ui.startCorrectionButton.setChecked(correcting)
        self.ui.startCorrectionButton.setText("Stop correcting" if correcting else "Start correcting")
        self.ui.correctSegmentComboBox.setEnabled(not correcting)
        pointsReady = correcting and not busy
        self.ui.positivePointButton.setEnabled(pointsReady)
        self.ui.negativePointButton.setEnabled(pointsReady)
        self.ui.acceptCorrectionButton.setEnabled(pointsReady)
        self.ui.undoPointButton.setEnabled(pointsReady and bool(self.correction.points))

    # worker plumbing ------------------------------------------------------------------------------
    def submit(self, action: str, request: Dict[str, Any], onDone: Callable[[Message], None],
               folder: Optional[str] = None, cancellable: bool = False) -> None:
        try:
            requestId = self.logic.send(request)
        except OSError as exc:  # PythonSlicer missing or not executable
            self.setStatus(f"Could not start the backend worker: {exc}", error=True)
            return
        self.job = Job(requestId, action, onDone, folder, cancellable)
        self.ui.progressBar.setValue(0)
        self.setStatus(f"{action}...")
        self.updateButtons()
        self.timer.start()

    def onPoll(self) -> None:
        for message in self.logic.poll():
            job = self.job
            if job is None or message.id != job.id:
                continue  # e.g. the answer to a cancel request
            if not message.final:
                self.ui.progressBar.setValue(round(100 * message.fraction))
                self.setStatus(protocol.progress_text(job.action, message))
                continue
            self.finish(job, message)
        if self.job is None:
            self.timer.stop()

    def finish(self, job: Job, message: Message) -> None:
        """Hand the final answer to the job, then delete its temporary files."""
        self.job = None
        try:
            job.onDone(message)
        except Exception as exc:  # a failed import into the scene must not leave the panel stuck
            logging.exception("MedSegRWKV")
            self.setStatus(f"{job.action} finished, but its result could not be shown: {exc}", error=True)
        finally:
            if job.folder:
                shutil.rmtree(job.folder, ignore_errors=True)
        self.updateButtons()

    def failed(self, action: str, message: Message) -> bool:
        """Show an error answer; True when `message` is one."""
        if message.type != "error":
            return False
        self.ui.progressBar.setValue(0)
        if message.code == protocol.ErrorCode.CANCELLED:
            self.setStatus(f"{action} cancelled.")
        else:
            self.setStatus(f"{action} failed: {protocol.error_text(message)}", error=True)
        if message.code in (protocol.ErrorCode.WORKER_DIED, protocol.ErrorCode.WORKER_RESTARTED):
            self.info = None
            logging.error(self.logic.workerLog())
            if action != STARTING:  # a worker that dies while starting is not restarted in a loop
                self.refreshBackend()
        return True

    # backend ---------------------------------------------------------------------------------------
    def refreshBackend(self) -> None:
        """Start the worker when the backend is installed and ask it for versions and models."""
        plan = self.logic.setupPlan()
        if not plan.ready:
            self.showAbout(plan.message)
            self.ui.modelDescriptionLabel.setText("The backend is not set up yet: use 'Install / update backend' "
                                                  "in the About backend section.")
            self.ui.aboutCollapsibleButton.collapsed = False
            return
        if self.info is None and self.job is None:
            self.submit(STARTING, protocol.info_request(), self.onInfo)

    def onInfo(self, message: Message) -> None:
        if self.failed(STARTING, message):
            self.showAbout(protocol.error_text(message))
            return
        self.info = message.result
        if not self.ttaDefaulted and self._parameterNode is not None:  # once: the user's choice is kept after
            self._parameterNode.tta = panel.tta_default(self.info)
            self.ttaDefaulted = True
        self.showAbout()
        self.fillDevices()
        self.fillCorrectableSegments()
        self.submit("Listing models", protocol.models_request("segmentation"), self.onModels)

    def onModels(self, message: Message) -> None:
        if self.failed("Listing models", message):
            return
        previous = self.selectedModel()
        self.modelChoices = panel.model_choices(message.result["models"])
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        for i, choice in enumerate(self.modelChoices):
            combo.addItem(choice.text, choice.value)
            combo.setItemData(i, choice.tooltip, qt.Qt.ToolTipRole)
            combo.model().item(i).setEnabled(choice.enabled)
        index = panel.pick_choice(self.modelChoices, previous)
        combo.setCurrentIndex(index if index is not None else -1)
        combo.blockSignals(False)
        self.onModelChanged()
        self.setStatus("Ready." if index is not None else "No segmentation model has installed weights.",
                       error=index is None)

    def showAbout(self, problem: str = "") -> None:
        self.ui.aboutLabel.setText(panel.about_text(
            self.info, dependencies.installed_version("torch"),
            dependencies.installed_version(dependencies.BACKEND_DIST), problem))

    def fillDevices(self) -> None:
        combo = self.ui.deviceComboBox
        previous = combo.itemData(combo.currentIndex) if combo.count else "auto"
        choices = panel.device_choices(self.info)
        combo.clear()
        for i, choice in enumerate(choices):
            combo.addItem(choice.text, choice.value)
            combo.setItemData(i, choice.tooltip, qt.Qt.ToolTipRole)
            combo.model().item(i).setEnabled(choice.enabled)
        combo.setCurrentIndex(panel.pick_choice(choices, previous) or 0)

    def onInstallBackend(self) -> None:
        try:
            self.setStatus("Installing the backend (see the Python console)...")
            slicer.app.processEvents()
            self.logic.setupBackend(force=True)
        except RuntimeError as exc:
            self.setStatus(str(exc), error=True)
            self.showAbout(str(exc))
            return
        self.info = None
        self.refreshBackend()

    def onRestartWorker(self) -> None:
        for message in self.logic.restartWorker("requested by the user."):
            if self.job is not None and message.id == self.job.id and message.final:
                self.finish(self.job, message)
        self.info = None
        self.updateButtons()
        self.refreshBackend()

    def ensureBackend(self) -> bool:
        """First use: install what is missing (asking first); False when the worker cannot run."""
        if self.logic.setupPlan().ready:
            return True
        try:
            self.logic.setupBackend()
        except RuntimeError as exc:
            self.setStatus(str(exc), error=True)
            self.showAbout(str(exc))
            return False
        self.refreshBackend()
        return False  # the worker is starting; the user clicks again once models are listed

    # inputs -------------------------------------------------------------------------------------
    def onInputChanged(self) -> None:
        volume = self.nodes()[0]
        if volume is not self.gradedVolume:
            self.clearQuality()
        browser = self.logic.sequenceBrowser(volume)
        count = browser.GetNumberOfItems() if browser is not None else 1
        self.ui.phaseSpinBox.blockSignals(True)
        self.ui.phaseSpinBox.setRange(1, max(1, count))  # shown 1-based; sequence items are 0-based
        self.ui.phaseSpinBox.setValue(browser.GetSelectedItemNumber() + 1 if browser is not None else 1)
        self.ui.phaseSpinBox.setEnabled(count > 1)
        self.ui.phaseSpinBox.blockSignals(False)
        phases = count if count > 1 else 0  # ED/ES boxes: 0 is "auto" (detected), shown so by the .ui
        self.ui.edSpinBox.setRange(0, phases)
        self.ui.edSpinBox.setEnabled(count > 1)
        self.ui.esSpinBox.setRange(0, phases)
        self.ui.esSpinBox.setEnabled(count > 1)
        self.showPhase()
        self.updateButtons()

    def onPhaseChanged(self, phase: int) -> None:
        browser = self.logic.sequenceBrowser(self.nodes()[0])
        if browser is not None:
            browser.SetSelectedItemNumber(phase - 1)
        self.showPhase()

    def showPhase(self) -> None:
        browser = self.logic.sequenceBrowser(self.nodes()[0])
        if browser is None:
            self.ui.phaseLabel.setText(panel.phase_text(0, 1))
            return
        sequence = browser.GetMasterSequenceNode()
        index = browser.GetSelectedItemNumber()
        self.ui.phaseLabel.setText(panel.phase_text(index, browser.GetNumberOfItems(),
                                                    sequence.GetNthIndexValue(index), sequence.GetIndexUnit()))

    def onPlaceRoi(self) -> None:
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Heart ROI")
        self._parameterNode.roi = roi
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsROINode")
        selection.SetActivePlaceNodeID(roi.GetID())
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        interaction.SetCurrentInteractionMode(interaction.Place)

    def onFitRoi(self) -> None:
        volume, roi, _ = self.nodes()
        if volume is None:
            self.setStatus("Choose an input volume first.", error=True)
            return
        if roi is None:
            roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Heart ROI")
            self._parameterNode.roi = roi
        self.logic.fitRoi(volume, roi)

    def selectedModel(self) -> Optional[str]:
        combo = self.ui.modelComboBox
        if combo.currentIndex < 0 or combo.currentIndex >= len(self.modelChoices):
            return None
        choice = self.modelChoices[combo.currentIndex]
        return choice.value if choice.enabled else None

    def onModelChanged(self, index: int = -1) -> None:
        combo = self.ui.modelComboBox
        choice = self.modelChoices[combo.currentIndex] if 0 <= combo.currentIndex < len(self.modelChoices) else None
        self.ui.modelDescriptionLabel.setText(choice.tooltip if choice else "No model selected.")
        self.updateButtons()

    def selectedDevice(self) -> str:
        return self.ui.deviceComboBox.itemData(self.ui.deviceComboBox.currentIndex) or "auto"

    # segment --------------------------------------------------------------------------------------
    def startJob(self, action: str, makeRequest: Callable[[Any], Tuple[Dict[str, Any], str]],
                 onDone: Callable[[Message, Any, Dict[str, Any]], None]) -> None:
        """A button that starts a cancellable worker job on the input volume and is that job's
        Cancel button while it runs: `makeRequest(volume)` gives the request and its temporary
        folder, `onDone(message, volume, request)` takes the answer."""
        if self.job is not None:
            if self.job.cancellable and self.job.action == action:
                self.logic.cancel(self.job.id)
                self.setStatus("Cancelling (stops after the current slice batch)...")
            return
        if not self.ensureBackend():
            return
        volume = self.nodes()[0]
        try:
            request, folder = makeRequest(volume)
        except (RuntimeError, ValueError) as exc:  # geometry.RoiError is a ValueError
            self.setStatus(str(exc), error=True)
            return
        self.submit(action, request, lambda message: onDone(message, volume, request), folder, cancellable=True)

    def onSegmentButton(self) -> None:
        self.startJob("Segmenting", lambda volume: self.logic.segmentRequest(
            volume, self.nodes()[1], self.selectedModel(), self.selectedDevice(), self._parameterNode.tta),
            lambda message, volume, request: self.onSegmented(message, volume, request["output"]))

    def onSegmented(self, message: Message, volume, labelmapPath: str) -> None:
        if self.failed("Segmentation", message) or self.closedMeanwhile("Segmentation", volume):
            return
        result = message.result
        segmentationNode = self.logic.importSegmentation(volume, self.nodes()[2], labelmapPath, result["labels"])
        if self._parameterNode is not None:
            self._parameterNode.outputSegmentation = segmentationNode
        self.fillCorrectableSegments()
        volumes = ", ".join(f"{name} {ml:.1f} mL" for name, ml in result["volumes_ml"][0].items() if name != "phase")
        self.ui.progressBar.setValue(100)
        self.setStatus(panel.with_warnings(f"Segmented with {result['model']} on {result['device']} in "
                                           f"{result['seconds']:.1f} s: {volumes}.", result))

    def onOutputChanged(self) -> None:
        self.ui.segmentsTableView.setSegmentationNode(self.nodes()[2])
        self.fillCorrectableSegments()
        self.updateButtons()

    # whole cine: segmentation sequence and cardiac function -------------------------------------
    def functionOptions(self) -> Dict[str, Any]:
        return cardiac.request_options(self.ui.edSpinBox.value, self.ui.esSpinBox.value, self.ui.heightSpinBox.value,
                                       self.ui.weightSpinBox.value)

    def onFunctionButton(self) -> None:
        self.startJob(MEASURING, lambda volume: self.logic.functionRequest(
            volume, self.selectedModel(), self.selectedDevice(), self._parameterNode.tta, self.functionOptions()),
            lambda message, volume, request: self.onFunctionMeasured(message, MEASURING, volume))

    def onRecomputeFunction(self) -> None:
        self.startJob(RECOMPUTING, lambda volume: self.logic.recomputeRequest(volume, self.functionOptions()),
                      lambda message, volume, request: self.onFunctionMeasured(message, RECOMPUTING, volume))

    def onFunctionMeasured(self, message: Message, action: str, volume) -> None:
        if self.failed(action, message) or self.closedMeanwhile(action, volume):
            return
        result = message.result
        if result.get("output"):  # segmented by the model: the phases' segments into the scene
            proxy = self.logic.importPhaseSegmentations(volume, result["output"], result["labels"])
            if self._parameterNode is not None:
                self._parameterNode.outputSegmentation = proxy
        self.showFunction(result, volume)
        self.ui.progressBar.setValue(100)
        source = f"{result['model']}" if result.get("model") else "the edited segments"
        self.setStatus(panel.with_warnings(f"Measured {len(result['curve'])} phases from {source} in "
                                           f"{result['seconds']:.1f} s: {cardiac.summary_line(result)}", result))

    def showFunction(self, result: Dict[str, Any], volume=None) -> None:
        """Results table, summary line and volume-time plot (also used by the self-test)."""
        table = self.logic.showFunction(result, volume)
        self.ui.functionTableView.setMRMLTableNode(table)
        self.ui.functionSummaryLabel.setText(cardiac.summary_line(result))
        self.updateButtons()

    def clearFunction(self) -> None:
        self.ui.functionTableView.setMRMLTableNode(None)
        self.ui.functionSummaryLabel.setText("Not measured yet.")

    # click correction -----------------------------------------------------------------------------
    def fillCorrectableSegments(self) -> None:
        combo = self.ui.correctSegmentComboBox
        combo.clear()
        node = self.nodes()[2]
        if node is None or self.info is None:
            return
        ids = list(node.GetSegmentation().GetSegmentIDs())
        for spec in clicks.correctable_segments(self.info.get("refinement_labels", []), ids):
            combo.addItem(spec.name, f"{spec.value} {spec.segment_id}")

    def onStartCorrection(self) -> None:
        if self.correction is not None:
            self.stopCorrection("Correction stopped; the segment keeps its current mask.")
            return
        if not self.ensureBackend():
            return
        volume, _, segmentationNode = self.nodes()
        try:
            request, folder = self.logic.loadImageRequest(volume)
        except RuntimeError as exc:
            self.setStatus(str(exc), error=True)
            return
        self.submit("Preparing the volume for clicks", request,
                    lambda message: self.onImageLoaded(message, volume, segmentationNode), folder)

    def onImageLoaded(self, message: Message, volume, segmentationNode) -> None:
        if self.failed("Preparing the volume", message):
            return
        value, segmentId = str(self.ui.correctSegmentComboBox.currentData).split(" ", 1)
        size = message.result["size"]
        self.correction = clicks.ClickSession(message.result["image_id"], int(value), segmentId,
                                              int(message.result["slice_axis"]), (size[2], size[1], size[0]))
        self.correctionNodes = (volume, segmentationNode)
        self.observePointLists()
        for positive in (True, False):
            self.logic.pointList(positive).RemoveAllControlPoints()
        self.shortcuts = []
        for key, handler in SHORTCUTS.items():
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.connect("activated()", getattr(self, handler))
            self.shortcuts.append(shortcut)
        self.ui.correctionStatusLabel.setText(f"Correcting {self.ui.correctSegmentComboBox.currentText}: place points "
                                              "with Add region (P) or Remove region (N).")
        self.setStatus("Ready for clicks.")

    def stopCorrection(self, text: str) -> None:
        for shortcut in self.shortcuts:
            shortcut.setParent(None)
        self.shortcuts = []
        self.correction = None
        self.correctionNodes = (None, None)
        for positive in (True, False):
            self.logic.pointList(positive).RemoveAllControlPoints()
        if text:
            self.ui.correctionStatusLabel.setText(text)
        self.updateButtons()

    def observePointLists(self) -> None:
        """The point lists are scene nodes: after File > Close Scene (or if the user deleted them)
        they are new nodes, which need the observer again or clicks would be ignored."""
        for positive in (True, False):
            pointList = self.logic.pointList(positive)
            if not self.hasObserver(pointList, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                                    self.onPointPlaced):
                self.addObserver(pointList, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPointPlaced)

    def placePoint(self, positive: bool) -> None:
        if self.correction is None or self.job is not None:
            return
        pointList = self.logic.pointList(positive)
        slicer.modules.markups.logic().SetActiveList(pointList)
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        interaction.SetPlaceModePersistence(0)
        interaction.SetCurrentInteractionMode(interaction.Place)

    def onPositivePoint(self) -> None:
        self.placePoint(True)

    def onNegativePoint(self) -> None:
        self.placePoint(False)

    def segmentMask(self) -> np.ndarray:
        volume, segmentationNode = self.correctionNodes
        return slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, self.correction.segment_id,
                                                          volume).astype(bool)

    def otherSegmentMasks(self) -> Dict[str, np.ndarray]:
        """The segmentation's other segments, from which a refined segment takes its new voxels."""
        volume, segmentationNode = self.correctionNodes
        return {segmentId: slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volume).astype(bool)
                for segmentId in segmentationNode.GetSegmentation().GetSegmentIDs()
                if segmentId != self.correction.segment_id}

    def writeSegmentMasks(self, mask: np.ndarray, others: Dict[str, np.ndarray]) -> None:
        """The others first: they give up the voxels the segment takes, so no two ever overlap."""
        volume, segmentationNode = self.correctionNodes
        for segmentId, values in {**others, self.correction.segment_id: mask}.items():
            slicer.util.updateSegmentBinaryLabelmapFromArray(values.astype(np.uint8), segmentationNode, segmentId,
                                                             volume)

    def onPointPlaced(self, caller, event) -> None:
        if self.correction is None:
            return
        if self.job is not None:  # one refinement at a time: this point is not used
            caller.RemoveNthControlPoint(caller.GetNumberOfControlPoints() - 1)
            self.setStatus("Wait for the previous point's update, then place this one again.")
            return
        positive = caller is self.logic.pointList(True)
        try:
            self.correction.add(self.logic.lastPointIjk(self.correctionNodes[0], caller), positive)
            request = self.correction.request(self.segmentMask())
        except ValueError as exc:
            caller.RemoveNthControlPoint(caller.GetNumberOfControlPoints() - 1)
            self.setStatus(str(exc), error=True)
            return
        request["device"] = self.selectedDevice()
        self.submit(REFINING, request, self.onRefined)

    def onRefined(self, message: Message) -> None:
        if self.failed(REFINING, message):
            if self.correction is not None:  # the point did nothing: take it back
                point = self.correction.undo(self.segmentMask())
                if point is not None:
                    pointList = self.logic.pointList(point.positive)
                    pointList.RemoveNthControlPoint(pointList.GetNumberOfControlPoints() - 1)
            if message.code == protocol.ErrorCode.IMAGE_EXPIRED:
                self.stopCorrection(protocol.error_text(message))
            return
        mask, others = self.segmentMask(), self.otherSegmentMasks()  # read again: Segment Editor edits are kept
        changed = self.correction.apply(mask, message.result, others)
        self.writeSegmentMasks(mask, others)
        self.setStatus(f"Updated slice {', '.join(map(str, changed))} in {message.result['seconds'] * 1000:.0f} ms "
                       f"({len(self.correction.points)} point(s)).")

    def onUndoPoint(self) -> None:
        if self.correction is None or self.job is not None:
            return
        mask, others = self.segmentMask(), self.otherSegmentMasks()
        point = self.correction.undo(mask, others)
        if point is None:
            return
        pointList = self.logic.pointList(point.positive)
        pointList.RemoveNthControlPoint(pointList.GetNumberOfControlPoints() - 1)
        self.writeSegmentMasks(mask, others)
        self.setStatus("Removed the last point.")
        self.updateButtons()

    def onAcceptCorrection(self) -> None:
        if self.correction is None or self.job is not None:
            return
        count = self.correction.accept()
        for positive in (True, False):
            self.logic.pointList(positive).RemoveAllControlPoints()
        self.setStatus(f"Accepted the correction ({count} point(s)); place more points or stop correcting.")
        self.updateButtons()

    def onEditSegments(self) -> None:
        volume, _, segmentationNode = self.nodes()
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentationNode)
        setSource = getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode  # Slicer < 5.2
        setSource(volume)

    # grade ----------------------------------------------------------------------------------------
    def onGradeButton(self) -> None:
        self.startJob("Grading", lambda volume: self.logic.gradeRequest(volume, self.selectedDevice(), self.nodes()[2]),
                      lambda message, volume, request: self.onGraded(message, volume))

    def onGraded(self, message: Message, volume) -> None:
        if self.failed("Grading", message) or self.closedMeanwhile("Grading", volume):
            return
        self.showQuality(message.result, volume)
        self.ui.progressBar.setValue(100)
        self.setStatus(panel.with_warnings(f"Graded {message.result['n_slices']} slices with "
                                           f"{message.result['model']} on {message.result['device']}.", message.result))

    def showQuality(self, result: Dict[str, Any], volume) -> None:
        """Fill the table, summary and plot from a grade result (also used by the self-test)."""
        self.gradeResult, self.gradedVolume = result, volume
        rows = quality.quality_rows(result)
        table = self.ui.qualityTable
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row.cells):
                item = qt.QTableWidgetItem(text)
                item.setBackground(qt.QBrush(qt.QColor(*row.background)))
                item.setForeground(qt.QBrush(qt.QColor(0, 0, 0)))
                item.setToolTip(row.tooltip)
                table.setItem(r, c, item)
        self.ui.qualitySummaryLabel.setText(quality.summary_line(result))
        self.ui.qualitySummaryLabel.setToolTip(quality.summary_tooltip(result))
        self.ui.qualitySummaryLabel.setStyleSheet(quality.summary_style(result))
        self.logic.showQualityPlot(result)

    def clearQuality(self) -> None:
        self.gradeResult = self.gradedVolume = None
        self.ui.qualityTable.setRowCount(0)
        self.ui.qualitySummaryLabel.setText("Not graded yet.")
        self.ui.qualitySummaryLabel.setStyleSheet("")

    def onQualityRowClicked(self, row: int, column: int) -> None:
        if self.gradeResult is None or self.gradedVolume is None:
            return
        rows = quality.quality_rows(self.gradeResult)
        self.logic.jumpToSlice(self.gradedVolume, int(self.gradeResult["index_axis"]), rows[row].index)


# -- self-test (runs only inside Slicer) ------------------------------------------------------------
class MedSegRWKVTest(ScriptedLoadableModuleTest):
    """Loads the bundled Sunnybrook study, segments and grades it through the worker, and checks
    the segments (names, terminology, plausible volumes) and the quality table; then segments the
    whole cine and checks the segmentation sequence, the function table and plot, and the recompute."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_SegmentAndGradeSample()
        self.setUp()
        self.test_WholeCineFunctionOfSample()

    def loadSample(self):
        from DICOMLib import DICOMUtils

        folder = dependencies.find_sample_dicom(MODULE_DIR)
        self.assertIsNotNone(folder, "the bundled sample DICOM folder was not found")
        with DICOMUtils.TemporaryDICOMDatabase() as database:
            DICOMUtils.importDicom(str(folder), database)
            nodeIds = DICOMUtils.loadPatientByUID(database.patients()[0])
        browsers = slicer.util.getNodesByClass("vtkMRMLSequenceBrowserNode")
        if browsers:  # a cine series loaded as a sequence: use its proxy volume
            return browsers[0].GetProxyNode(browsers[0].GetMasterSequenceNode())
        volumes = [slicer.mrmlScene.GetNodeByID(i) for i in nodeIds]
        volumes = [v for v in volumes if v is not None and v.IsA("vtkMRMLScalarVolumeNode")]
        self.assertTrue(volumes, "the sample loaded no scalar volume")
        return volumes[0]

    def checkClickCorrection(self, logic, volume, segmentationNode, labels) -> None:
        """A negative point in the middle of the LV cavity removes voxels there; undo restores them."""
        spec = next(s for s in terminology.segment_specs(labels) if s.name == "LV cavity")
        request, folder = logic.loadImageRequest(volume)
        loaded = logic.request(request)
        shutil.rmtree(folder, ignore_errors=True)
        self.assertEqual(loaded.type, "result", loaded.text)
        size = loaded.result["size"]
        session = clicks.ClickSession(loaded.result["image_id"], spec.value, spec.segment_id,
                                      int(loaded.result["slice_axis"]), (size[2], size[1], size[0]))
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, spec.segment_id, volume).astype(bool)
        voxels = np.argwhere(mask)  # (k, j, i)
        k, j, i = voxels[np.argmin(((voxels - voxels.mean(axis=0)) ** 2).sum(axis=1))]
        session.add((float(i), float(j), float(k)), positive=False)
        answer = logic.request({**session.request(mask), "device": "auto"})
        self.assertEqual(answer.type, "result", answer.text)
        before = mask.copy()
        session.apply(mask, answer.result)
        self.assertLess(int(mask.sum()), int(before.sum()))
        session.undo(mask)
        self.assertTrue(np.array_equal(mask, before))

    def test_SegmentAndGradeSample(self) -> None:
        self.delayDisplay("Setting up the backend")
        logic = MedSegRWKVLogic()
        self.assertTrue(logic.setupBackend(interactive=False).ready)
        volume = self.loadSample()
        self.delayDisplay(f"Loaded {volume.GetName()}")
        try:
            info = logic.request(protocol.info_request())
            self.assertEqual(info.type, "result", info.text)

            request, folder = logic.segmentRequest(volume, None, None, "auto", False)
            answer = logic.request(request)
            self.assertEqual(answer.type, "result", answer.text)
            segmentationNode = logic.importSegmentation(volume, None, request["output"], answer.result["labels"])
            shutil.rmtree(folder, ignore_errors=True)
            segmentation = segmentationNode.GetSegmentation()
            for spec in terminology.segment_specs(answer.result["labels"]):
                segment = segmentation.GetSegment(spec.segment_id)
                self.assertIsNotNone(segment, spec.name)
                self.assertEqual(segment.GetName(), spec.name)
                tag = vtk.mutable("")
                self.assertTrue(segment.GetTag(terminology.TERMINOLOGY_TAG, tag), f"{spec.name} has no terminology")
                self.assertEqual(str(tag), spec.terminology)
                voxels = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, spec.segment_id, volume)
                self.assertGreater(int(voxels.sum()), 100, f"{spec.name} is (nearly) empty")
            lv = answer.result["volumes_ml"][0]["LV cavity"]
            self.assertTrue(20.0 < lv < 400.0, f"implausible LV cavity volume {lv} mL")
            self.delayDisplay("Segmentation checked")
            if info.result.get("refinement_labels"):
                self.checkClickCorrection(logic, volume, segmentationNode, answer.result["labels"])
                self.delayDisplay("Click correction checked")

            models = logic.request(protocol.models_request("grading")).result["models"]
            grader = next(m for m in models if m["default"])
            if grader["weights"] != panel.VERIFIED:
                self.delayDisplay(f"Grading not checked: the default grader {grader['name']} has no weights yet")
                return
            request, folder = logic.gradeRequest(volume, "auto", segmentationNode)  # as the button does
            answer = logic.request(request)
            shutil.rmtree(folder, ignore_errors=True)
            self.assertEqual(answer.type, "result", answer.text)
            self.assertIn("the given segmentation", answer.result["study"]["lv_slices_source"])
            widget = slicer.modules.medsegrwkv.widgetRepresentation().self()
            widget.showQuality(answer.result, volume)
            table = widget.ui.qualityTable
            rows = quality.quality_rows(answer.result)
            self.assertEqual(table.rowCount, volume.GetImageData().GetDimensions()[answer.result["index_axis"]])
            self.assertEqual(table.item(0, 2).text(), rows[0].cells[2])
            colour = table.item(0, 0).background().color()
            self.assertEqual((colour.red(), colour.green(), colour.blue()), rows[0].background)
            widget.onQualityRowClicked(0, 0)
            self.delayDisplay("Grading checked")
        finally:
            logic.shutdown()

    def test_WholeCineFunctionOfSample(self) -> None:
        """Segment all phases + function on the sample cine, as the button does: one segmentation per
        phase that the browser shows with its phase, the table and plot, and the same numbers again
        from the segments without a model."""
        self.delayDisplay("Whole cine: segmentation sequence and cardiac function")
        logic = MedSegRWKVLogic()
        self.assertTrue(logic.setupBackend(interactive=False).ready)
        volume = self.loadSample()
        browser = logic.sequenceBrowser(volume)
        if browser is None:
            self.delayDisplay("Cardiac function not checked: the sample did not load as a cine sequence")
            return
        widget = slicer.modules.medsegrwkv.widgetRepresentation().self()
        try:
            request, folder = logic.functionRequest(volume, None, "auto", False, cardiac.request_options(0, 0, 0, 0))
            answer = logic.request(request)
            self.assertEqual(answer.type, "result", answer.text)
            widget.onFunctionMeasured(answer, MEASURING, volume)
            shutil.rmtree(folder, ignore_errors=True)
            result = answer.result
            sequence, proxy = logic.phaseSegmentations(volume)
            self.assertIsNotNone(proxy, "no segmentation sequence in the cine's browser")
            self.assertEqual(sequence.GetNumberOfDataNodes(), browser.GetNumberOfItems())
            voxelMl = float(np.prod(volume.GetSpacing())) / 1000.0
            for row in result["curve"]:
                browser.SetSelectedItemNumber(int(row["phase"]))
                voxels = slicer.util.arrayFromSegmentBinaryLabelmap(proxy, "medsegrwkv_lv_cavity", volume).sum()
                self.assertAlmostEqual(float(voxels) * voxelMl, row["lv_ml"], delta=0.5,
                                       msg=f"phase {row['phase']} shows another phase's LV cavity")
            table = logic.getParameterNode().functionTable
            content = table.GetTable()
            values = {content.GetValue(r, 0).ToString(): content.GetValue(r, 1).ToString()
                      for r in range(content.GetNumberOfRows())}
            self.assertEqual(values["ED phase"], str(result["ed_phase"] + 1))
            self.assertAlmostEqual(float(values["LV EF"]), result["lv"]["ef_percent"], delta=0.05)
            chart = logic.getParameterNode().functionChart
            self.assertGreaterEqual(chart.GetNumberOfPlotSeriesNodes(), 2)
            self.delayDisplay("Segmentation sequence, table and plot checked")

            request, folder = logic.recomputeRequest(volume, cardiac.request_options(0, 0, 0, 0))
            again = logic.request(request)
            shutil.rmtree(folder, ignore_errors=True)
            self.assertEqual(again.type, "result", again.text)
            self.assertAlmostEqual(again.result["lv"]["ef_percent"], result["lv"]["ef_percent"], delta=0.01)
            widget.onFunctionMeasured(again, RECOMPUTING, volume)
            self.delayDisplay("Recompute from the segments checked")
        finally:
            logic.shutdown()
