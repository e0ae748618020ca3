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

from django.db import connection
from django.db.models import Count, Exists, Max, Min, OuterRef, Q
from django.db.models.functions import TruncMinute
from django.utils import timezone

from interventions.models import Intervention
from workflows.models import (
    ErrorRecord,
    Run,
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
    # COUNT(*) (not COUNT(id)) lets PostgreSQL answer from the run_status_created index alone
    counts = dict(Run.objects.order_by().values_list("status").annotate(n=Count("*")))
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
        .annotate(finished=Count("*"), failed=Count("status", filter=Q(status="failed")))
    )
    return {r["minute"]: r for r in rows}


def throughput_per_minute(hours: float = 1) -> list[dict[str, Any]]:
    """Per minute of the last ``hours``, oldest first (empty minutes included):
    ``{"minute", "runs", "attempts", "failed", "rate"}`` - runs and step attempts that
    finished in that minute, and the failure figures of ``failure_rate_per_minute`` (so a
    page that shows both needs only this call)."""
    now = timezone.now()
    since = now - timedelta(hours=hours)
    runs = dict(
        Run.objects.filter(finished_at__gte=since)
        .annotate(minute=TruncMinute("finished_at"))
        .order_by()
        .values_list("minute")
        .annotate(n=Count("*"))
    )
    attempts = _attempt_buckets(since)
    out = []
    for m in _minutes(since, now):
        b = attempts.get(m, {})
        finished, failed = b.get("finished", 0), b.get("failed", 0)
        out.append(
            {
                "minute": m,
                "runs": runs.get(m, 0),
                "attempts": finished,
                "failed": failed,
                "rate": failed / finished if finished else None,
            }
        )
    return out


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

    Over runs that finished in the last ``hours`` and had at least one failed step attempt
    (one with an ``ErrorRecord``: the store writes one per failed attempt):
    ``rate = recovered / total`` where ``recovered`` counts those that still ended
    ``succeeded`` (a retry succeeded, a fallback stood in, or the step was allowed to
    continue) and ``total`` counts them all (succeeded, failed, compensated, cancelled).
    ``rate`` is None when no finished run had a failure.
    """
    since = timezone.now() - timedelta(hours=hours)
    had_failure = Exists(ErrorRecord.objects.filter(run=OuterRef("pk")))
    agg = (
        Run.objects.filter(finished_at__gte=since)
        .filter(had_failure)
        .aggregate(total=Count("*"), recovered=Count("status", filter=Q(status="succeeded")))
    )
    total, recovered = agg["total"], agg["recovered"]
    return {
        "hours": hours,
        "total": total,
        "recovered": recovered,
        "rate": recovered / total if total else None,
    }


MOVING_STATUSES = (
    "pending",
    "running",
    "waiting",
    "compensating",
)  # not awaiting a person, not paused


def stalled_runs(threshold_seconds: float = 300, limit: int = 100) -> list[dict[str, Any]]:
    """Unfinished runs that nothing is moving, longest idle first.

    A run is stalled when its status is pending, running, compensating, or waiting on a
    timer already due (``awaiting_intervention`` and ``paused`` wait for a person); its
    state has not changed for ``threshold_seconds`` (``Run.updated_at``: the store saves
    the run row with every event it applies); and no worker holds a live lease on one of
    its attempts (a long step that is still running is not stalled).
    """
    now = timezone.now()
    cutoff = now - timedelta(seconds=threshold_seconds)
    live_lease = StepAttempt.objects.filter(
        run=OuterRef("pk"), status="running", lease_until__gt=now
    )
    rows = (
        Run.objects.filter(status__in=MOVING_STATUSES, updated_at__lt=cutoff)
        .exclude(status="waiting", due_at__gt=now)
        .exclude(Exists(live_lease))
        .order_by("updated_at")
        .values("id", "workflow_name", "status", "updated_at", "due_at")[:limit]
    )
    return [
        {
            "id": str(r["id"]),
            "workflow": r["workflow_name"],
            "status": r["status"],
            "last_event_at": r["updated_at"],
            "idle_seconds": (now - r["updated_at"]).total_seconds(),
            "url": f"{RUNS_URL}{r['id']}/",
        }
        for r in rows
    ]


def failing_steps(hours: float = 24, limit: int = 10) -> list[dict[str, Any]]:
    """The steps with the most failed attempts in the last ``hours`` (counted from the
    error records, one per failed attempt): ``{"workflow", "step", "failures", "runs",
    "last_failed_at", "url"}``; foreach/fallback instances count under the base name."""
    since = timezone.now() - timedelta(hours=hours)
    rows = (
        ErrorRecord.objects.filter(created_at__gte=since)
        .order_by()
        .values("workflow_name", "step")
        .annotate(n=Count("*"), runs=Count("run_id", distinct=True), last=Max("created_at"))
    )
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["workflow_name"], base_step(r["step"]))
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
    since: datetime | None = None,
    limit: int = 100,
    runs_per_group: int = 10,
) -> list[dict[str, Any]]:
    """Errors grouped by fingerprint across runs, most recently seen first.

    Each group: ``fingerprint``, ``class``, ``type``, ``message`` and ``traceback`` of its
    latest record; ``count`` (failed attempts), ``run_count`` (distinct runs),
    ``first_seen``, ``last_seen``; ``runs`` (up to ``runs_per_group`` run ids, newest
    first); ``workflows`` and ``steps`` (base names) seen in those latest records - a
    fingerprint hashes the workflow and base step (``store.fingerprint``), so normally one
    of each; and ``url``. Filters: ``fingerprint``, ``klass`` (error class), ``workflow``,
    ``since`` (records created at or after). Supersedes ``workflows.serializers.error_groups``
    for pages (that one lists every run id of a group, unbounded). Three queries on
    PostgreSQL whatever the number of groups.
    """
    qs = ErrorRecord.objects.all()
    if fingerprint:
        qs = qs.filter(fingerprint=fingerprint)
    if klass:
        qs = qs.filter(error_class=klass)
    if workflow:
        qs = qs.filter(workflow_name=workflow)
    if since is not None:
        qs = qs.filter(created_at__gte=since)
    groups = list(
        qs.order_by()
        .values("fingerprint")
        .annotate(
            count=Count("*"),
            run_count=Count("run_id", distinct=True),
            first_seen=Min("created_at"),
            last_seen=Max("created_at"),
            latest_id=Max("id"),
        )
        .order_by("-last_seen", "fingerprint")[:limit]
    )
    if not groups:
        return []
    latest = ErrorRecord.objects.in_bulk([g["latest_id"] for g in groups])
    samples = _latest_records(qs, [g["fingerprint"] for g in groups], runs_per_group * 3)
    out = []
    for g in groups:
        r = latest[g["latest_id"]]
        fp = g["fingerprint"]
        runs: list[str] = []
        for _, run_id, _, _ in samples.get(fp, []):
            if str(run_id) not in runs and len(runs) < runs_per_group:
                runs.append(str(run_id))
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
                "workflows": sorted(
                    {wf for _, _, wf, _ in samples.get(fp, [])} | {r.workflow_name}
                ),
                "steps": sorted(
                    {base_step(st) for _, _, _, st in samples.get(fp, [])} | {base_step(r.step)}
                ),
                "runs": runs,
                "url": f"{ERRORS_URL}?{urlencode({'fingerprint': fp})}",
            }
        )
    return out


def _latest_records(
    qs: Any, fingerprints: list[str], per_group: int
) -> dict[str, list[tuple[Any, ...]]]:
    """(fingerprint, run_id, workflow_name, step) of each group's latest records, newest
    first: one UNION ALL of per-group LIMIT queries on PostgreSQL (each an index range
    scan), one query per group elsewhere."""
    fields = ("fingerprint", "run_id", "workflow_name", "step", "created_at")

    def one(fp: str) -> Any:
        return (
            qs.filter(fingerprint=fp)
            .order_by("-created_at", "-id")
            .values_list(*fields)[:per_group]
        )

    if connection.features.supports_slicing_ordering_in_compound and len(fingerprints) > 1:
        first, *rest = [one(fp) for fp in fingerprints]
        rows = list(first.union(*rest, all=True))
    else:
        rows = [row for fp in fingerprints for row in one(fp)]
    out: dict[str, list[tuple[Any, ...]]] = {}
    for fp, run_id, wf, step, created in rows:
        out.setdefault(fp, []).append((created, run_id, wf, step))
    for records in out.values():
        records.sort(key=lambda rec: rec[0], reverse=True)
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
