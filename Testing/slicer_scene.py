"""Slicer without its GUI: the scene, application logic and module logics of PyPI `slicer-core`,
set up as Slicer's core application does, so that MedSegRWKV.py can be imported and driven.

Only what needs Qt is stubbed: the `qt` and `ctk` modules, `slicer.qMRML*` widget classes,
`slicer.ScriptedLoadableModule` (its base classes, with Slicer's own parameter-node lookup) and
`slicer.app` (application logic, environment, event loop). Everything MRML is real: volumes,
sequences, segmentations, markups, tables, plots, terminologies, and Data-module logic that removes
display and storage nodes with their node, as in Slicer.
"""

from __future__ import annotations

import os
import sys
import types
import unittest
from pathlib import Path
from typing import Any, Callable, Dict, List
from unittest.mock import MagicMock

HERE = Path(__file__).resolve().parent
SLICER_PYTHON = HERE / "slicer_python"  # Slicer's parameterNodeWrapper and terminology lists
MODULE_DIR = HERE.parent / "MedSegRWKV"
QMRML_WIDGETS = ("qMRMLWidget", "qSlicerWidget", "qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox",
                 "qMRMLSegmentsTableView", "qMRMLSegmentSelectorWidget", "qMRMLSubjectHierarchyComboBox",
                 "qMRMLSubjectHierarchyTreeView", "qMRMLRangeWidget", "qMRMLSliderWidget", "qMRMLSpinBox",
                 "qMRMLCoordinatesWidget", "qMRMLColorTableComboBox")


class _QtStub(types.ModuleType):
    """`qt` / `ctk`: any class name resolves to a MagicMock subclass (to subclass, annotate, and
    create objects that accept every call, e.g. table items)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        cls = type(name, (MagicMock,), {"__init__": lambda self, *args, **kwargs: MagicMock.__init__(self)})
        setattr(self, name, cls)
        return cls


class _Environment:
    """QProcessEnvironment's two methods that slicer.util.startupEnvironment uses."""

    def __init__(self, values: Dict[str, str]) -> None:
        self.values = values

    def keys(self) -> List[str]:
        return list(self.values)

    def value(self, key: str) -> str:
        return self.values[key]


class App:
    """slicer.app: the parts of qSlicerApplication the module uses, backed by the real app logic."""

    def __init__(self, applicationLogic) -> None:
        self._applicationLogic = applicationLogic

    def applicationLogic(self):
        return self._applicationLogic

    def connect(self, signal: str, slot: Callable) -> None:
        pass  # aboutToQuit(): the test shuts the worker down itself

    def processEvents(self) -> None:
        pass

    def topLevelWidgets(self) -> List[Any]:
        return []  # no main window: slicer.util.mainWindow() is None, as in a Slicer without GUI

    def startupEnvironment(self) -> _Environment:
        return _Environment({**os.environ, "OMP_NUM_THREADS": "1"})


def _scripted_module_stub(slicer) -> types.ModuleType:
    """slicer.ScriptedLoadableModule: GUI-free base classes; getParameterNode as Slicer's
    (one singleton vtkMRMLScriptedModuleNode per module, tagged with the module name)."""
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent) -> None:
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None) -> None:
            self.moduleName = type(self).__name__.removesuffix("Logic")

        def getParameterNode(self):
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
                node.UnRegister(None)
                node.SetSingletonTag(self.moduleName)
                node.SetAttribute("ModuleName", self.moduleName)
                node = slicer.mrmlScene.AddNode(node)
            return node

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None) -> None:
            self.parent = parent

        def resourcePath(self, filename: str) -> str:
            return str(MODULE_DIR / "Resources" / filename)

    module.ScriptedLoadableModule = ScriptedLoadableModule
    module.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    module.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    module.ScriptedLoadableModuleTest = unittest.TestCase
    return module


def start() -> types.ModuleType:
    """Import slicer-core, stub the GUI, build the scene and module logics; returns `slicer`."""
    for name in ("qt", "ctk"):
        sys.modules.setdefault(name, _QtStub(name))
    import slicer

    if getattr(slicer, "mrmlScene", None) is not None:
        return slicer
    for name in QMRML_WIDGETS:
        setattr(slicer, name, type(name, (), {}))
    slicer.__path__.append(str(SLICER_PYTHON / "slicer"))  # slicer.parameterNodeWrapper
    sys.modules["slicer.ScriptedLoadableModule"] = _scripted_module_stub(slicer)
    slicer.ScriptedLoadableModule = sys.modules["slicer.ScriptedLoadableModule"]

    import vtk

    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_ERROR)  # warnings about Slicer's colour files
    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()  # as qSlicerCoreApplication::setMRMLScene does
    crosshair.SetCrosshairName("default")
    scene.AddNode(crosshair)
    appLogic = slicer.vtkSlicerApplicationLogic()
    appLogic.SetMRMLScene(scene)
    appLogic.SetSliceLogics(vtk.vtkCollection())
    appLogic.SetViewLogics(vtk.vtkCollection())
    slicer.mrmlScene = scene
    slicer.app = App(appLogic)
    slicer.modules = types.SimpleNamespace()
    appLogic.SetHomeDirectory(str(SLICER_PYTHON))  # Colors looks for share/ColorFiles there (none: no extra tables)
    appLogic.SetShareDirectory("share")
    logics = {  # Slicer's module names
        "Colors": slicer.vtkSlicerColorLogic(), "Data": slicer.vtkSlicerDataModuleLogic(),
        "Volumes": slicer.vtkSlicerVolumesLogic(), "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic(),
        "Sequences": slicer.vtkSlicerSequencesLogic(), "Terminologies": slicer.vtkSlicerTerminologiesModuleLogic(),
        "Markups": slicer.vtkSlicerMarkupsLogic(), "Tables": slicer.vtkSlicerTablesLogic(),
        "Plots": slicer.vtkSlicerPlotsLogic(), "SubjectHierarchy": slicer.vtkSlicerSubjectHierarchyModuleLogic(),
        "Transforms": slicer.vtkSlicerTransformLogic(),
    }
    for name, logic in logics.items():
        if name == "Terminologies":  # the share folder must be set before the scene, which loads the lists
            logic.SetModuleShareDirectory(str(SLICER_PYTHON / "Terminologies"))
        logic.SetMRMLApplicationLogic(appLogic)
        logic.SetMRMLScene(scene)
        appLogic.SetModuleLogic(name, logic)
        setattr(slicer.modules, name.lower(), types.SimpleNamespace(logic=(lambda logic=logic: logic)))
    return slicer


def fake_ui(names) -> types.SimpleNamespace:
    """Stand-ins for the panel's Qt widgets: accept every call; `property()` is None so that the
    parameter node wrapper's connectGui finds no widget to bind (binding is Qt's part)."""
    widgets = {}
    for name in names:
        widget = MagicMock(name=name)
        widget.property.return_value = None
        widgets[name] = widget
    return types.SimpleNamespace(**widgets)
