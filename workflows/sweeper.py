"""The sweeper: periodic, one active at a time (a PostgreSQL advisory lock).

Each pass: requeue attempts whose lease expired (their worker died), re-dispatch
queued attempts whose message was lost, fail attempts stuck past their timeout,
fire due timers and enforce run timeouts. Everything it does is idempotent: the
database says what is due, and claims and reports are conditional.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Min
from django.utils import timezone

from workflows import actors, engine, store
from workflows.models import TERMINAL_RUN_STATUSES, Checkpoint, Run, StepAttempt

log = logging.getLogger(__name__)
ADVISORY_KEY = 0x466C6F77  # "Flow"
MAX_DELIVERIES = 5
REDISPATCH_AFTER = timedelta(seconds=float(getattr(settings, "FLOWMEND_REDISPATCH_AFTER", 60)))
TIMEOUT_GRACE = timedelta(seconds=5)


_passes = 0
RETENTION_EVERY = 60  # passes


def sweep_once() -> dict[str, int]:
    global _passes
    _passes += 1
    counts = {
        "requeued": requeue_expired_leases(),
        "redispatched": redispatch_lost(),
        "timed_out": fail_overdue_attempts(),
        "timers": fire_due_timers(),
        "run_timeouts": enforce_run_timeouts(),
    }
    if _passes % RETENTION_EVERY == 1:
        counts["checkpoints_deleted"] = enforce_checkpoint_retention()
    return counts


def enforce_checkpoint_retention() -> int:
    """Keep `keep` checkpoints per run and none older than `max-age`; never the newest valid."""
    now = timezone.now()
    deleted = 0
    run_ids = (
        Checkpoint.objects.values("run_id")
        .annotate(n=Count("id"), oldest=Min("created_at"))
        .values_list("run_id", "n", "oldest")
    )
    for run_id, n, oldest in run_ids.iterator():
        run = Run.objects.select_related("definition").only("definition").get(pk=run_id)
        cfg = store.spec_for(run.definition).settings.checkpoints
        if n <= cfg.keep and oldest >= now - timedelta(seconds=cfg.max_age):
            continue
        checkpoints = list(
            Checkpoint.objects.filter(run_id=run_id)
            .order_by("-created_at", "-pk")
            .values_list("pk", "created_at", "valid")
        )
        newest_valid = next((pk for pk, _, valid in checkpoints if valid), None)
        doomed = [
            pk
            for i, (pk, created, _) in enumerate(checkpoints)
            if pk != newest_valid
            and (i >= cfg.keep or created < now - timedelta(seconds=cfg.max_age))
        ]
        if doomed:
            deleted += Checkpoint.objects.filter(pk__in=doomed).delete()[0]
    return deleted


def requeue_expired_leases() -> int:
    now = timezone.now()
    expired = list(
        StepAttempt.objects.filter(status="running", lease_until__lt=now)
        .exclude(worker="engine")
        .values_list("pk", "run_id", "dispatch_count", "step")
    )
    n = 0
    for pk, run_id, deliveries, step in expired:
        if deliveries >= MAX_DELIVERIES:
            report = store.Report(
                pk,
                False,
                error={
                    "type": "WorkerLost",
                    "message": f"the worker running {step} was lost {deliveries} times",
                },
            )
            store.apply(run_id, lambda r, s=step, a=pk: _lost_event(a, s), "sweeper", report=report)
            n += 1
            continue
        with transaction.atomic():
            updated = StepAttempt.objects.filter(
                pk=pk, status="running", lease_until__lt=now
            ).update(
                status="queued",
                worker="",
                lease_until=None,
                queued_at=now,
                dispatch_count=F("dispatch_count") + 1,
            )
            if updated:
                transaction.on_commit(lambda a=pk: actors.dispatch_attempt(a))
                log.warning("lease of attempt %s (%s) expired: requeued", pk, step)
                n += updated
    return n


def _lost_event(attempt_id: int, step: str) -> engine.Event:
    attempt = StepAttempt.objects.get(pk=attempt_id)
    return engine.AttemptFailed(
        time.time(),
        step,
        attempt.number,
        {"type": "WorkerLost", "message": f"the worker running {step} was lost repeatedly"},
    )


IDLE_REDISPATCH_AFTER = timedelta(seconds=5)


def broker_backlog() -> int | None:
    """Messages waiting in the step queue, or None when the broker cannot say."""
    import dramatiq

    broker = dramatiq.get_broker()
    try:
        if hasattr(broker, "get_queue_message_counts"):  # RabbitMQ
            ready, delayed, _ = broker.get_queue_message_counts(actors.QUEUE)
            return int(ready) + int(delayed)
        if hasattr(broker, "client"):  # Redis
            return int(broker.client.llen(f"{broker.namespace}:{actors.QUEUE}"))
        if hasattr(broker, "queues"):  # in-process
            return int(broker.queues[actors.QUEUE].qsize())
    except Exception:
        log.warning("could not read the broker's queue depth", exc_info=True)
    return None


def redispatch_lost() -> int:
    """Queued attempts nobody took: their message was lost (or held by a dead worker).

    While the queue has a backlog, a message may just be waiting its turn, so only
    attempts older than FLOWMEND_REDISPATCH_AFTER are sent again; when the queue is
    empty, five seconds is proof enough. A duplicate message is harmless: the claim
    is conditional.
    """
    now = timezone.now()
    idle = broker_backlog() == 0
    threshold = IDLE_REDISPATCH_AFTER if idle else REDISPATCH_AFTER
    stale = list(
        StepAttempt.objects.filter(status="queued", queued_at__lt=now - threshold).values_list(
            "pk", flat=True
        )[:1000]
    )
    for pk in stale:
        StepAttempt.objects.filter(pk=pk, status="queued").update(
            queued_at=now, dispatch_count=F("dispatch_count") + 1
        )
        actors.dispatch_attempt(pk)
    return len(stale)


def fail_overdue_attempts() -> int:
    """An attempt whose thread ignored its timeout (blocked in a system call)."""
    now = timezone.now()
    n = 0
    for attempt in (
        StepAttempt.objects.filter(status="running")
        .exclude(worker="engine")
        .only("pk", "run_id", "step", "number", "started_at", "timeout_seconds")
    ):
        if attempt.started_at is None:
            continue
        if attempt.started_at + timedelta(seconds=attempt.timeout_seconds) + TIMEOUT_GRACE > now:
            continue
        error = {
            "type": "StepTimeout",
            "message": f"step {attempt.step} exceeded its timeout of {attempt.timeout_seconds:g}s",
        }
        report = store.Report(attempt.pk, False, error=error)
        store.apply(
            attempt.run_id,
            lambda r, a=attempt, e=error: engine.AttemptFailed(time.time(), a.step, a.number, e),
            "sweeper",
            report=report,
        )
        n += 1
    return n


def fire_due_timers() -> int:
    now = timezone.now()
    n = 0
    due_runs = Run.objects.filter(due_at__lte=now).exclude(status__in=TERMINAL_RUN_STATUSES)
    for run in due_runs.only("pk", "state_doc")[:1000]:
        run_id = run.pk
        for step, st in run.state.get("steps", {}).items():
            if st.get("due") is not None and st["due"] <= now.timestamp():
                store.apply(run_id, lambda r, s=step: engine.TimerFired(time.time(), s), "timer")
                n += 1
    return n


def enforce_run_timeouts() -> int:
    now = timezone.now()
    n = 0
    for run_id in (
        Run.objects.filter(deadline__lt=now)
        .exclude(status__in=TERMINAL_RUN_STATUSES)
        .values_list("pk", flat=True)[:1000]
    ):
        store.apply(run_id, lambda r: engine.RunTimedOut(time.time()), "sweeper")
        n += 1
    return n


def _try_leadership() -> bool:
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [ADVISORY_KEY])
        return bool(cursor.fetchone()[0])


def run_forever(stop: threading.Event | None = None, interval: float | None = None) -> None:
    """Sweep until ``stop`` is set. Waits for leadership when another sweeper holds it."""
    stop = stop or threading.Event()
    interval = interval or settings.FLOWMEND_SWEEP_INTERVAL
    leader = False
    while not stop.is_set():
        try:
            if not leader:
                leader = _try_leadership()
                if leader:
                    log.info("sweeper: this process is the active sweeper")
            if leader:
                counts = sweep_once()
                if any(counts.values()):
                    log.info("sweeper: %s", counts)
        except Exception:
            log.exception("sweeper pass failed")
            leader = False
            connection.close()
        stop.wait(interval)
    connection.close()
