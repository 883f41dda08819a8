"""The console's pictures, drawn server-side as SVG by pygal (no script, so a screenshot or a
page without JavaScript shows them; pygal's own tooltip script, fetched from a CDN, is off)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import pygal
from markupsafe import Markup
from pygal.style import Style

from tierflow_console.domain.samples import Point

_STYLE = Style(
    background="white",
    plot_background="white",
    foreground="#1f2937",
    foreground_strong="#111827",
    foreground_subtle="#6b7280",
    font_family="system-ui, sans-serif",
    label_font_size=12,
    major_label_font_size=12,
    legend_font_size=13,
    title_font_size=15,
    colors=(
        "#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed",
        "#0891b2", "#db2777", "#65a30d", "#92400e", "#475569",
    ),
)  # fmt: skip


def _svg(chart: pygal.graph.graph.Graph) -> Markup:
    svg: str = chart.render(is_unicode=True)
    # Inline in the page: drop the XML declaration a standalone file would carry.
    if svg.startswith("<?xml"):
        svg = svg[svg.index("?>") + 2 :]
    return Markup(svg)  # noqa: S704 - pygal escapes the labels and values it draws


def _common(title: str, *, height: int = 300, width: int = 900) -> dict[str, object]:
    return {
        "js": [],
        "style": _STYLE,
        "title": title,
        "width": width,
        "height": height,
        "show_dots": False,
        "legend_at_bottom": True,
        "legend_at_bottom_columns": 3,
        "truncate_legend": -1,
        "truncate_label": -1,
        "margin": 12,
        "no_data_text": "no data yet",
    }


def time_series(title: str, series: Mapping[str, Sequence[Point]], *, y_title: str) -> Markup:
    """Lines over wall time (lag per consumer group, records per second)."""
    chart = pygal.DateTimeLine(
        **_common(title, height=340),
        y_title=y_title,
        x_value_formatter=lambda at: at.strftime("%H:%M:%S"),
        x_label_rotation=0,
        show_minor_x_labels=False,
        x_labels_major_count=6,
        min_scale=3,
        max_scale=6,
        include_x_axis=True,
    )
    chart.legend_at_bottom_columns = max(1, min(4, len(series)))
    for name, points in series.items():
        chart.add(name, [(p.at, p.value) for p in points])
    return _svg(chart)


def stacked_area(
    title: str, times: Sequence[datetime], counts: Mapping[str, Sequence[int]]
) -> Markup:
    """How many customers hold each label of one dimension, snapshot by snapshot."""
    # Small multiples: drawn at about the size they are shown, so the text stays legible.
    chart = pygal.StackedLine(
        **_common(title, height=340, width=520),
        fill=True,
        x_label_rotation=0,
        show_minor_x_labels=False,
        x_labels_major_count=6,
        include_x_axis=True,
    )
    # About six time labels along the axis, whatever the number of snapshots.
    every = max(1, len(times) // 6)
    chart.x_labels = [t.strftime("%H:%M") if i % every == 0 else "" for i, t in enumerate(times)]
    for label, values in counts.items():
        chart.add(label, list(values))
    return _svg(chart)


def bars(title: str, counts: Mapping[str, int]) -> Markup:
    """One dimension's distribution now."""
    chart = pygal.HorizontalBar(**_common(title, height=max(150, 70 + 30 * len(counts)), width=520))
    chart.show_legend = False
    chart.x_labels = list(counts)
    chart.add("customers", list(counts.values()))
    return _svg(chart)
