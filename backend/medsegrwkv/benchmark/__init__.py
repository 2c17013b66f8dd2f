"""`medsegrwkv benchmark`: every model's size, cost, speed and memory in one run (docs/design.md §7).

`report.run_benchmark` starts one fresh process per model (`measure.py`), collects the numbers,
adds ratios to the default model and fitted scaling exponents, and writes benchmark.json and
benchmark.md. Accuracy is not measured here: it comes from training runs (`medsegrwkv train`,
`medsegrwkv evaluate`).
"""

from medsegrwkv.benchmark.report import FULL, QUICK, Settings, run_benchmark

__all__ = ["FULL", "QUICK", "Settings", "run_benchmark"]
