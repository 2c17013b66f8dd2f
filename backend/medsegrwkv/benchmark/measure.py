"""One benchmark task in a fresh process: `python -m medsegrwkv.benchmark.measure TASK_JSON`.

A task measures one model (parameters, GFLOPs, study latency, peak memory, resolution sweep) or
the Bi-WKV operator against a per-token loop. It prints JSON lines on stdout: `progress` events,
then one `result`. A fresh process per task keeps one model's memory out of the next one's
measurement and lets the CPU memory method below work.

Peak memory is the extra memory a run needs above what the process held before it (the loaded
model included), in MiB, measured for two runs in a row: the first includes what a first run
sets up once (JIT-compiled kernels, algorithm searches, weight layouts), the second is the
working memory of every later run; ratios and exponents use the second.
- CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory_allocated.
- CPU (Linux): the runs happen in a forked copy of the process, made before this process has
  computed anything, so that no cache an earlier measurement left behind hides memory. The copy
  tells glibc to map every allocation of 64 KiB or more on its own and to give freed memory back
  (mallopt, malloc_trim), so that the resident set follows the live tensors, then for each run
  resets the resident-set high-water mark (5 to /proc/self/clear_refs) and reports VmHWM minus
  the VmRSS before. Timing stays in this process on the default allocator (mapping every tensor
  afresh makes CPU inference 2-3x slower). The copy runs single-threaded, because an OpenMP
  thread pool does not survive fork. Elsewhere CPU memory is not measured.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from medsegrwkv.inference.device import describe_device, resolve_device

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter number
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one run of `fn`, with the device's queued work finished on both sides."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, list[float]]:
    """Median wall time of `fn` over `repeats` runs after one warm-up run."""
    fn()
    samples = [time_ms(fn, device) for _ in range(repeats)]
    return statistics.median(samples), [round(s, 2) for s in samples]


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_method(device: torch.device) -> str | None:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated"
    if hasattr(os, "fork") and _CLEAR_REFS.exists():
        return "VmHWM of a forked copy (Linux /proc/self/clear_refs), glibc mmap threshold 64 KiB"
    return None


def peak_mib(fn: Callable[[], object], device: torch.device) -> list[float] | None:
    """Extra memory, in MiB, of two calls of `fn` in a row at their peaks (see the module docstring)."""
    if device.type == "cuda":
        def start() -> int:
            _sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            return torch.cuda.memory_allocated(device)

        def high_water() -> int:
            _sync(device)
            return torch.cuda.max_memory_allocated(device)

        return _two_runs(fn, start, high_water, 2 ** 20)
    if memory_method(device) is None:
        return None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the copy: measure, report through the pipe, exit without running any cleanup
        status = 1
        try:
            os.close(read)
            # The parent's OpenMP pool does not survive fork (its threads are gone, its locks may be
            # held): a parallel region here can hang forever. One thread never enters the pool.
            torch.set_num_threads(1)
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
            gc.collect()
            libc.malloc_trim(0)

            def start() -> int:
                _CLEAR_REFS.write_text("5")
                return _status_kib("VmRSS")

            os.write(write, json.dumps(_two_runs(fn, start, partial(_status_kib, "VmHWM"), 1024)).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(text) if text else None  # empty: the copy failed or was killed (out of memory)


def _two_runs(fn: Callable[[], object], start: Callable[[], int], high_water: Callable[[], int],
              unit: int) -> list[float]:
    peaks = []
    for _ in range(2):
        base = start()
        fn()
        peaks.append((high_water() - base) / unit)
    return peaks


ROUTES = ("plain",)
"""`NAME:plain` measures a network with a fast inference route (the RWKV networks) on its plain
route (`MedSegRWKV.use_reference`), the code as it ran before that route, in the same run."""


def model_and_route(name: str) -> tuple[str, str]:
    """"medsegrwkv-t:plain" -> ("medsegrwkv-t", "plain"); a plain name has route ""."""
    from medsegrwkv.errors import ErrorCode, MedSegError

    model, _, route = name.partition(":")
    if route and route not in ROUTES:
        raise MedSegError(f"Unknown route '{route}' in '{name}'; the only route is {', '.join(ROUTES)}.",
                          code=ErrorCode.BAD_ARGUMENT)
    return model, route


def demo_volume(shape: tuple[int, int, int]) -> np.ndarray:
    """The bundled demo study's first phase as a normalised (z, y, x) volume of `shape`: its central
    slices, resized in-plane. Real anatomy, so that the RWKV network's gates choose their paths as
    on users' studies (its cost per path differs a little: grouped windows, table sizes)."""
    import SimpleITK as sitk
    import torch.nn.functional as F

    from medsegrwkv.io import SAMPLE_CASE, read_study, sample_data_dir

    volume = sitk.GetArrayFromImage(read_study(sample_data_dir() / SAMPLE_CASE / "dicom").phases[0]).astype(np.float32)
    depth = shape[0]
    volume = np.concatenate([volume] * -(-depth // volume.shape[0]))  # repeated when more slices are asked for
    start = (volume.shape[0] - depth) // 2
    slices = torch.from_numpy(volume[start:start + depth])[:, None]
    slices = F.interpolate(slices, size=shape[1:], mode="bilinear", align_corners=False)[:, 0].numpy()
    return (slices - slices.mean()) / slices.std()


def timed_model(name: str, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The bundled weights where the model has them, else an untrained copy, and which it is.
    The RWKV network's gates come from its weights (each window takes its gate's strongest path)."""
    from medsegrwkv.nets.registry import create_model
    from medsegrwkv.weights import WeightsStatus, load_model, weights_status

    if weights_status(name) is WeightsStatus.VERIFIED:
        return load_model(name, device)[0].eval(), "bundled"
    torch.manual_seed(0)
    return create_model(name).to(device).eval(), "untrained"


def measure_model(task: dict[str, Any]) -> dict[str, Any]:
    from medsegrwkv.inference.segmenter import Segmenter
    from medsegrwkv.nets.complexity import count_gflops, count_parameters, reference_input_shape
    from medsegrwkv.nets.registry import get_spec

    label, repeats = task["model"], task["repeats"]
    name, route = model_and_route(label)
    device = resolve_device(task["device"])
    spec = get_spec(name)
    model, weights = timed_model(name, device)
    if route == "plain":
        if not hasattr(model, "use_reference"):
            raise ValueError(f"{name} has no fast route to leave")
        model.use_reference(True)
    result: dict[str, Any] = {"name": label, "spatial_dims": spec.spatial_dims, "params": count_parameters(model),
                              "gflops_input": list(reference_input_shape(name)), "device": describe_device(device),
                              "threads": torch.get_num_threads(), "memory_method": memory_method(device),
                              "weights": weights}
    segmenter = Segmenter(model, {"architecture": name}, device)
    study = demo_volume(tuple(task["study"]))
    sizes = task["sizes_2d"] if spec.spatial_dims == 2 else task["sizes_3d"]
    depth = (spec.roi_size or (16,))[0]
    shapes = [(1, 1, size, size) if spec.spatial_dims == 2 else (1, 1, depth, size, size) for size in sizes]
    sweep: list[dict[str, Any]] = [{"input": list(shape[2:]), "voxels": math.prod(shape[2:])} for shape in shapes]
    with torch.inference_mode():
        # Memory first: on the CPU each run is a forked copy of a process that has computed nothing yet.
        _store_peaks(result, "study_", peak_mib(partial(segmenter.predict_probabilities, study), device))
        for point, shape in zip(sweep, shapes):
            _store_peaks(point, "", peak_mib(partial(segmenter.model, torch.zeros(shape, device=device)), device))
        emit("progress", step="memory")
        result["gflops"] = count_gflops(model, reference_input_shape(name))
        result["study_latency_ms"], result["study_latency_samples_ms"] = median_ms(
            partial(segmenter.predict_probabilities, study), device, repeats)
        emit("progress", step="study")
        for point, shape in zip(sweep, shapes):
            try:
                point["time_ms"], _ = median_ms(partial(segmenter.model, torch.zeros(shape, device=device)),
                                                device, repeats)
            except (ValueError, RuntimeError) as exc:  # a network fixed to one crop, or out of memory
                point["error"] = str(exc).splitlines()[0][:200]
                point["peak_mib"] = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            emit("progress", step=f"sweep {'x'.join(map(str, shape[2:]))}")
    result["sweep"] = sweep
    return result


def _store_peaks(record: dict[str, Any], prefix: str, peaks: list[float] | None) -> None:
    first, later = peaks or (None, None)
    record[f"{prefix}first_run_peak_mib"], record[f"{prefix}peak_mib"] = first, later


def _wkv_token(t: int, w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bi-WKV of token t by its definition: a weighted mean over all T tokens, O(T C)."""
    T = k.shape[0]
    gap = ((t - torch.arange(T, dtype=k.dtype)).abs() - 1)[:, None]
    logits = -gap * (w / T) + k
    logits[t] = u / T + k[t]
    weights = torch.exp(logits - logits.amax(dim=0))
    return (weights * v).sum(0) / weights.sum(0)


def measure_biwkv(task: dict[str, Any]) -> dict[str, Any]:
    """The O(B T C) operator against the naive per-token evaluation (O(T^2 C) in all), on the CPU.
    The loop runs token by token until `loop_budget_s`; beyond that its time is extrapolated
    from the tokens done (it costs the same for every token)."""
    from medsegrwkv.nets.biwkv import biwkv

    T, C, budget = task["tokens"], task["channels"], task["loop_budget_s"]
    gen = torch.Generator().manual_seed(0)
    w, u = torch.randn(C, generator=gen) * 5, torch.randn(C, generator=gen)
    k, v = torch.randn(1, T, C, generator=gen), torch.randn(1, T, C, generator=gen)
    cpu = torch.device("cpu")
    with torch.inference_mode():
        fast_ms, _ = median_ms(lambda: biwkv(w, u, k, v), cpu, task["repeats"])
        fast = biwkv(w, u, k, v)[0]
        start = time.perf_counter()
        done, error = 0, 0.0
        while done < T and (done == 0 or time.perf_counter() - start < budget):
            error = max(error, float((_wkv_token(done, w, u, k[0], v[0]) - fast[done]).abs().max()))
            done += 1
        loop_ms = (time.perf_counter() - start) * 1e3 * T / done
    emit("progress", step="biwkv")
    return {"tokens": T, "channels": C, "biwkv_ms": fast_ms, "loop_ms": loop_ms, "loop_tokens_timed": done,
            "loop_extrapolated": done < T, "speedup": loop_ms / fast_ms, "max_abs_difference": error,
            "threads": torch.get_num_threads()}


def measure_refine(task: dict[str, Any]) -> dict[str, Any]:
    """One click as the worker answers it: decode the mask, map the click, refine its slice on the
    network grid, map back and encode the changed slice. Installed weights when there are some
    (the time does not depend on them)."""
    import numpy as np
    import SimpleITK as sitk

    from medsegrwkv.engine.protocol import decode_mask, encode_mask
    from medsegrwkv.inference.device import resolve_device
    from medsegrwkv.interactive import InteractiveImage, Refiner, VoxelClick
    from medsegrwkv.nets.registry import DEFAULT_MODELS, create_model, model_config
    from medsegrwkv.weights import WeightsStatus, weights_status

    name, device = DEFAULT_MODELS["refinement"], resolve_device(task["device"])
    if weights_status(name) is WeightsStatus.VERIFIED:
        refiner = Refiner.from_pretrained(name, device)
    else:
        refiner = Refiner(create_model(name), {"name": name, "architecture": name, "config": model_config(name),
                                               "task": "refinement"}, device)
    depth, size = task["study"][0], task["refine_size"]
    volume = sitk.GetImageFromArray(np.random.default_rng(0).random((depth, size, size), dtype=np.float32))
    volume.SetSpacing((1.5625, 1.5625, 10.0))
    image = InteractiveImage(volume)
    mask = np.zeros((depth, size, size), dtype=bool)
    mask[depth // 2, size // 3: 2 * size // 3, size // 3: 2 * size // 3] = True
    message = encode_mask(mask)
    click = [VoxelClick((size / 2, size / 2, depth // 2), True)]

    def one_click() -> object:
        refined, changed, axis = image.refine(refiner, decode_mask(message), click, 3)
        return [encode_mask(np.take(refined, n, axis=2 - axis)) for n in changed]

    with torch.inference_mode():
        one_click()  # warm-up
        ms, _ = median_ms(one_click, device, task["repeats"])
    emit("progress", step="refine")
    return {"model": name, "slice": [size, size], "depth": depth, "median_ms": ms, "device": device.type,
            "threads": torch.get_num_threads()}


def phantom_phase(slices: int, size: int, phase: int, phases: int) -> Any:  # SimpleITK.Image
    """One phase of a synthetic short-axis cine (1.5 mm pixels, 8 mm slices): a bright LV disc that
    contracts over the cycle inside a ring, an RV crescent beside it, noise; the pipeline's
    resampling and post-processing see hearts, not noise."""
    import SimpleITK as sitk

    rng = np.random.default_rng(phase)
    y, x = np.mgrid[:size, :size] / size
    squeeze = 1.0 - 0.3 * math.sin(math.pi * phase / max(1, phases))  # end-systole mid-cycle
    lv = np.hypot(x - 0.5, y - 0.5)
    volume = []
    for k in range(slices):
        taper = 1.0 - 0.5 * k / max(1, slices - 1)  # smaller towards the apex
        radius = 0.09 * squeeze * taper
        image = 0.2 + 0.8 * (lv < radius) + 0.3 * ((lv >= radius) & (lv < radius + 0.04))
        image = image + 0.6 * ((np.hypot(x - 0.36, y - 0.5) < 1.4 * radius) & (lv >= radius + 0.04))
        volume.append(image + 0.05 * rng.standard_normal((size, size)))
    result = sitk.GetImageFromArray(np.asarray(volume, dtype=np.float32) * 300.0)
    result.SetSpacing((1.5, 1.5, 8.0))
    return result


def measure_paired(task: dict[str, Any]) -> dict[str, Any]:
    """The default's and another 2D model's study latency in alternating rounds, in one process.
    The per-model tasks time one model a minute after the other, and on a shared machine whose
    speed drifts (other tenants) their ratio moves by 10-20%; alternating exposes both to the same
    drift, so the median of the per-round ratios is the comparison to trust."""
    from medsegrwkv.inference.segmenter import Segmenter

    device = resolve_device(task["device"])
    base, other = task["models"]
    segmenters, weights = {}, {}
    for name in (base, other):
        model, weights[name] = timed_model(name, device)
        segmenters[name] = Segmenter(model, {"architecture": name}, device)
    study = demo_volume(tuple(task["study"]))
    samples: dict[str, list[float]] = {base: [], other: []}
    with torch.inference_mode():
        for segmenter in segmenters.values():
            segmenter.predict_probabilities(study, tta=False)  # warm-up
        for _ in range(task["rounds"]):
            for name, segmenter in segmenters.items():
                samples[name].append(time_ms(partial(segmenter.predict_probabilities, study, tta=False), device))
        emit("progress", step="paired study")
    ratios = [o / b for b, o in zip(samples[base], samples[other])]
    return {"models": [base, other], "device": describe_device(device), "threads": torch.get_num_threads(),
            "weights": weights, "rounds": len(ratios), "samples_ms": samples,
            "median_ms": {name: statistics.median(times) for name, times in samples.items()},
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def measure_cine(task: dict[str, Any]) -> dict[str, Any]:
    """A whole cine end to end through segment_study (the study-level segmentation the CLI, the
    worker and `function` use: preprocessing, batches across phases, resampling back, post-
    processing, and its default TTA: none on a CPU, four views on a GPU), against one phase of it; bundled
    weights where the model has them (`timed_model`)."""
    from medsegrwkv.inference.segmenter import Segmenter
    from medsegrwkv.inference.study import segment_study
    from medsegrwkv.io import Study

    name, device = task["model"], resolve_device(task["device"])
    phases, slices, size = task["cine"][0], task["cine"][1], task["cine"][2]
    model, weights = timed_model(name, device)
    segmenter = Segmenter(model, {"name": name, "architecture": name, "labels": []}, device)
    cine = Study(Path("<phantom>"), [phantom_phase(slices, size, p, phases) for p in range(phases)], None, "phantom")
    one = Study(Path("<phantom>"), cine.phases[:1], None, "phantom")
    with torch.inference_mode():
        segment_study(one, [0], segmenter)  # warm-up
        one_ms, _ = median_ms(partial(segment_study, one, [0], segmenter), device, task["repeats"])
        emit("progress", step="cine: one phase")
        cine_ms, _ = median_ms(partial(segment_study, cine, list(range(phases)), segmenter), device,
                               max(1, task["repeats"] // 2))
        emit("progress", step=f"cine: {phases} phases")
    return {"name": name, "phases": phases, "slices": slices, "size": [size, size], "device": describe_device(device),
            "threads": torch.get_num_threads(), "weights": weights, "one_phase_ms": one_ms, "cine_ms": cine_ms,
            "ratio_to_one_phase": cine_ms / one_ms, "ms_per_phase": cine_ms / phases}


def main(argv: list[str] | None = None) -> int:
    task = json.loads((argv or sys.argv[1:])[0])
    measure = {"biwkv": measure_biwkv, "refine": measure_refine, "cine": measure_cine,
               "paired": measure_paired}.get(task["kind"], measure_model)
    result = measure(task)
    emit("result", result=result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
