"""Server-side SVG charts for the operator pages: plain strings, no JavaScript, no chart library.

Every text that reaches the SVG is escaped here, so a chart is safe to embed as markup. Series and
bars carry ``data-*`` attributes (name, value) that tests and scripts can read back.

>>> svg = bar_chart([("verbosity", -0.12), ("formatting", 0.01)], title="By mode")
>>> svg.count('class="bar"'), 'data-label="verbosity"' in svg
(2, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Literal

_FONT = 'font-family="system-ui, sans-serif" font-size="11"'


@dataclass(frozen=True)
class Axis:
    """A y axis: its label and range."""

    label: str
    low: float
    high: float


@dataclass(frozen=True)
class Series:
    """A line: ``points`` are ``(x, y)``, ``y`` None for a gap; ``hints`` a tooltip per point."""

    name: str
    label: str
    points: Sequence[tuple[float, float | None]]
    axis: Literal["left", "right"] = "left"
    colour: str = "#2458c6"
    hints: Sequence[str] = field(default_factory=tuple)


def fmt(value: float) -> str:
    """A short number for ticks and tooltips.

    >>> fmt(0.5), fmt(12.345), fmt(-0.00012), fmt(1500.0)
    ('0.5', '12.3', '-0.00012', '1500')
    """
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    digits = max(0, 2 - int(math.floor(math.log10(abs(value)))))
    return f"{value:.{digits}f}".rstrip("0").rstrip(".") if digits else f"{value:.0f}"


def padded_range(values: Sequence[float], *, pad: float = 0.08) -> tuple[float, float]:
    """``(low, high)`` around ``values`` with a margin; ``(0, 1)`` for none.

    >>> padded_range([1.0, 2.0])
    (0.92, 2.08)
    """
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    margin = (high - low) * pad or abs(high) * pad or 1.0
    return round(low - margin, 12), round(high + margin, 12)


def line_chart(series: Sequence[Series], *, x_range: tuple[float, float], left: Axis, right: Axis | None = None,
               x_ticks: Sequence[tuple[float, str]] = (), markers: Sequence[tuple[float, str]] = (),
               title: str, width: int = 900, height: int = 320) -> str:
    """Lines over a shared x axis, each on the left or the right y axis; ``markers`` draw labelled
    vertical lines (an alert's start)."""
    m_left, m_right, m_top, m_bottom = 64, 64 if right else 20, 28, 42
    plot_w, plot_h = width - m_left - m_right, height - m_top - m_bottom
    x0, x1 = x_range
    span = (x1 - x0) or 1.0

    def x_of(x: float) -> float:
        return m_left + (x - x0) / span * plot_w

    def y_of(y: float, axis: Axis) -> float:
        return m_top + plot_h - (y - axis.low) / ((axis.high - axis.low) or 1.0) * plot_h

    parts = [_open(width, height, title),
             f'<rect x="{m_left}" y="{m_top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#ccd"/>']
    for axis, at, anchor, side in ((left, m_left, "end", -6), (right, m_left + plot_w, "start", 6)):
        if axis is None:
            continue
        for k in range(5):
            value = axis.low + (axis.high - axis.low) * k / 4
            y = y_of(value, axis)
            parts.append(f'<text x="{at + side:.1f}" y="{y + 4:.1f}" text-anchor="{anchor}" {_FONT} '
                         f'fill="#556">{escape(fmt(value))}</text>')
            if axis is left:
                parts.append(f'<line x1="{m_left}" x2="{m_left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eef"/>')
        x_label = 14 if axis is left else width - 14
        parts.append(f'<text class="axis-label" transform="translate({x_label},{m_top + plot_h / 2:.1f}) rotate(-90)" '
                     f'text-anchor="middle" {_FONT}>{escape(axis.label)}</text>')
    for x, label in x_ticks:
        parts.append(f'<text x="{x_of(x):.1f}" y="{m_top + plot_h + 16}" text-anchor="middle" {_FONT} '
                     f'fill="#556">{escape(label)}</text>')
    for x, label in markers:
        parts.append(f'<g class="marker"><line x1="{x_of(x):.1f}" x2="{x_of(x):.1f}" y1="{m_top}" '
                     f'y2="{m_top + plot_h}" stroke="#c0392b" stroke-dasharray="4 3"/><text x="{x_of(x) + 4:.1f}" '
                     f'y="{m_top + 12}" {_FONT} fill="#c0392b">{escape(label)}</text></g>')
    for n, line in enumerate(series):
        axis = left if line.axis == "left" or right is None else right
        shown = sum(1 for _, py in line.points if py is not None and math.isfinite(py))
        parts.append(f'<g class="series" data-series="{escape(line.name)}" data-points="{shown}">')
        for run in _runs(line.points):
            coords = " ".join(f"{x_of(x):.1f},{y_of(y, axis):.1f}" for x, y in run)
            parts.append(f'<polyline points="{coords}" fill="none" stroke="{line.colour}" stroke-width="2"/>')
        for i, (px, py) in enumerate(line.points):
            if py is None or not math.isfinite(py):
                continue
            hint = line.hints[i] if i < len(line.hints) else fmt(py)
            parts.append(f'<circle cx="{x_of(px):.1f}" cy="{y_of(py, axis):.1f}" r="2.5" fill="{line.colour}" '
                         f'data-value="{py:.6g}"><title>{escape(line.label)}: {escape(hint)}</title></circle>')
        parts.append("</g>")
        legend_x = m_left + 8 + n * 250
        parts.append(f'<g class="legend"><rect x="{legend_x}" y="8" width="14" height="4" fill="{line.colour}"/>'
                     f'<text x="{legend_x + 18}" y="13" {_FONT}>{escape(line.label)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(items: Sequence[tuple[str, float]], *, title: str, width: int = 520, bar_height: int = 18) -> str:
    """Horizontal bars around zero (negative to the left), one per ``(label, value)``."""
    m_left, m_right, gap = 150, 70, 6
    height = 16 + len(items) * (bar_height + gap)
    plot_w = width - m_left - m_right
    extent = max((abs(v) for _, v in items if math.isfinite(v)), default=0.0) or 1.0
    has_negative = any(v < 0 for _, v in items)
    has_positive = any(v > 0 for _, v in items)
    zero = m_left + (plot_w / 2 if has_negative and has_positive else plot_w if has_negative else 0)
    scale = plot_w / 2 / extent if has_negative and has_positive else plot_w / extent
    parts = [_open(width, height, title)]
    for i, (label, value) in enumerate(items):
        y = 8 + i * (bar_height + gap)
        if not math.isfinite(value):
            value = 0.0
        length = abs(value) * scale
        x = zero - length if value < 0 else zero
        colour = "#c0392b" if value < 0 else "#2e8b57"
        parts.append(f'<g class="bar-row"><text x="{m_left - 6}" y="{y + bar_height - 5}" text-anchor="end" '
                     f'{_FONT}>{escape(label)}</text>'
                     f'<rect class="bar" data-label="{escape(label)}" data-value="{value:.6g}" x="{x:.1f}" y="{y}" '
                     f'width="{max(length, 0.5):.1f}" height="{bar_height}" fill="{colour}">'
                     f'<title>{escape(label)}: {escape(fmt(value))}</title></rect>'
                     f'<text x="{width - m_right + 6}" y="{y + bar_height - 5}" {_FONT} fill="#556">'
                     f'{escape(fmt(value))}</text></g>')
    parts.append(f'<line x1="{zero:.1f}" x2="{zero:.1f}" y1="4" y2="{height - 4}" stroke="#556"/></svg>')
    return "".join(parts)


def _open(width: int, height: int, title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}"><title>{escape(title)}</title>')


def _runs(points: Sequence[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """The stretches of ``points`` without gaps (a line never bridges an empty bin)."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if y is None or not math.isfinite(y):
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((x, y))
    return [run for run in runs if run]
