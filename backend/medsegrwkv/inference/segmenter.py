"""Volume in, labelmap out, in the input's exact geometry.

Steps: optional ROI crop -> canonical orientation -> intensity normalisation -> in-plane resampling
to the model's spacing (and smoothing where the noise is beyond the training studies') -> network
(2D slice batches or 3D sliding window, TTA over the in-plane rotations by default on a GPU) ->
probabilities resampled back -> argmax -> post-processing -> original axis layout -> paste into
the full image. Progress is reported through a callback and a cancel hook is polled between
batches/windows, so the Slicer engine can stop a request midway.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.inference.device import resolve_device, resolve_tta
from medsegrwkv.inference.heart_size import labelmap_lv_diameter_mm, size_factor
from medsegrwkv.inference.postprocess import postprocess, trim_systolic_rv
from medsegrwkv.nets.registry import ModelSpec, get_spec, slice_context
from medsegrwkv.preprocess import (
    DEFAULT_PREPROCESSING, Prepared, Roi, crop_to_roi, from_canonical, neighbour_slices, paste_from_roi, prepare_image,
    resample_probabilities, slice_layout,
)
from medsegrwkv.progress import CancelFn, ProgressFn, check_cancel, never_cancelled, no_progress, scaled
from medsegrwkv.weights import load_model

log = logging.getLogger(__name__)

PHASE_BATCHES = 4  # a 2D network is fed this many batches' worth of slices of consecutive phases at once
# Test-time augmentation: the in-plane rotations by these multiples of 90 degrees. On the 40 ACDC
# validation volumes the four rotations beat the four flips at the same cost: mean Dice 0.9003
# against 0.8976 (session-17 weights, single pass 0.8913) and 0.8871 against 0.8847 (`unet2d`,
# 0.8796); all eight (rotations and their mirror images) 0.8977 and 0.8874 (docs/medsegrwkv.md).
TTA_ROTATIONS = (0, 1, 2, 3)


def _tell(note: str, notes: list[str] | None) -> None:
    """A sentence about what the pipeline did to a study: logged, and kept for the answer's warnings."""
    log.info(note)
    if notes is not None:
        notes.append(note)


def cpu_workers(device: torch.device, slices: int) -> int:
    """Batches run side by side on a CPU: one per intra-op thread PyTorch may use, at most one per
    slice; 1 (batches in turn, every thread on each) on a GPU."""
    return 1 if device.type != "cpu" else max(1, min(torch.get_num_threads(), slices))


