"""Read-side queries for the console's figures, built to stay fast at 100k runs / 1M attempts.

Every function aggregates in the database over an indexed column or a bounded time window
and returns plain dicts and lists. Each figure maps to a filtered list (see ``list_url``
fields) so a page can link a number to the runs behind it.
"""

from __future__ import annotations

import statistics
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.db.models import Count, Exists, F, Max, Min, OuterRef, Q, Subquery, Window
from django.db.models.functions import RowNumber, TruncMinute
from django.utils import timezone

from interventions.models import Intervention
from workflows.models import (
    TERMINAL_RUN_STATUSES,
    ErrorRecord,
    Run,
    RunEvent,
    RunStatus,
    StepAttempt,
)

RUNS_URL = "/runs/"
ERRORS_URL = "/errors/"


def _runs_url(**filters: str) -> str:
    query = urlencode({k: v for k, v in filters.items() if v})
    return f"{RUNS_URL}?{query}" if query else RUNS_URL


def base_step(step: str) -> str:
    """``charge[3]`` -> ``charge``; ``backup@charge[1]`` -> ``backup``."""
    return step.split("@", 1)[0].split("[", 1)[0]


# --------------------------------------------------------------------------- now


def runs_by_status() -> list[dict[str, Any]]:
    """Every run status (in lifecycle order) with its count and the list URL."""
    counts = dict(Run.objects.order_by().values_list("status").annotate(n=Count("id")))
    return [
        {"status": s, "count": counts.get(s, 0), "url": _runs_url(status=s)}
        for s in RunStatus.values
    ]


def open_interventions() -> dict[str, Any]:
    """Open interventions: total and by kind (approval, escalation)."""
    by_kind = dict(
        Intervention.objects.filter(status="open")
        .order_by()
        .values_list("kind")
        .annotate(n=Count("id"))
    )
    return {
        "count": sum(by_kind.values()),
        "by_kind": by_kind,
        "url": "/interventions/?status=open",
    }


# --------------------------------------------------------------------------- last hour


