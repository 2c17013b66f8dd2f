"""Run the benchmark tasks, add ratios and scaling exponents, write JSON and Markdown."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from medsegrwkv.io.text import write_text_atomic
from medsegrwkv.nets.registry import DEFAULT_MODELS, get_spec, list_models

RATIO_KEYS = ("params", "gflops", "study_latency_ms", "study_peak_mib")


@dataclass(frozen=True)
class Settings:
    device: str = "auto"
    repeats: int = 5
    study: tuple[int, int, int] = (10, 256, 256)  # slices, rows, columns
    cine: tuple[int, int, int] = (20, 12, 256)  # phases, slices, rows = columns: a whole cine end to end
    sizes_2d: tuple[int, ...] = (128, 256, 512, 1024)  # square slices
    sizes_3d: tuple[int, ...] = (64, 128, 256)  # in-plane size of 3D crops; depth is the model's crop depth
    biwkv_tokens: int = 4096
    biwkv_channels: int = 96
    loop_budget_s: float = 30.0  # per-token loop beyond this is extrapolated

    quick: bool = False

    def command(self, models: list[str]) -> str:
        """The command line that repeats this run."""
        return (f"medsegrwkv benchmark --models {','.join(models)} --device {self.device} --repeats {self.repeats} "
                f"--sizes {','.join(map(str, self.sizes_2d))} --crops {','.join(map(str, self.sizes_3d))}"
                + (" --quick" if self.quick else ""))


FULL = Settings()
QUICK = Settings(quick=True, repeats=1, study=(2, 64, 64), cine=(3, 2, 64), sizes_2d=(32, 64), sizes_3d=(32, 64), biwkv_tokens=256,
                 loop_budget_s=1.0)


def run_benchmark(models: list[str] | None, settings: Settings, output: Path, show_progress: bool = True
                  ) -> dict[str, Any]:
    """Measure `models` (default: every segmentation model; the default model is always added),
    write output/benchmark.json and output/benchmark.md, and return the report."""
    default = DEFAULT_MODELS["segmentation"]
    names = list(dict.fromkeys([default, *(models or [s.name for s in list_models("segmentation")])]))
    from medsegrwkv.benchmark.measure import model_and_route  # lazily: `-m ...measure` imports this package

    specs = [get_spec(model_and_route(n)[0]) for n in names]  # unknown names fail here, before any work
    cine_models = [n for n in dict.fromkeys([default, "unet2d"]) if n in names or n == default]
    steps = sum(2 + len(settings.sizes_2d if s.spatial_dims == 2 else settings.sizes_3d) for s in specs) + 2
    steps += 2 * len(cine_models)
    paired = [n for n, s in zip(names, specs)  # other plain-route 2D models, each against the default
              if n != default and not model_and_route(n)[1] and s.spatial_dims == 2 == specs[0].spatial_dims]
    steps += len(paired)
    output.mkdir(parents=True, exist_ok=True)
    common = {"device": settings.device, "repeats": settings.repeats}
    with tqdm(total=steps, desc="benchmark", unit="step", file=sys.stderr, disable=not show_progress) as bar:
        rows = [_run_task({"kind": "model", "model": n, "study": settings.study, "sizes_2d": settings.sizes_2d,
                           "sizes_3d": settings.sizes_3d, **common}, n, bar) for n in names]
        biwkv = _run_task({"kind": "biwkv", "tokens": settings.biwkv_tokens, "channels": settings.biwkv_channels,
                           "loop_budget_s": settings.loop_budget_s, **common}, "Bi-WKV", bar)
        refine = _run_task({"kind": "refine", "study": settings.study, "refine_size": settings.study[1], **common},
                           "click refinement", bar)
        cine = [_run_task({"kind": "cine", "model": n, "cine": settings.cine, **common}, f"{n} cine", bar)
                for n in cine_models]
        pairs = [_run_task({"kind": "paired", "models": [default, n], "study": settings.study,
                            "rounds": 2 * settings.repeats, **common}, f"{n} paired", bar) for n in paired]
    for row in rows:
        row["time_exponent"], row["memory_exponent"] = (_exponent(row.get("sweep", []), key)
                                                        for key in ("time_ms", "peak_mib"))
    report = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": settings.command(names),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "settings": asdict(settings),
        "default_model": default,
        "models": _with_ratios(rows, default),
        "biwkv": biwkv,
        "refine": refine,
        "cine": cine,
        "paired": pairs,
    }
    write_text_atomic(output / "benchmark.json", json.dumps(report, indent=2))
    write_text_atomic(output / "benchmark.md", render_markdown(report))
    return report


def _run_task(task: dict[str, Any], label: str, bar: tqdm) -> dict[str, Any]:
    """Run one task in a fresh interpreter, advancing the bar on its progress events."""
    cmd = [sys.executable, "-m", "medsegrwkv.benchmark.measure", json.dumps(task)]
    result: dict[str, Any] | None = None
    with tempfile.TemporaryFile("w+") as errors:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if not line.startswith("{"):
                    continue
                event = json.loads(line)
                if event["event"] == "progress":
                    bar.update(1)
                    bar.set_postfix_str(f"{label}: {event['step']}")
                elif event["event"] == "result":
                    result = event["result"]
        if result is not None:
            return result
        errors.seek(0)
        tail = [l for l in errors.read().splitlines() if l.strip()][-1:] or [f"exit code {proc.returncode}"]
        killed = " (killed: out of memory?)" if proc.returncode in (-9, 137) else ""
        return {"name": task.get("model", label), "error": tail[0][:300] + killed}


def _exponent(sweep: list[dict[str, Any]], key: str) -> float | None:
    """Slope of log(key) against log(voxels) by least squares: cost ~ voxels^slope."""
    points = [(p["voxels"], p[key]) for p in sweep if p.get(key) and p[key] > 0]
    if len({x for x, _ in points}) < 2:
        return None
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def _with_ratios(rows: list[dict[str, Any]], default: str) -> list[dict[str, Any]]:
    base = next((r for r in rows if r["name"] == default and "error" not in r), None)
    for row in rows:
        row["ratios"] = None if base is None or "error" in row else {
            k: row[k] / base[k] if base[k] else None for k in RATIO_KEYS}
    return rows


def _cell(value: float | None, ratio: float | None = None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value:,.{digits}f}"
    return f"{text} (×{ratio:.2f})" if ratio is not None else text


def _threads(count: int | None) -> str:
    return f"{count} thread{'' if count == 1 else 's'}"


def render_markdown(report: dict[str, Any]) -> str:
    default = report["default_model"]
    s = report["settings"]
    rows = report["models"]
    first = next((r for r in rows if "error" not in r), {})
    lines = [
        "# Benchmark",
        "",
        f"`{report['command']}`, {report['created']}, on {first.get('device', '?')} "
        f"({_threads(first.get('threads'))}; {report['machine']['processor']}, {report['machine']['cpu_count']} "
        f"CPUs, torch {report['machine']['torch']}).",
        "",
        f"Ratios (×) are to the default model, `{default}`. GFLOPs by torch.utils.flop_counter (2 per "
        "multiply-add; element-wise work, such as VM-UNet's selective scan, is not counted) for one "
        "256×256 slice (2D) or one sliding-window crop (3D). Study: {0} central slices of the demo "
        "study's first phase at {1}×{2}, with each model's bundled weights where it has them (the RWKV "
        "network's time depends on its gates), else untrained ones; 2D models slice by slice in "
        "batches of 8, 3D models by sliding window over their crop; median of {3} runs after a warm-up. Peak memory: the working memory of a run above the "
        "loaded model, from the second of two runs in a row; the first run, which also sets up kernels "
        "once, is shown beside it. Method: {4}. Exponents: least-squares slope of log time and log "
        "memory against log voxels over the sweep below (1 = linear in the input size)."
        .format(*s["study"], s["repeats"], first.get("memory_method") or "not measured on this platform"),
        "",
        "| model | dims | params (M) | GFLOPs | study latency (ms) | study peak memory (MiB) | first run (MiB) "
        "| time exp. | memory exp. |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | | | | failed: {r['error']} | | | | |")
            continue
        q = r["ratios"] or {}
        name = f"**{r['name']}** (default)" if r["name"] == default else r["name"]
        cells = [f"{r['spatial_dims']}D", _cell(r["params"] / 1e6, q.get("params"), 2),
                 _cell(r["gflops"], q.get("gflops"), 2), _cell(r["study_latency_ms"], q.get("study_latency_ms")),
                 _cell(r["study_peak_mib"], q.get("study_peak_mib")), _cell(r["study_first_run_peak_mib"]),
                 _cell(r["time_exponent"], digits=2), _cell(r["memory_exponent"], digits=2)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for dims in (2, 3):
        sweep_rows = [r for r in rows if r.get("spatial_dims") == dims and r.get("sweep")]
        if not sweep_rows:
            continue
        inputs = ["×".join(map(str, p["input"])) for p in sweep_rows[0]["sweep"]]
        lines += ["", f"## {dims}D resolution sweep: one {'slice' if dims == 2 else 'crop'}, time (ms) / peak "
                  "memory (MiB)", "", "| model | " + " | ".join(inputs) + " |", "|---" * (len(inputs) + 1) + "|"]
        failures = []
        for r in sweep_rows:
            cells = ["n/a" if "time_ms" not in p else f"{_cell(p['time_ms'])} / {_cell(p['peak_mib'])}"
                     for p in r["sweep"]]
            lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
            failures += [f"- {r['name']}: {p['error']}" for p in r["sweep"][:1] if "error" in p]
        lines += ["", "n/a:", *failures] if failures else []
    b = report["biwkv"]
    if "error" in b:
        lines += ["", f"## Bi-WKV operator\n\nfailed: {b['error']}"]
    else:
        how = (f"timed over the first {b['loop_tokens_timed']} tokens and extrapolated to all {b['tokens']} "
               "(every token costs the same)" if b["loop_extrapolated"] else "timed over all tokens")
        lines += ["", "## Bi-WKV operator", "",
                  f"T = {b['tokens']} tokens, C = {b['channels']} channels, batch 1, CPU ({_threads(b['threads'])}): "
                  f"the cumulative-sum form takes {b['biwkv_ms']:,.2f} ms; the per-token loop (each token's "
                  f"weighted mean over all T tokens, O(T²C) in all) takes {b['loop_ms']:,.0f} ms, {how}: "
                  f"{b['speedup']:,.0f}× slower. Largest difference between the two on the tokens computed: "
                  f"{b['max_abs_difference']:.1e}."]
    r = report.get("refine", {})
    if "error" in r:
        lines += ["", f"## Click refinement\n\nfailed: {r['error']}"]
    elif r:
        lines += ["", "## Click refinement", "",
                  f"`{r['model']}`, one click on a {r['slice'][0]}x{r['slice'][1]} slice of a {r['depth']}-slice "
                  f"volume, {r['device'].upper()} ({_threads(r['threads'])}): median **{r['median_ms']:,.1f} ms** "
                  "per click for the worker's whole path (mask decoding, click mapping, the network on the clicked "
                  "slice, mapping back, encoding the answer); the pipe to Slicer is not included."]
    pairs = [p for p in report.get("paired", []) if "error" not in p]
    if pairs:
        p = pairs[0]
        lines += ["", "## Study latency, paired with the default", "",
                  f"The study above timed for `{default}` and each other 2D model in {p['rounds']} alternating rounds "
                  f"in one process ({p['device'].upper()}, {_threads(p['threads'])}), so that a drift of the "
                  "machine's speed moves both alike: the median of the per-round ratios (model / default) is the "
                  "ratio to trust on a shared machine.", "",
                  "| model | default (ms) | model (ms) | ratio, median of rounds | range |", "|---|---|---|---|---|"]
        lines += [f"| {q['models'][1]} | {_cell(q['median_ms'][q['models'][0]])} | {_cell(q['median_ms'][q['models'][1]])} | "
                  f"×{q['ratio_median']:.2f} | ×{q['ratio_min']:.2f}-{q['ratio_max']:.2f} |" for q in pairs]
    lines += [f"\n{p.get('name', 'paired')} paired study failed: {p['error']}" for p in report.get("paired", []) if "error" in p]
    cine = [c for c in report.get("cine", []) if "error" not in c]
    if cine:
        c = cine[0]
        lines += ["", "## A whole cine, end to end", "",
                  f"{c['phases']} phases of {c['slices']} slices of {c['size'][0]}×{c['size'][1]} (a synthetic "
                  "phantom, 1.5 mm pixels) through `segment_study`, the study-level segmentation of the CLI, the "
                  "worker and `function`: preprocessing, slices of consecutive phases in shared batches, resampling "
                  f"back and post-processing; {c['device'].upper()} ({_threads(c['threads'])}).", "",
                  "| model | one phase (ms) | whole cine (ms) | ratio to one phase | per phase (ms) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {c['name']} | {_cell(c['one_phase_ms'])} | {_cell(c['cine_ms'])} | "
                  f"{_cell(c['ratio_to_one_phase'], digits=2)} | {_cell(c['ms_per_phase'])} |" for c in cine]
    lines += [f"\n{c['name']} whole cine failed: {c['error']}" for c in report.get("cine", []) if "error" in c]
    lines += ["", "Accuracy is not part of this run: validation Dice "
              "of trained weights, at one training budget, comes from `medsegrwkv compare` (docs/benchmark.md, "
              "*Accuracy at the same budget*).", ""]
    return "\n".join(lines)
