"""The widgets MedSegRWKV.py reaches as `self.ui.<name>` or through its parameter node, with the
class whose API it uses.

Testing/test_slicer_lib.py checks this both ways: every `self.ui.<name>` in the module is listed
here, every entry is used (or bound in PARAMETERS), and Resources/UI/MedSegRWKV.ui declares each
name with this class and each bound widget with its SlicerParameterName.
"""

from __future__ import annotations

from typing import Dict

WIDGETS: Dict[str, str] = {
    "inputVolumeSelector": "qMRMLNodeComboBox",
    "phaseSpinBox": "QSpinBox",
    "phaseLabel": "QLabel",
    "roiSelector": "qMRMLNodeComboBox",
    "placeRoiButton": "QPushButton",
    "fitRoiButton": "QPushButton",
    "modelComboBox": "QComboBox",
    "modelDescriptionLabel": "QLabel",
    "deviceComboBox": "QComboBox",
    "ttaCheckBox": "QCheckBox",
    "segmentButton": "QPushButton",
    "progressBar": "QProgressBar",
    "statusLabel": "QLabel",
    "outputSegmentationSelector": "qMRMLNodeComboBox",
    "segmentsTableView": "qMRMLSegmentsTableView",
    "editSegmentsButton": "QPushButton",
    "correctSegmentComboBox": "QComboBox",
    "startCorrectionButton": "QPushButton",
    "positivePointButton": "QPushButton",
    "negativePointButton": "QPushButton",
    "undoPointButton": "QPushButton",
    "acceptCorrectionButton": "QPushButton",
    "correctionStatusLabel": "QLabel",
    "gradeButton": "QPushButton",
    "qualitySummaryLabel": "QLabel",
    "qualityTable": "QTableWidget",
    "edSpinBox": "QSpinBox",
    "esSpinBox": "QSpinBox",
    "heightSpinBox": "QDoubleSpinBox",
    "weightSpinBox": "QDoubleSpinBox",
    "functionButton": "QPushButton",
    "recomputeFunctionButton": "QPushButton",
    "functionSummaryLabel": "QLabel",
    "functionTableView": "qMRMLTableView",
    "aboutCollapsibleButton": "ctkCollapsibleButton",
    "aboutLabel": "QLabel",
    "installBackendButton": "QPushButton",
    "restartWorkerButton": "QPushButton",
}

# Widgets bound to MedSegRWKVParameterNode fields by their SlicerParameterName property (the
# parameter node wrapper's connectGui): the module reads and writes the field, not the widget.
PARAMETERS: Dict[str, str] = {
    "inputVolumeSelector": "inputVolume",
    "roiSelector": "roi",
    "outputSegmentationSelector": "outputSegmentation",
    "ttaCheckBox": "tta",
}
