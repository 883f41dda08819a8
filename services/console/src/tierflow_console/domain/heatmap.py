"""A what-if's migration matrix as a heat map: each cell's count and its share of the row."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class HeatRow:
    before: str
    total: int
    cells: tuple[tuple[int, float], ...]  # (customers, share of the row) per target label


def heat_rows(matrix: Mapping[str, Mapping[str, int]]) -> tuple[list[str], list[HeatRow]]:
    targets = sorted({to for row in matrix.values() for to in row})
    rows = []
    for before, row in sorted(matrix.items()):
        total = sum(row.values())
        cells = tuple((row.get(t, 0), row.get(t, 0) / (total or 1)) for t in targets)
        rows.append(HeatRow(before, total, cells))
    return targets, rows


def heat_colour(share: float) -> str:
    """Background of a cell: white (0) to deep blue (1); the text stays readable on both."""
    share = min(max(share, 0.0), 1.0)
    light = 97 - int(share * 55)
    return f"background:hsl(217,91%,{light}%);color:{'#fff' if light < 60 else '#111827'}"
