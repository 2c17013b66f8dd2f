"""What each engine op does. Heavy libraries are imported on first use, so the worker starts
at once and an `info` failure (no torch, broken CUDA) is reported as an error, not a crash.

Loaded models stay on their device between requests (a small LRU cache keyed by model and
resolved device): the second segmentation of a session skips loading and device set-up.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections import OrderedDict
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from medsegrwkv import __version__
from medsegrwkv.engine.protocol import PROTOCOL_VERSION, Json
from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.progress import CancelFn, ProgressFn, check_cancel

if TYPE_CHECKING:
    from medsegrwkv.interactive import VoxelClick

MAX_LOADED_MODELS = 3  # segmenters + graders + refiners kept on the device at once
MAX_CACHED_IMAGES = 4  # prepared images for click refinement; the oldest is dropped ("expired")


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


class Operations:
    """The op handlers of one worker process and the state they share (loaded models, timings)."""

    def __init__(self) -> None:
        self._loaded: "OrderedDict[Tuple[str, str, str], Any]" = OrderedDict()  # (kind, model, device) -> model
        self._params: Dict[str, int] = {}
        self._seconds_per_slice: Dict[Tuple[str, str], float] = {}  # (model, device) -> last measured
        self._images: "OrderedDict[str, Any]" = OrderedDict()  # image id -> InteractiveImage

    # -- cache ---------------------------------------------------------------------------------
    def _get(self, kind: str, model: str, device: str, progress: ProgressFn) -> Any:
        from medsegrwkv.inference.device import resolve_device

        dev = resolve_device(device)
        key = (kind, model, str(dev))
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        progress(0.0, f"loading {model} on {dev.type}")
        if kind == "segmenter":
            from medsegrwkv.inference.segmenter import Segmenter

            loaded: Any = Segmenter.from_pretrained(model, dev)
        elif kind == "refiner":
            from medsegrwkv.interactive import Refiner

            loaded = Refiner.from_pretrained(model, dev)
        else:
            from medsegrwkv.grading.grade import Grader

            loaded = Grader.from_pretrained(model, dev)
        self._loaded[key] = loaded
        while len(self._loaded) > MAX_LOADED_MODELS:
            self._loaded.popitem(last=False)
        return loaded

    # -- info ------------------------------------------------------------------------------------
    def info(self, fields: Json, progress: ProgressFn, cancel: CancelFn) -> Json:
        """Versions and devices, for the module's About area and device chooser."""
        import torch

        from medsegrwkv.nets.registry import DEFAULT_MODELS
        from medsegrwkv.weights import load_manifest

        cuda = torch.cuda.is_available()
        refinement = load_manifest(DEFAULT_MODELS["refinement"])
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
        return {
            "protocol": PROTOCOL_VERSION,
            "backend_version": __version__,
            "backend_path": str(Path(__file__).resolve().parents[1]),
            "python": platform.python_version(),
            "executable": sys.executable,
            "pid": os.getpid(),
            "platform": platform.platform(terse=True),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cuda_available": cuda,
            "gpus": gpus,
            "auto_device": "cuda" if cuda else "cpu",
            "versions": {name: _version(name) for name in ("monai", "SimpleITK", "numpy", "timm", "pydicom")},
            "default_models": dict(DEFAULT_MODELS),
            "loaded_models": [f"{model} ({device})" for _, model, device in self._loaded],
            "busy_policy": "reject",
            "refinement_labels": refinement["labels"] if refinement else [],  # [] : no click correction
        }

    # -- models ----------------------------------------------------------------------------------
    def models(self, fields: Json, progress: ProgressFn, cancel: CancelFn) -> Json:
        """Every registered model of a task with its size, weights status and measured speed
        (FLOP counts are left to `medsegrwkv models`: counting them takes seconds per model)."""
        from medsegrwkv.nets.complexity import count_parameters
        from medsegrwkv.nets.registry import DEFAULT_MODELS, create_model, list_models
        from medsegrwkv.weights import load_manifest, weights_status

        specs = list_models(fields["task"])
        rows = []
        for n, spec in enumerate(specs):
            check_cancel(cancel)
            if spec.name not in self._params:  # building the network: once per process
                self._params[spec.name] = count_parameters(create_model(spec.name))
            manifest = load_manifest(spec.name) or {}
            validation = manifest.get("metrics", {}).get("validation", {})
            rows.append({
                "name": spec.name,
                "task": spec.task,
                "spatial_dims": spec.spatial_dims,
                "description": spec.description,
                "params": self._params[spec.name],
                "weights": weights_status(spec.name).value,
                "default": DEFAULT_MODELS.get(spec.task) == spec.name,
                "validation_mean_dice": validation.get("mean_dice"),
                "measured_seconds_per_slice": {device: round(s, 4) for (model, device), s
                                               in self._seconds_per_slice.items() if model == spec.name},
            })
            progress((n + 1) / len(specs), spec.name)
        return {"models": rows}

    # -- segment ---------------------------------------------------------------------------------
    def segment(self, fields: Json, progress: ProgressFn, cancel: CancelFn) -> Json:
        """Segment one phase or every phase of a study and write the labelmap atomically."""
        from medsegrwkv.inference.device import describe_device
        from medsegrwkv.inference.study import segment_study
        from medsegrwkv.io import read_study, select_phases, write_labelmap
        from medsegrwkv.nets.registry import DEFAULT_MODELS
        from medsegrwkv.preprocess import resolve_roi

        started = time.time()
        output = _labelmap_output(fields["output"])
        progress(0.0, "reading the input")
        study = read_study(fields["input"], series=fields["series"])
        phases = select_phases(study, fields["phase"])
        roi = resolve_roi(study.phases[phases[0]], voxels=fields["roi"], ras=fields["roi_ras"])
        segmenter = self._get("segmenter", fields["model"] or DEFAULT_MODELS["segmentation"], fields["device"],
                              progress)
        result = segment_study(study, phases, segmenter, roi=roi, tta=fields["tta"],
                               postprocessing=fields["postprocess"], reported=_reported_phases(fields, phases),
                               progress=progress, cancel=cancel)
        self._seconds_per_slice[(result.model, result.device.type)] = result.seconds_per_slice
        check_cancel(cancel)
        progress(1.0, "writing the labelmap")
        write_labelmap(result.labels, output)
        return {
            "output": str(output),
            "model": result.model,
            "device": describe_device(result.device),
            "phases": result.phases,
            "roi": [*result.roi.start, *result.roi.stop] if result.roi is not None else None,
            "labels": result.label_names,
            "volumes_ml": result.volume_rows(),
            "warnings": result.warnings,
            "seconds": round(time.time() - started, 3),
        }

    # -- cardiac function --------------------------------------------------------------------------
    def function(self, fields: Json, progress: ProgressFn, cancel: CancelFn) -> Json:
        """Segment every phase of a cine (or take the client's labelmaps, e.g. after correction) and
        measure its function; the phases' labelmap is written when an output is named."""
        from medsegrwkv.function.study import study_function
        from medsegrwkv.io import read_phase_files, read_study, write_labelmap
        from medsegrwkv.nets.registry import DEFAULT_MODELS

        started = time.time()
        if (fields["input"] is None) == (fields["inputs"] is None):
            raise MedSegError("A function request needs either 'input' (a cine file or DICOM folder) or 'inputs' "
                              "(one volume file per phase), not both.", code=ErrorCode.BAD_INPUT)
        output = _labelmap_output(fields["output"]) if fields["output"] else None
        progress(0.0, "reading the input")
        study = (read_study(fields["input"], series=fields["series"]) if fields["input"] is not None
                 else read_phase_files(_str_list(fields["inputs"], "inputs")))
        phase_labels = None
        if fields["labels"] is not None:
            files = _str_list(fields["labels"], "labels")
            phase_labels = [image for path in files for image in read_study(path).phases]
            segmenter = None
        else:
            segmenter = self._get("segmenter", fields["model"] or DEFAULT_MODELS["segmentation"], fields["device"],
                                  progress)
        measured = study_function(study, segmenter=segmenter, phase_labels=phase_labels, ed=fields["ed"],
                                  es=fields["es"], height_cm=fields["height_cm"], weight_kg=fields["weight_kg"],
                                  tta=fields["tta"], progress=progress, cancel=cancel)
        check_cancel(cancel)
        if output is not None and segmenter is not None:
            progress(1.0, "writing the labelmap")
            write_labelmap(measured.phase_labels, output)
        return {**measured.report,
                "output": str(output) if output is not None and segmenter is not None else None,
                "labels": segmenter.manifest["labels"] if segmenter is not None else None,
                "seconds": round(time.time() - started, 3)}

    # -- grade -----------------------------------------------------------------------------------
    def grade(self, fields: Json, progress: ProgressFn, cancel: CancelFn) -> Json:
        """Per-slice motion grades of a study (medsegrwkv.grading), each slice also located as a
        voxel index of the input so that the module can jump its slice views there; the study grade
        counts the slices through the LV of `labels` (the client's segmentation) when given."""
        from medsegrwkv.grading.grade import grade_study, read_lv_labels
        from medsegrwkv.io import read_study, select_phases
        from medsegrwkv.nets.registry import DEFAULT_MODELS

        progress(0.0, "reading the input")
        study = read_study(fields["input"], series=fields["series"])
        phases = select_phases(study, fields["phase"])
        reported = dict(zip(phases, _reported_phases(fields, phases)))
        lv_labels = (read_lv_labels(fields["labels"], len(study.phases), phases[0])
                     if fields["labels"] is not None else None)
        grader = self._get("grader", fields["model"] or DEFAULT_MODELS["grading"], fields["device"], progress)
        report = grade_study(study, phase=fields["phase"], lv_detection=fields["lv_detection"], grader=grader,
                             progress=progress, cancel=cancel, lv_labels=lv_labels)
        for record in report["slices"]:
            record["phase"] = reported[record["phase"]]
        report["phases"] = [reported[p] for p in report["phases"]]
        report["index_axis"] = report["slice_axis"]  # the input's index axis, as refine and load_image name it
        return report

    # -- click refinement ------------------------------------------------------------------------
    def load_image(self, fields: Json, progress: ProgressFn, cancel: CancelFn) -> Json:
        """Read and prepare one volume for refinement; later `refine` requests name it by id."""
        import uuid

        from medsegrwkv.interactive import InteractiveImage
        from medsegrwkv.io import read_study, select_phases
        from medsegrwkv.nets.registry import DEFAULT_MODELS
        from medsegrwkv.preprocess import slice_layout
        from medsegrwkv.weights import load_manifest

        progress(0.0, "reading the input")
        study = read_study(fields["input"], series=fields["series"])
        phases = select_phases(study, fields["phase"])
        if len(phases) != 1:
            raise MedSegError(f"The input holds {len(phases)} cardiac phases; name one with 'phase' to refine it.",
                              code=ErrorCode.BAD_PHASE)
        # prepared as the default refiner's manifest says (every bundled refiner shares its preprocessing):
        # a noisier image than its training studies' is smoothed, as `segment` smooths it
        refiner_preprocessing = (load_manifest(DEFAULT_MODELS["refinement"]) or {}).get("preprocessing")
        prepared = InteractiveImage(study.phases[phases[0]], refiner_preprocessing)
        image_id = uuid.uuid4().hex
        self._images[image_id] = prepared
        while len(self._images) > MAX_CACHED_IMAGES:
            self._images.popitem(last=False)
        size = prepared.image.GetSize()
        return {"image_id": image_id, "size": list(size), "phase": _reported_phases(fields, phases)[0],
                "slice_axis": slice_layout(prepared.image)[0], "cached_images": len(self._images)}

    def refine(self, fields: Json, progress: ProgressFn, cancel: CancelFn) -> Json:
        """Refine one structure on the slices that hold the points; answer those slices' new masks."""
        import numpy as np

        from medsegrwkv.engine.protocol import decode_mask, encode_mask
        from medsegrwkv.nets.registry import DEFAULT_MODELS

        started = time.time()
        image = self._images.get(fields["image_id"])
        if image is None:
            raise MedSegError(f"The image id {fields['image_id']!r} is unknown or has expired (the worker keeps the "
                              f"{MAX_CACHED_IMAGES} most recent images); send load_image again.",
                              code=ErrorCode.IMAGE_EXPIRED)
        self._images.move_to_end(fields["image_id"])
        clicks = [_voxel_click(p) for p in fields["points"]]
        if not clicks:
            raise MedSegError("A refine request needs at least one point.", code=ErrorCode.BAD_CLICK)
        mask = decode_mask(fields["mask"])
        refiner = self._get("refiner", fields["model"] or DEFAULT_MODELS["refinement"], fields["device"], progress)
        refined, changed, axis = image.refine(refiner, mask, clicks, fields["label"])
        numpy_axis = 2 - axis  # the mask is (k, j, i)
        return {
            "image_id": fields["image_id"],
            "label": fields["label"],
            "index_axis": axis,
            "slices": [{"index": n, **encode_mask(np.take(refined, n, axis=numpy_axis))} for n in changed],
            "model": refiner.manifest["name"],
            "seconds": round(time.time() - started, 4),
        }


