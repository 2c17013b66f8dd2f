"""Pictures of cardiac function (matplotlib, imported only when a picture is asked for).

matplotlib is an optional extra (`pip install medsegrwkv[plots]`): 3D Slicer's Python may lack
it, so `require_matplotlib` says so in one sentence before any work is done.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.io.atomic import write_bytes_atomic

from .cardiac import CardiacFunction


def require_matplotlib() -> Any:
    """matplotlib.pyplot on the Agg backend, or one sentence (missing_dependency) when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MedSegError("A PNG picture needs matplotlib, which this Python lacks; install it with "
                          "`pip install matplotlib` (or medsegrwkv[plots]).", code=ErrorCode.MISSING_DEPENDENCY) from exc
    return plt


def save_figure_atomic(figure: Any, path: str | Path, dpi: int = 120) -> None:
    """Render a matplotlib figure to PNG in memory and write it atomically (medsegrwkv.io.atomic)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    figure.clf()
    import matplotlib.pyplot as plt

    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())


def save_curve_png(function: CardiacFunction, path: str | Path, title: str | None = None) -> None:
    """The volume-time curves (LV cavity, RV cavity, myocardium) with ED and ES marked."""
    plt = require_matplotlib()
    timed = function.trigger_times_ms is not None
    x = list(function.trigger_times_ms) if timed else list(range(function.phases))
    figure, axes = plt.subplots(figsize=(7, 4.2))
    axes.plot(x, function.lv_ml, "o-", color="#d62728", label="LV cavity")
    if function.rv_ml is not None:
        axes.plot(x, function.rv_ml, "s-", color="#1f77b4", label="RV cavity")
    if function.myo_ml is not None:
        axes.plot(x, function.myo_ml, "^-", color="#2ca02c", label="LV myocardium")
    for phase, name in ((function.ed_phase, "ED"), (function.es_phase, "ES")):
        axes.axvline(x[phase], color="grey", linestyle="--", linewidth=1)
        right = phase > (function.phases - 1) / 2  # label on the inner side of the line
        axes.annotate(f"{name} (phase {phase})", (x[phase], axes.get_ylim()[1]), textcoords="offset points",
                      xytext=(-3 if right else 3, -12), ha="right" if right else "left", fontsize=8, color="grey")
    lv = function.lv
    summary = f"LV EF {lv['ef_percent']:.1f}%" if lv.get("ef_percent") is not None else "LV EF n/a"
    if function.rv is not None and function.rv.get("ef_percent") is not None:
        summary += f", RV EF {function.rv['ef_percent']:.1f}%"
    axes.set_title(f"{title + ': ' if title else ''}volume over the cardiac cycle ({summary})", fontsize=10)
    axes.set_xlabel("trigger time (ms)" if timed else "phase")
    axes.set_ylabel("volume (mL)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    save_figure_atomic(figure, path)
