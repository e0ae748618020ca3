"""Probes and metrics at the root: ``/healthz``, ``/readyz``, ``/metrics`` (no auth).

``/metrics`` is the Prometheus text exposition format (version 0.0.4), written by hand
(``prometheus_client`` is not a dependency) from the database, so every web process
answers the same numbers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_http_methods

from interventions.models import Intervention
from workflows.models import AttemptStatus, Run, RunStatus, StepAttempt

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
BROKER_TIMEOUT = 2.0


# --------------------------------------------------------------------------- probes


@require_http_methods(["GET", "HEAD"])
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive and serving requests."""
    return JsonResponse({"status": "ok"})


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def check_broker(url: str | None = None) -> str:
    """Reach the broker; returns what was checked. Raises when it cannot be reached."""
    url = settings.BROKER_URL if url is None else url
    if not url:
        return "in-process"
    if url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(
            url, socket_timeout=BROKER_TIMEOUT, socket_connect_timeout=BROKER_TIMEOUT
        )
        try:
            client.ping()
        finally:
            client.close()
        return "redis"
    if url.startswith(("amqp://", "amqps://")):
        import pika

        params = pika.URLParameters(url)
        params.socket_timeout = BROKER_TIMEOUT
        params.blocked_connection_timeout = BROKER_TIMEOUT
        params.connection_attempts = 1
        conn = pika.BlockingConnection(params)
        conn.close()
        return "rabbitmq"
    raise ValueError("BROKER_URL must start with redis:// or amqp://")


@require_http_methods(["GET", "HEAD"])
def readyz(request: HttpRequest) -> JsonResponse:
    """Ready for traffic: the database answers and the broker is reachable. 503 otherwise."""
    checks: dict[str, str] = {}
    failed: list[str] = []
    for name, check in (("database", check_database), ("broker", check_broker)):
        try:
            result = check()
            checks[name] = "ok" if result is None else f"ok ({result})"
        except Exception as exc:  # any failure means "not ready", with the reason
            log.warning("readiness check %s failed: %s", name, exc)
            checks[name] = f"failed: {type(exc).__name__}: {exc}"
            failed.append(name)
    if failed:
        return JsonResponse(
            {
                "status": "unavailable",
                "error": f"{', '.join(failed)} unreachable",
                "failed": failed,
                "checks": checks,
            },
            status=503,
        )
    return JsonResponse({"status": "ok", "checks": checks})


# --------------------------------------------------------------------------- metrics


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


class Exposition:
    """Builds the text format: one HELP and TYPE per metric family, then its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        help_text = help_text.replace("\\", "\\\\").replace("\n", "\\n")
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        self.lines.append(f"{name}{_labels(labels or {})} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _counts(rows: Iterable[dict[str, Any]], known: Iterable[str]) -> dict[str, int]:
    counts = dict.fromkeys(known, 0)
    for row in rows:
        counts[row["status"]] = row["n"]
    return counts


def _duration_histograms(out: Exposition) -> None:
    duration = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
    bucket_aggs = {
        f"le_{i}": Count("id", filter=Q(d__lte=timedelta(seconds=b)))
        for i, b in enumerate(DURATION_BUCKETS)
    }
    rows = (
        StepAttempt.objects.filter(started_at__isnull=False, finished_at__isnull=False)
        .annotate(d=duration)
        .values("run__workflow_name")
        .annotate(n=Count("id"), total=Sum("d"), **bucket_aggs)
        .order_by("run__workflow_name")
    )
    out.family(
        "flowmend_step_duration_seconds",
        "histogram",
        "Duration of finished step attempts, by workflow.",
    )
    for row in rows:
        workflow = row["run__workflow_name"]
        for i, bound in enumerate(DURATION_BUCKETS):
            out.sample(
                "flowmend_step_duration_seconds_bucket",
                row[f"le_{i}"],
                {"workflow": workflow, "le": _number(float(bound))},
            )
        out.sample(
            "flowmend_step_duration_seconds_bucket", row["n"], {"workflow": workflow, "le": "+Inf"}
        )
        total = row["total"]
        seconds = total.total_seconds() if isinstance(total, timedelta) else float(total or 0)
        out.sample("flowmend_step_duration_seconds_sum", seconds, {"workflow": workflow})
        out.sample("flowmend_step_duration_seconds_count", row["n"], {"workflow": workflow})


def render_metrics() -> str:
    out = Exposition()
    runs = _counts(
        Run.objects.order_by().values("status").annotate(n=Count("id")), RunStatus.values
    )
    out.family("flowmend_runs", "gauge", "Runs by status.")
    for status, n in runs.items():
        out.sample("flowmend_runs", n, {"status": status})

    attempts = _counts(
        StepAttempt.objects.order_by().values("status").annotate(n=Count("id")),
        AttemptStatus.values,
    )
    out.family("flowmend_steps", "gauge", "Step attempts by status.")
    for status, n in attempts.items():
        out.sample("flowmend_steps", n, {"status": status})

    _duration_histograms(out)

    out.family("flowmend_interventions_open", "gauge", "Interventions waiting for a human.")
    out.sample("flowmend_interventions_open", Intervention.objects.filter(status="open").count())
    return out.text()


@require_http_methods(["GET", "HEAD"])
def metrics(request: HttpRequest) -> HttpResponse:
    return HttpResponse(render_metrics(), content_type=CONTENT_TYPE)
