"""The overview's figures: ``monitoring.stats`` numbers drawn with ``monitoring.charts``.

Each figure carries the URL of the filtered list behind it. Rendered by the overview
view and, on each change (at most once a second), by the dashboard socket.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.safestring import mark_safe

from interventions.models import Intervention
from monitoring import charts, stats
from workflows.models import Run


def _throughput_chart(rows: list[dict[str, Any]]) -> str:
    series = [(r["minute"].strftime("%H:%M"), r["runs"]) for r in rows]
    return charts.bar_chart_svg(
        series, title="Runs finished per minute, last hour", width=360, height=110, unit=" runs"
    )


def _failure_chart(rows: list[dict[str, Any]]) -> str:
    series = [
        (r["minute"].strftime("%H:%M"), round(100 * r["rate"], 1) if r["rate"] is not None else 0)
        for r in rows
    ]
    return charts.bar_chart_svg(
        series,
        title="Failed step attempts per minute (% of finished), last hour",
        width=360,
        height=110,
        color="#ef4444",
        unit="%",
        max_value=100,
    )


_figures_lock = threading.Lock()
_figures: tuple[float, dict[str, Any]] | None = None


def _compute_figures() -> dict[str, Any]:
    throughput = stats.throughput_per_minute(hours=1)  # its rows carry the failures too
    finished = sum(r["attempts"] for r in throughput)
    failed = sum(r["failed"] for r in throughput)
    by_status = stats.runs_by_status()
    return {
        "by_status": by_status,
        "total_runs": sum(s["count"] for s in by_status),
        "interventions": stats.open_interventions(),
        "handling": stats.error_handling_success_rate(hours=24),
        "stalled": stats.stalled_runs(limit=10),
        "failing_steps": stats.failing_steps(hours=24, limit=8),
        "throughput_svg": mark_safe(_throughput_chart(throughput)),  # noqa: S308 (charts escape)
        "failure_svg": mark_safe(_failure_chart(throughput)),  # noqa: S308
        "runs_finished_hour": sum(r["runs"] for r in throughput),
        "failure_rate_hour": failed / finished if finished else None,
    }


def figures() -> dict[str, Any]:
    """The aggregate figures, computed at most once per FLOWMEND_OVERVIEW_CACHE_SECONDS in
    this process: on a large database they are the expensive part, and open dashboards
    share them (the live dashboard redraws about once a second)."""
    global _figures
    ttl = settings.FLOWMEND_OVERVIEW_CACHE_SECONDS
    with _figures_lock:
        now = time.monotonic()
        if _figures is None or now - _figures[0] >= ttl:
            _figures = (now, _compute_figures())
        return dict(_figures[1])


def context() -> dict[str, Any]:
    return {
        **figures(),
        "recent_runs": Run.objects.all()[:10],
        "recent_interventions": Intervention.objects.filter(status="open").select_related("run")[
            :5
        ],
        "now": timezone.now(),
    }
