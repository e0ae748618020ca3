"""The overview's figures: ``monitoring.stats`` numbers drawn with ``monitoring.charts``.

Each figure carries the URL of the filtered list behind it. Rendered by the overview
view and, on each change (at most once a second), by the dashboard socket.
"""

from __future__ import annotations

from typing import Any

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


def context() -> dict[str, Any]:
    failures = stats.failure_rate_per_minute(hours=1)
    throughput = stats.throughput_per_minute(hours=1)
    finished = sum(r["finished"] for r in failures)
    failed = sum(r["failed"] for r in failures)
    by_status = stats.runs_by_status()
    return {
        "by_status": by_status,
        "total_runs": sum(s["count"] for s in by_status),
        "interventions": stats.open_interventions(),
        "handling": stats.error_handling_success_rate(hours=24),
        "stalled": stats.stalled_runs(limit=10),
        "failing_steps": stats.failing_steps(hours=24, limit=8),
        "throughput_svg": mark_safe(_throughput_chart(throughput)),  # noqa: S308 (charts escape)
        "failure_svg": mark_safe(_failure_chart(failures)),  # noqa: S308
        "runs_finished_hour": sum(r["runs"] for r in throughput),
        "failure_rate_hour": failed / finished if finished else None,
        "recent_runs": Run.objects.all()[:10],
        "recent_interventions": Intervention.objects.filter(status="open").select_related("run")[
            :5
        ],
        "now": timezone.now(),
    }