def _voxel_click(point: Any) -> "VoxelClick":
    from medsegrwkv.interactive import VoxelClick

    ijk = point.get("ijk") if isinstance(point, dict) else None
    positive = point.get("positive") if isinstance(point, dict) else None
    if not (isinstance(ijk, list) and len(ijk) == 3 and all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                                             for c in ijk) and isinstance(positive, bool)):
        raise MedSegError('Each point must be {"ijk": [i, j, k], "positive": true or false}.', code=ErrorCode.BAD_CLICK)
    return VoxelClick((float(ijk[0]), float(ijk[1]), float(ijk[2])), positive)


def _labelmap_output(path: str) -> Path:
    """A labelmap path the worker may write, checked before any work (format by suffix, writable)."""
    from medsegrwkv.io import volume_suffix
    from medsegrwkv.io.atomic import check_writable

    output = Path(path)
    if volume_suffix(output) is None:
        raise MedSegError(f"The output {output} must end in .nrrd, .nii.gz, .nii, .mha or .mhd.",
                          code=ErrorCode.BAD_OUTPUT)
    check_writable(output)
    return output


def _str_list(values: list[Any], field: str) -> list[str]:
    if not values or not all(isinstance(v, str) for v in values):
        raise MedSegError(f"The field '{field}' must be a non-empty list of file paths.", code=ErrorCode.BAD_INPUT)
    return values


def _reported_phases(fields: Json, phases: list[int]) -> list[int]:
    """The phase numbers an answer reports: the input's own, or the client's `cine_phase` when it
    sent one phase of its cine as a single volume (the file alone would make every phase 0)."""
    if fields["cine_phase"] is None:
        return phases
    if len(phases) != 1 or fields["cine_phase"] < 0:
        raise MedSegError(f"'cine_phase' must be a phase number (0 or more) for an input of one phase; "
                          f"this request covers {len(phases)} phases.", code=ErrorCode.BAD_PHASE)
    return [fields["cine_phase"]]