def _minutes(since: datetime, until: datetime) -> list[datetime]:
    start = since.replace(second=0, microsecond=0)
    count = int((until - start).total_seconds() // 60) + 1
    return [start + timedelta(minutes=i) for i in range(count)]


def _attempt_buckets(since: datetime) -> dict[datetime, dict[str, int]]:
    rows = (
        StepAttempt.objects.filter(finished_at__gte=since)
        .exclude(status="cancelled")
        .annotate(minute=TruncMinute("finished_at"))
        .order_by()
        .values("minute")
        .annotate(finished=Count("id"), failed=Count("id", filter=Q(status="failed")))
    )
    return {r["minute"]: r for r in rows}


def throughput_per_minute(hours: float = 1) -> list[dict[str, Any]]:
    """Per minute of the last ``hours``, oldest first: ``{"minute", "runs", "attempts"}``,
    runs and step attempts that finished in that minute (empty minutes included)."""
    now = timezone.now()
    since = now - timedelta(hours=hours)
    runs = dict(
        Run.objects.filter(finished_at__gte=since)
        .annotate(minute=TruncMinute("finished_at"))
        .order_by()
        .values_list("minute")
        .annotate(n=Count("id"))
    )
    attempts = _attempt_buckets(since)
    return [
        {"minute": m, "runs": runs.get(m, 0), "attempts": attempts.get(m, {}).get("finished", 0)}
        for m in _minutes(since, now)
    ]


def failure_rate_per_minute(hours: float = 1) -> list[dict[str, Any]]:
    """Per minute of the last ``hours``: ``{"minute", "finished", "failed", "rate"}`` over step
    attempts that finished (succeeded or failed; cancelled ones left out); ``rate`` is
    failed / finished in [0, 1], None for a minute with none."""
    now = timezone.now()
    since = now - timedelta(hours=hours)
    buckets = _attempt_buckets(since)
    out = []
    for m in _minutes(since, now):
        b = buckets.get(m, {})
        finished, failed = b.get("finished", 0), b.get("failed", 0)
        out.append(
            {
                "minute": m,
                "finished": finished,
                "failed": failed,
                "rate": failed / finished if finished else None,
            }
        )
    return out


# --------------------------------------------------------------------------- health


def error_handling_success_rate(hours: float = 24) -> dict[str, Any]:
    """How often error handling saved a run.

    Over runs that finished in the last ``hours`` and had at least one failed step attempt:
    ``rate = recovered / total`` where ``recovered`` counts those that still ended
    ``succeeded`` (a retry succeeded, a fallback stood in, or the step was allowed to
    continue) and ``total`` counts them all (succeeded, failed, compensated, cancelled).
    ``rate`` is None when no finished run had a failure.
    """
    since = timezone.now() - timedelta(hours=hours)
    had_failure = Exists(StepAttempt.objects.filter(run=OuterRef("pk"), status="failed"))
    agg = (
        Run.objects.filter(finished_at__gte=since)
        .filter(had_failure)
        .aggregate(total=Count("id"), recovered=Count("id", filter=Q(status="succeeded")))
    )
    total, recovered = agg["total"], agg["recovered"]
    return {
        "hours": hours,
        "total": total,
        "recovered": recovered,
        "rate": recovered / total if total else None,
    }


QUIET_STATUSES = ("awaiting_intervention", "paused")


def stalled_runs(threshold_seconds: float = 300, limit: int = 100) -> list[dict[str, Any]]:
    """Unfinished runs that nothing is moving: no event for ``threshold_seconds``, no live
    worker lease, not waiting for a person (``awaiting_intervention``, ``paused``) and not
    ``waiting`` on a timer that is still in the future. Longest idle first."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=threshold_seconds)
    last_event = RunEvent.objects.filter(run=OuterRef("pk")).order_by("-seq").values("at")[:1]
    live_lease = StepAttempt.objects.filter(
        run=OuterRef("pk"), status="running", lease_until__gt=now
    )
    rows = (
        Run.objects.exclude(status__in=[*TERMINAL_RUN_STATUSES, *QUIET_STATUSES])
        .exclude(status="waiting", due_at__gt=now)
        .annotate(last_event_at=Subquery(last_event))
        .filter(Q(last_event_at__lt=cutoff) | Q(last_event_at__isnull=True, created_at__lt=cutoff))
        .exclude(Exists(live_lease))
        .order_by(F("last_event_at").asc(nulls_first=True))
        .values("id", "workflow_name", "status", "created_at", "last_event_at", "due_at")[:limit]
    )
    out = []
    for r in rows:
        since = r["last_event_at"] or r["created_at"]
        out.append(
            {
                "id": str(r["id"]),
                "workflow": r["workflow_name"],
                "status": r["status"],
                "last_event_at": r["last_event_at"],
                "idle_seconds": (now - since).total_seconds(),
                "url": f"{RUNS_URL}{r['id']}/",
            }
        )
    return out


def failing_steps(hours: float = 24, limit: int = 10) -> list[dict[str, Any]]:
    """The steps with the most failed attempts in the last ``hours``: ``{"workflow", "step",
    "failures", "runs", "last_failed_at", "url"}``; foreach/fallback instances of a step
    count under its base name."""
    since = timezone.now() - timedelta(hours=hours)
    rows = (
        StepAttempt.objects.filter(finished_at__gte=since, status="failed")
        .order_by()
        .values("run__workflow_name", "step")
        .annotate(n=Count("id"), runs=Count("run_id", distinct=True), last=Max("finished_at"))
    )
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["run__workflow_name"], base_step(r["step"]))
        m = merged.setdefault(key, {"workflow": key[0], "step": key[1], "failures": 0, "runs": 0, "last_failed_at": r["last"]})  # fmt: skip
        m["failures"] += r["n"]
        m["runs"] += r["runs"]
        m["last_failed_at"] = max(m["last_failed_at"], r["last"])
    out = sorted(merged.values(), key=lambda m: (-m["failures"], m["workflow"], m["step"]))[:limit]
    for m in out:
        m["url"] = _runs_url(workflow=m["workflow"], status="failed")
    return out


# --------------------------------------------------------------------------- errors


def error_groups(
    fingerprint: str | None = None,
    klass: str | None = None,
    workflow: str | None = None,
    *,
    limit: int = 100,
    runs_per_group: int = 20,
) -> list[dict[str, Any]]:
    """Errors grouped by fingerprint across runs, most recently seen first.

    Each group: ``fingerprint``, ``class``, ``type``, ``message`` and ``traceback`` of its
    latest record, ``count``, ``run_count``, ``first_seen``, ``last_seen``, ``workflows``
    and ``steps`` (base names, sorted), ``runs`` (up to ``runs_per_group`` run ids, newest
    first) and ``url``. Supersedes ``workflows.serializers.error_groups`` for pages (which
    lists every run id and no workflows or steps). Four queries whatever the size.
    """
    qs = ErrorRecord.objects.all()
    if fingerprint:
        qs = qs.filter(fingerprint=fingerprint)
    if klass:
        qs = qs.filter(error_class=klass)
    if workflow:
        qs = qs.filter(workflow_name=workflow)
    groups = list(
        qs.order_by()
        .values("fingerprint")
        .annotate(
            count=Count("id"),
            run_count=Count("run_id", distinct=True),
            first_seen=Min("created_at"),
            last_seen=Max("created_at"),
            latest_id=Max("id"),
        )
        .order_by("-last_seen", "fingerprint")[:limit]
    )
    if not groups:
        return []
    fps = [g["fingerprint"] for g in groups]
    latest = ErrorRecord.objects.in_bulk([g["latest_id"] for g in groups])
    places: dict[str, tuple[set[str], set[str]]] = {fp: (set(), set()) for fp in fps}
    for fp, wf, step in qs.filter(fingerprint__in=fps).order_by().values_list("fingerprint", "workflow_name", "step").distinct():  # fmt: skip
        places[fp][0].add(wf)
        places[fp][1].add(base_step(step))
    ranked = (
        qs.filter(fingerprint__in=fps)
        .annotate(
            rank=Window(RowNumber(), partition_by=[F("fingerprint")], order_by=F("id").desc())
        )
        .filter(rank__lte=runs_per_group * 3)
        .order_by("fingerprint", "rank")
        .values_list("fingerprint", "run_id")
    )
    runs: dict[str, list[str]] = {fp: [] for fp in fps}
    for fp, run_id in ranked:
        rid = str(run_id)
        if rid not in runs[fp] and len(runs[fp]) < runs_per_group:
            runs[fp].append(rid)
    out = []
    for g in groups:
        r = latest[g["latest_id"]]
        fp = g["fingerprint"]
        out.append(
            {
                "fingerprint": fp,
                "class": r.error_class,
                "type": r.type,
                "message": r.message,
                "traceback": r.traceback,
                "count": g["count"],
                "run_count": g["run_count"],
                "first_seen": g["first_seen"],
                "last_seen": g["last_seen"],
                "workflows": sorted(places[fp][0]),
                "steps": sorted(places[fp][1]),
                "runs": runs[fp],
                "url": f"{ERRORS_URL}?{urlencode({'fingerprint': fp})}",
            }
        )
    return out


# --------------------------------------------------------------------------- workflows


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def workflow_stats(name: str, last: int = 100) -> dict[str, Any]:
    """Success rate and durations over the workflow's latest ``last`` finished runs.

    ``success_rate`` = succeeded / finished (None without finished runs); durations
    (started -> finished, seconds) as ``duration_median`` and ``duration_p95``
    (nearest rank); ``by_status`` counts the statuses of those runs.
    """
    rows = list(
        Run.objects.filter(workflow_name=name, finished_at__isnull=False)
        .order_by("-created_at")
        .values_list("status", "started_at", "finished_at")[:last]
    )
    by_status: dict[str, int] = {}
    durations = []
    for status, started, finished in rows:
        by_status[status] = by_status.get(status, 0) + 1
        if started is not None:
            durations.append((finished - started).total_seconds())
    durations.sort()
    return {
        "workflow": name,
        "finished": len(rows),
        "by_status": by_status,
        "success_rate": by_status.get("succeeded", 0) / len(rows) if rows else None,
        "duration_median": statistics.median(durations) if durations else None,
        "duration_p95": _percentile(durations, 95) if durations else None,
        "url": _runs_url(workflow=name),
    }