class Segmenter:
    """A loaded segmentation model on a device, ready for many volumes."""

    def __init__(self, model: nn.Module, manifest: dict[str, Any], device: torch.device,
                 batch_size: int = 8) -> None:
        self.model = model.to(device).eval()
        self.manifest = manifest
        self.spec: ModelSpec = get_spec(manifest["architecture"])
        self.device = device
        self.batch_size = batch_size
        self.context = slice_context(self.spec.name, manifest.get("config", {}))  # 2.5D: neighbours a side
        self.trim_basal_rv = bool(manifest.get("postprocessing", {}).get("trim_basal_rv", False))
        self._pool: ThreadPoolExecutor | None = None  # CPU batches side by side (`_cpu_pool`)
        self._pool_workers = 0

    @classmethod
    def from_pretrained(cls, name_or_dir: str, device: str | torch.device = "auto") -> "Segmenter":
        dev = resolve_device(device) if isinstance(device, str) else device
        model, manifest = load_model(name_or_dir, dev)
        if manifest.get("task", "segmentation") != "segmentation":
            raise MedSegError(f"Model '{name_or_dir}' is a {manifest['task']} model, not a segmentation model.",
                              code=ErrorCode.WRONG_TASK)
        return cls(model, manifest, dev)

    # -- network ------------------------------------------------------------------------------
    def network_input(self, volume: np.ndarray) -> np.ndarray:
        """One stack (z, y, x) as the 2D network's input (z, channels, y, x); a 3D volume as it is."""
        return neighbour_slices(volume, self.context) if self.spec.spatial_dims == 2 else volume

    @torch.no_grad()
    def batch_probabilities(self, x: torch.Tensor, tta: bool) -> torch.Tensor:
        """Softmax probabilities for a batch of network inputs; TTA averages over the in-plane
        rotations (`TTA_ROTATIONS`), each turned back."""
        total = torch.zeros((), device=x.device)
        turns = TTA_ROTATIONS if tta else (0,)
        for k in turns:
            p = torch.softmax(self.model(torch.rot90(x, k, dims=(-2, -1)) if k else x).float(), dim=1)
            total = total + (torch.rot90(p, -k, dims=(-2, -1)) if k else p)
        return total / len(turns)

    def _predict_2d(self, volume: np.ndarray, tta: bool, progress: ProgressFn, cancel: CancelFn) -> np.ndarray:
        """Batches of slices. On a CPU with several threads the batches run side by side, one thread
        each (`cpu_workers`): the RWKV network's many small operations split poorly over threads,
        whole batches split well (docs/benchmark.md, "CPU speed")."""
        z, _, h, w = volume.shape
        m = self.spec.pad_multiple
        ph, pw = (-h) % m, (-w) % m
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        out = np.zeros((4, z, h, w), dtype=np.float32)
        workers = cpu_workers(self.device, z)
        size = min(self.batch_size, -(-z // workers))
        batches = [(start, min(z, start + size)) for start in range(0, z, size)]

        def predict(start: int, stop: int) -> torch.Tensor:
            check_cancel(cancel)
            x = torch.from_numpy(volume[start:stop]).to(self.device)
            return self.batch_probabilities(F.pad(x, pad, mode="constant", value=0.0), tta)

        pool = self._cpu_pool(torch.get_num_threads()) if workers > 1 else None
        pending = [pool.submit(predict, *b) for b in batches] if pool is not None else []
        try:
            for n, (start, stop) in enumerate(batches):
                check_cancel(cancel)
                probs = pending[n].result() if pending else predict(start, stop)
                probs = probs[:, :, pad[2]:pad[2] + h, pad[0]:pad[0] + w]
                out[:, start:stop] = probs.permute(1, 0, 2, 3).cpu().numpy()
                progress(stop / z, f"slice {stop}/{z}")
        finally:
            for future in pending:
                future.cancel()
        return out

    def _cpu_pool(self, workers: int) -> ThreadPoolExecutor:
        """One thread (of one intra-op thread) per CPU thread, kept for the next volume: fresh
        threads would start with cold allocator arenas and caches, which costs more than they gain."""
        if self._pool is None or self._pool_workers != workers:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="medsegrwkv-cpu",
                                            initializer=torch.set_num_threads, initargs=(1,))
            self._pool_workers = workers
        return self._pool

    def _predict_3d(self, volume: np.ndarray, tta: bool, progress: ProgressFn, cancel: CancelFn) -> np.ndarray:
        roi = self.spec.roi_size
        assert roi is not None, f"3D model {self.spec.name} registered without roi_size"
        done = [0]

        def window_fn(batch: torch.Tensor) -> torch.Tensor:
            check_cancel(cancel)
            done[0] += 1
            progress(min(0.99, done[0] / max(1, n_windows)), f"window {done[0]}/{n_windows}")
            return self.batch_probabilities(batch, tta)

        grid = [max(1, int(np.ceil((s - r) / (r * 0.75))) + 1) if s > r else 1 for s, r in zip(volume.shape, roi)]
        n_windows = int(np.prod(grid))
        x = torch.from_numpy(volume[None, None]).to(self.device)
        probs = sliding_window_inference(x, roi, sw_batch_size=1, predictor=window_fn, overlap=0.25,
                                         mode="gaussian")
        progress(1.0, "windows done")
        return probs[0].cpu().numpy().astype(np.float32)

    def predict_probabilities(self, volume: np.ndarray, tta: bool | None = None, progress: ProgressFn = no_progress,
                              cancel: CancelFn = never_cancelled) -> np.ndarray:
        """Class probabilities (4, z, y, x) for a normalised stack (z, y, x) on the model grid, or for
        a 2D network's input already made (`network_input`, e.g. of several phases end to end). `tta`
        None: on a GPU only (`resolve_tta`)."""
        tta = resolve_tta(tta, self.device)
        try:
            if self.spec.spatial_dims == 3:
                return self._predict_3d(volume, tta, progress, cancel)
            return self._predict_2d(self.network_input(volume) if volume.ndim == 3 else volume, tta, progress, cancel)
        except torch.OutOfMemoryError as exc:
            raise MedSegError(f"The {self.device.type.upper()} ran out of memory for a volume of "
                              f"{volume.shape}; use a smaller ROI or --device cpu.",
                              code=ErrorCode.OUT_OF_MEMORY) from exc

    # -- whole volumes ------------------------------------------------------------------------
    def segment(self, image: sitk.Image, roi: Roi | None = None, tta: bool | None = None, postprocessing: bool = True,
                progress: ProgressFn = no_progress, cancel: CancelFn = never_cancelled) -> sitk.Image:
        """Labelmap (uint8, ACDC labels) with exactly `image`'s geometry."""
        return self.segment_phases([image], roi, tta, postprocessing, progress=progress, cancel=cancel)[0]

    def segment_phases(self, images: Sequence[sitk.Image], roi: Roi | None = None, tta: bool | None = None,
                       postprocessing: bool = True, phase_names: Sequence[int] | None = None,
                       progress: ProgressFn = no_progress, cancel: CancelFn = never_cancelled,
                       notes: list[str] | None = None) -> list[sitk.Image]:
        """Labelmaps of several phases of one cine. A 2D network gets the slices of consecutive phases
        in one stream of full batches (a 12-slice phase alone leaves its last batch part-empty);
        phases whose network grids differ, and 3D networks, go one phase at a time. Progress
        messages name the phases by `phase_names` (default: none for one phase, else 0, 1, ...).

        A heart outside the sizes the model was trained on (its manifest's
        `preprocessing.heart_size_mm`) is segmented again at a pixel size that shows it at the
        nearest trained size (`heart_size`); a sentence saying so goes into `notes`. Where the
        manifest turns the basal-RV trim on, several phases get it only where they are systolic
        (`postprocess.systolic_phases`), a phase alone always. `tta` None: on a GPU only. Phases
        noisier than the model's training studies are smoothed first (`preprocess.noise`), and a
        note says so."""
        tta = resolve_tta(tta, self.device)
        smoothed: list[float] = []
        labels = self._segment_phases(images, roi, tta, postprocessing, phase_names, progress, cancel, 1.0, smoothed)
        if smoothed:
            note = (f"The image is noisier than every study the model was trained on (noise {max(smoothed):.3f} of "
                    f"the intensity range, at most {self.manifest['preprocessing']['noise_sigma'][1]:.3f} in "
                    "training), so it was smoothed with an edge-preserving filter before segmentation; check the "
                    "result.")
            _tell(note, notes)
        trained = self.manifest.get("preprocessing", {}).get("heart_size_mm")
        if not trained:  # weights that do not say their training hearts' sizes: nothing to measure against
            return labels
        diameter = max((d for image in labels if (d := labelmap_lv_diameter_mm(image)) is not None), default=None)
        factor = size_factor(diameter, trained)
        if factor == 1.0:
            return labels
        pixel = self._preprocessing(factor)["spacing_xy_mm"][0]
        note = (f"The heart measures {diameter:.0f} mm across (LV, largest slice), outside the "
                f"{trained[0]:.0f}-{trained[1]:.0f} mm of the model's training hearts, so it was segmented again "
                f"at {pixel:.2f} mm pixels, where it looks {'smaller' if factor > 1 else 'larger'}.")
        _tell(note, notes)

        def finished(fraction: float, message: str) -> None:  # the first pass already reported 1.0
            progress(1.0, f"heart size, second pass: {message}")

        return self._segment_phases(images, roi, tta, postprocessing, phase_names, finished, cancel, factor)

    def _preprocessing(self, factor: float) -> dict[str, Any]:
        """The manifest's preprocessing with its pixel size times `factor`."""
        prep = {**DEFAULT_PREPROCESSING, **self.manifest.get("preprocessing", {})}
        return {**prep, "spacing_xy_mm": [float(s) * factor for s in prep["spacing_xy_mm"]]}

    def _segment_phases(self, images: Sequence[sitk.Image], roi: Roi | None, tta: bool, postprocessing: bool,
                        phase_names: Sequence[int] | None, progress: ProgressFn, cancel: CancelFn,
                        factor: float, smoothed: list[float] | None = None) -> list[sitk.Image]:
        """Labelmaps at the manifest's pixel size times `factor`; `smoothed` collects the noise of the
        phases that `prepare_image` smoothed."""
        preprocessing = self._preprocessing(factor)
        regions = [roi.clipped(image.GetSize()) if roi is not None else None for image in images]
        subs = [crop_to_roi(image, region) if region is not None else image for image, region in zip(images, regions)]
        done, total = 0, sum(sub.GetSize()[slice_layout(sub)[0]] if self.spec.spatial_dims == 2 else 1 for sub in subs)
        names = list(phase_names) if phase_names is not None else (list(range(len(subs))) if len(subs) > 1 else [])
        results: list[sitk.Image] = []
        n, pending = 0, None  # pending: a phase prepared for a group it did not fit, first of the next
        while n < len(subs):
            first = pending or prepare_image(subs[n], preprocessing)
            group, pending = [first], None
            while (self.spec.spatial_dims == 2 and n + len(group) < len(subs)
                   and sum(p.array.shape[0] for p in group) < PHASE_BATCHES * self.batch_size):
                following = prepare_image(subs[n + len(group)], preprocessing)
                if following.array.shape[1:] != first.array.shape[1:]:
                    pending = following
                    break
                group.append(following)
            if smoothed is not None:
                smoothed.extend(p.smoothed_noise for p in group if p.smoothed_noise is not None)
            depths = [p.array.shape[0] for p in group]
            count = sum(depths) if self.spec.spatial_dims == 2 else 1
            shown = [str(names[k]) for k in range(n, n + len(group))] if names else []
            part = scaled(progress, done / total, min(1.0, (done + count) / total),
                          f"phase {'-'.join(dict.fromkeys([shown[0], shown[-1]]))}: " if shown else "")
            # each phase's slices get their neighbours from their own phase before the phases are joined
            joined = np.concatenate([self.network_input(p.array) for p in group])
            probs = self.predict_probabilities(joined, tta, part, cancel)
            for prepared, phase_probs in zip(group, np.split(probs, np.cumsum(depths)[:-1], axis=1)):
                results.append(self._finish(phase_probs, prepared, subs[n], regions[n], images[n], postprocessing,
                                            basal_rv=self.trim_basal_rv and len(subs) == 1))
                n += 1
            done += count
        if postprocessing and self.trim_basal_rv and len(results) > 1:
            results = trim_systolic_rv(results)
        return results

    def _finish(self, probs: np.ndarray, prepared: Prepared, sub: sitk.Image, region: Roi | None, image: sitk.Image,
                postprocessing: bool, basal_rv: bool) -> sitk.Image:
        """Network-grid probabilities -> labelmap in the input's own voxel layout and geometry."""
        probs = resample_probabilities(probs, prepared.network_grid, prepared.canonical.image)
        labels = probs.argmax(axis=0).astype(np.uint8)
        if postprocessing:
            labels = postprocess(labels, basal_rv=basal_rv)
        label_image = sitk.GetImageFromArray(labels)
        label_image.CopyInformation(prepared.canonical.image)
        restored = from_canonical(label_image, prepared.canonical, sub)
        return paste_from_roi(restored, region, image) if region is not None else restored
