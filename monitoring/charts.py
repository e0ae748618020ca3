"""Small server-rendered SVG charts: no JavaScript, readable without CSS, accessible.

Each chart carries a ``<title>`` and an ``aria-label`` that state what it shows; each bar
has its own ``<title>`` (label and value) and, given ``links``, is a link to the filtered
list behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape


def _fmt(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}".rstrip("0").rstrip(".")


def bar_chart_svg(
    series: Sequence[tuple[str, float]],
    *,
    title: str = "",
    width: int = 320,
    height: int = 120,
    color: str = "#3b82f6",
    links: Sequence[str | None] | None = None,
    unit: str = "",
    max_value: float | None = None,
    axis_labels: int = 3,
) -> str:
    """Vertical bars, one per (label, value); ``axis_labels`` labels along the bottom."""
    values = [float(v or 0) for _, v in series]
    top = max_value if max_value is not None else max(values, default=0)
    top = top if top > 0 else 1.0
    total = sum(values)
    summary = title or "Bar chart"
    aria = f"{summary}: {len(series)} bars, total {_fmt(total)}{unit}, max {_fmt(max(values, default=0))}{unit}"
    chart_h = height - 16
    n = max(len(series), 1)
    slot = width / n
    bar_w = max(slot - (1 if slot < 6 else 2), 1)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart bar-chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(aria)}"><title>{escape(aria)}</title>',
        f'<line x1="0" y1="{chart_h}" x2="{width}" y2="{chart_h}" stroke="#d1d5db"/>',
    ]
    for i, ((label, _), value) in enumerate(zip(series, values, strict=True)):
        h = chart_h * min(value / top, 1.0)
        bar = (
            f'<rect class="bar" x="{i * slot:.1f}" y="{chart_h - h:.1f}" width="{bar_w:.1f}" '
            f'height="{max(h, 0):.1f}" fill="{color}"><title>{escape(str(label))}: {_fmt(value)}{escape(unit)}</title></rect>'
        )
        link = links[i] if links is not None and i < len(links) else None
        out.append(f'<a href="{escape(link)}">{bar}</a>' if link else bar)
    if series and axis_labels:
        picks = sorted(
            {round(j * (len(series) - 1) / max(axis_labels - 1, 1)) for j in range(axis_labels)}
        )
        for i in picks:
            anchor = "start" if i == 0 else "end" if i == len(series) - 1 else "middle"
            out.append(
                f'<text x="{i * slot + (0 if anchor == "start" else bar_w if anchor == "end" else bar_w / 2):.1f}" '
                f'y="{height - 3}" font-size="10" font-family="sans-serif" fill="#6b7280" '
                f'text-anchor="{anchor}">{escape(str(series[i][0]))}</text>'
            )
    out.append("</svg>")
    return "".join(out)


def sparkline_svg(
    values: Sequence[float | None],
    *,
    title: str = "",
    width: int = 120,
    height: int = 24,
    color: str = "#2563eb",
) -> str:
    """A line through the values (None: a gap), with the last point marked."""
    nums = [float(v) for v in values if v is not None]
    low, high = (min(nums), max(nums)) if nums else (0.0, 1.0)
    span = (high - low) or 1.0
    last = _fmt(nums[-1]) if nums else "none"
    aria = (
        f"{title or 'Trend'}: {len(values)} points, last {last}, min {_fmt(low)}, max {_fmt(high)}"
    )
    step = width / max(len(values) - 1, 1)
    segments: list[list[str]] = [[]]
    point = ""
    for i, v in enumerate(values):
        if v is None:
            segments.append([])
            continue
        x, y = i * step, height - 2 - (float(v) - low) / span * (height - 4)
        segments[-1].append(f"{x:.1f},{y:.1f}")
        point = f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{color}"/>'
    lines = "".join(
        f'<polyline points="{" ".join(s)}" fill="none" stroke="{color}" stroke-width="1.5"/>'
        for s in segments
        if s
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart sparkline" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(aria)}"><title>{escape(aria)}</title>'
        f"{lines}{point}</svg>"
    )
