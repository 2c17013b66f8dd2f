"""Render the module panel from MedSegRWKV.ui to Resources/Screenshots/panel.png, without Slicer.

Slicer's own widgets (ctk/qMRML) do not exist outside Slicer: collapsible sections become group
boxes and MRML selectors become framed, labelled placeholders. Everything else is the real .ui,
filled by the real worker and MedSegRWKVLib exactly as the module fills it: model and device
choices, the About text, a segmentation, a click, a motion grading and the cardiac function of
the bundled Sunnybrook study (its results table, a qMRMLTableView in Slicer, is printed into the
table's placeholder).

    .venv/bin/pip install PySide6-Essentials   # only for this picture; not a project requirement
    QT_QPA_PLATFORM=offscreen .venv/bin/python Testing/render_panel.py [output.png]
"""

from __future__ import annotations

import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedSegRWKV"))
from MedSegRWKVLib import cardiac, clicks, dependencies, panel, protocol, quality  # noqa: E402
from MedSegRWKVLib.client import EngineClient, engine_command  # noqa: E402
from medsegrwkv.io import read_study  # noqa: E402

UI = REPO / "MedSegRWKV" / "Resources" / "UI" / "MedSegRWKV.ui"
OUTPUT = REPO / "Resources" / "Screenshots" / "panel.png"


def _prop(widget: ET.Element, name: str) -> str:
    node = widget.find(f"property[@name='{name}']")
    return "" if node is None else " ".join(t.strip() for t in node.itertext() if t.strip())


def qt_only_ui() -> bytes:
    """The .ui with Slicer's widget classes replaced by plain Qt stand-ins."""
    root = ET.parse(UI).getroot()
    for tag in ("customwidgets", "connections"):
        for node in root.findall(tag):
            root.remove(node)
    for widget in root.iter("widget"):
        cls = widget.get("class")
        if cls == "qMRMLWidget":
            widget.set("class", "QWidget")
        elif cls == "ctkCollapsibleButton":
            title = _prop(widget, "text")
            for prop in widget.findall("property"):
                widget.remove(prop)
            widget.set("class", "QGroupBox")
            ET.SubElement(ET.SubElement(widget, "property", name="title"), "string").text = f"\u25bc {title}"
        elif cls.startswith("qMRML"):
            types = _prop(widget, "nodeTypes")
            none = _prop(widget, "noneDisplay")
            size = widget.find("property[@name='minimumSize']")
            for prop in widget.findall("property"):
                widget.remove(prop)
            if size is not None:
                widget.append(size)
            widget.set("class", "QLabel")
            text = f"[{cls}" + (f": {types}" if types else "") + "]" + (f"  {none}" if none else "")
            ET.SubElement(ET.SubElement(widget, "property", name="text"), "string").text = text
            ET.SubElement(ET.SubElement(widget, "property", name="frameShape"), "enum").text = "QFrame::StyledPanel"
            ET.SubElement(ET.SubElement(widget, "property", name="styleSheet"), "string").text = (
                "color: #555; background: #eef1f5; padding: 3px")
    return ET.tostring(root, encoding="utf-8")


def worker_results() -> dict:
    """info, models, a segmentation and a grading of the bundled study, from the real worker
    (and the study's trigger times, which Slicer's sequence browser would show)."""
    client = EngineClient(engine_command(sys.executable), cwd=str(REPO))
    folder = Path(tempfile.mkdtemp(prefix="medsegrwkv-render-"))
    dicom = str(dependencies.find_sample_dicom(REPO / "MedSegRWKV"))
    try:
        out = {"trigger_times": read_study(dicom).trigger_times,
               "info": client.wait(client.send(protocol.info_request()), 300).result,
               "models": client.wait(client.send(protocol.models_request("segmentation")), 300).result["models"]}
        segment = client.wait(client.send(protocol.segment_request(dicom, str(folder / "labels.nrrd"),
                                                                   device="cpu", phase=0)), 600)
        out["segment"] = segment.result
        out["refine"] = _one_click(client, dicom, folder / "labels.nrrd")
        grade = client.wait(client.send(protocol.grade_request(dicom, device="cpu", phase=0)), 600)
        out["grade"] = grade.result if grade.type == "result" else None
        out["grade_error"] = grade.text
        out["function"] = _function(client, dicom, folder)
    finally:
        client.close()
    return out


def _function(client: EngineClient, dicom: str, folder: Path) -> dict:
    """Segment all phases + function, sent as the module sends a cine: one NRRD per phase."""
    import SimpleITK as sitk

    study = read_study(dicom)
    inputs = []
    for n, image in enumerate(study.phases):
        inputs.append(str(folder / f"phase{n:03d}.nrrd"))
        sitk.WriteImage(image, inputs[-1])
    request = protocol.function_request(inputs, output=str(folder / "phase_labels.nrrd"), device="cpu",
                                        **cardiac.request_options(0, 0, 0.0, 0.0))
    answer = client.wait(client.send(request), 900)
    if answer.type != "result":
        raise RuntimeError(f"function failed: {answer.text}")
    return cardiac.with_cine_times(answer.result, study.trigger_times)


