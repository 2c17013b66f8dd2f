"""What a plot in Slicer's plot view shows, as plain data: the table's columns, the series drawn
from them and the chart's titles and axes. quality (motion score per slice) and cardiac
(volume-time curves) describe their plots with these; MedSegRWKV.py turns a Plot into table,
plot-series and chart nodes in one place (MedSegRWKVLogic.showPlot)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

RGB01 = Tuple[float, float, float]


@dataclass(frozen=True)
class Series:
    name: str  # the plot series node's name (the legend)
    x: str  # column names in Plot.columns
    y: str
    colour: RGB01  # 0..1
    line: bool = False  # a line with markers (a curve) or markers only (a scatter)


@dataclass(frozen=True)
class Plot:
    title: str
    x_title: str
    y_title: str
    columns: Dict[str, List[float]]  # column name -> values, all of one length
    series: List[Series]
    y_range: Optional[Tuple[float, float]] = None  # None: automatic

    def __post_init__(self) -> None:
        lengths = {len(values) for values in self.columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"the columns of plot {self.title!r} differ in length: {sorted(lengths)}")
        for series in self.series:
            missing = {series.x, series.y} - set(self.columns)
            if missing:
                raise ValueError(f"series {series.name!r} names columns {sorted(missing)} that plot {self.title!r} lacks")