def _one_click(client: EngineClient, dicom: str, labels_path: Path) -> dict:
    """A negative click in the middle of the LV cavity on its largest slice, as the module sends it."""
    import numpy as np
    import SimpleITK as sitk

    loaded = client.wait(client.send(protocol.load_image_request(dicom, phase=0)), 300).result
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_path))) == 3  # (k, j, i)
    size = loaded["size"]
    session = clicks.ClickSession(loaded["image_id"], 3, "medsegrwkv_lv_cavity", int(loaded["slice_axis"]),
                                  (size[2], size[1], size[0]))
    k = int(np.argmax(mask.sum(axis=(1, 2))))
    j, i = np.argwhere(mask[k]).mean(axis=0)
    session.add((float(i), float(j), float(k)), positive=False)
    answer = client.wait(client.send({**session.request(mask), "device": "cpu"}), 300)
    changed = session.apply(mask, answer.result)
    return {"changed": changed, "seconds": answer.result["seconds"], "points": len(session.points)}


def main() -> int:
    from PySide6.QtGui import QBrush, QColor
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication, QTableWidgetItem, QWidget

    app = QApplication(sys.argv)
    with tempfile.TemporaryDirectory() as folder:
        ui_file = Path(folder) / "panel.ui"
        ui_file.write_bytes(qt_only_ui())
        loader = QUiLoader()
        widget = loader.load(str(ui_file))

    def find(name: str) -> QWidget:
        return widget.findChild(QWidget, name)

    results = worker_results()
    combo = find("modelComboBox")
    choices = panel.model_choices(results["models"])
    for i, choice in enumerate(choices):
        combo.addItem(choice.text, choice.value)
        combo.model().item(i).setEnabled(choice.enabled)
    combo.setCurrentIndex(panel.pick_choice(choices, None) or 0)
    find("modelDescriptionLabel").setText(choices[combo.currentIndex()].tooltip)
    devices = find("deviceComboBox")
    for i, choice in enumerate(panel.device_choices(results["info"])):
        devices.addItem(choice.text, choice.value)
        devices.model().item(i).setEnabled(choice.enabled)
    find("phaseSpinBox").setRange(1, 2)
    find("phaseSpinBox").setEnabled(True)
    find("phaseLabel").setText(panel.phase_text(0, len(results["trigger_times"]),
                                                f"{results['trigger_times'][0]:.1f}", "ms"))
    for name in ("segmentButton", "gradeButton", "editSegmentsButton"):
        find(name).setEnabled(True)
    segment = results["segment"]
    volumes = ", ".join(f"{k} {v:.1f} mL" for k, v in segment["volumes_ml"][0].items() if k != "phase")
    find("progressBar").setValue(100)
    find("statusLabel").setText(f"Segmented with {segment['model']} on {segment['device']} in "
                                        f"{segment['seconds']:.1f} s: {volumes}.")
    correctable = clicks.correctable_segments(results["info"]["refinement_labels"],
                                              ["medsegrwkv_rv_cavity", "medsegrwkv_lv_myocardium", "medsegrwkv_lv_cavity"])
    for spec in correctable:
        find("correctSegmentComboBox").addItem(spec.name)
    find("correctSegmentComboBox").setCurrentIndex(len(correctable) - 1)
    for name in ("startCorrectionButton", "positivePointButton", "negativePointButton", "undoPointButton",
                 "acceptCorrectionButton"):
        find(name).setEnabled(True)
    find("startCorrectionButton").setText("Stop correcting")
    refine = results["refine"]
    find("correctionStatusLabel").setText(
        f"Correcting LV cavity: updated slice {', '.join(map(str, refine['changed']))} in "
        f"{refine['seconds'] * 1000:.0f} ms ({refine['points']} point(s)).")
    grade = results["grade"]
    if grade is not None:
        rows = quality.quality_rows(grade)
        table = find("qualityTable")
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row.cells):
                item = QTableWidgetItem(text)
                item.setBackground(QBrush(QColor(*row.background)))
                item.setForeground(QBrush(QColor(0, 0, 0)))
                table.setItem(r, c, item)
        summary = find("qualitySummaryLabel")
        summary.setText(quality.summary_line(grade))
        summary.setStyleSheet(quality.summary_style(grade))
    else:
        find("qualitySummaryLabel").setText(f"Grading failed: {results['grade_error']}")
    function = results["function"]
    for name in ("edSpinBox", "esSpinBox"):
        find(name).setRange(0, 2)
        find(name).setEnabled(True)
    for name in ("functionButton", "recomputeFunctionButton"):
        find(name).setEnabled(True)
    find("functionSummaryLabel").setText(cardiac.summary_line(function))
    rows = [row.cells for row in cardiac.result_rows(function) if row.measure != "Warning"]
    widths = [max(len(cells[c]) for cells in rows) for c in range(3)]
    table = find("functionTableView")
    table.setText("\n".join("  ".join(cell.ljust(w) for cell, w in zip(cells[:3], widths)) for cells in rows))
    table.setStyleSheet("font-family: monospace; background: white; padding: 3px")
    find("aboutLabel").setText(panel.about_text(
        results["info"], dependencies.installed_version("torch"), dependencies.installed_version("medsegrwkv")))

    widget.resize(460, widget.sizeHint().height())
    widget.show()
    app.processEvents()
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT
    output.parent.mkdir(parents=True, exist_ok=True)
    widget.grab().save(str(output))
    print(f"wrote {output}")
    app.quit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
