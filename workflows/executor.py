"""Running one attempt: claim, execute outside any transaction, report.

After a success, when exactly one next step is ready, the same worker claims it in
the report's transaction and runs it at once, for up to a time slice; everything
else (fan-out, waits, recovery) goes through the broker.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import traceback
from typing import Any

from django.conf import settings
from dramatiq.middleware.threading import raise_thread_exception

from workflows import actions, engine
from workflows.models import StepAttempt
from workflows.store import Report, RunNotFound, apply, claim, extend_leases

log = logging.getLogger(__name__)
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


class StepTimeout(BaseException):
    """Raised inside the worker thread when an attempt overruns its timeout."""


class StepCancelled(BaseException):
    """Raised inside the worker thread when the run was cancelled under it."""


class Watchdog:
    """One thread per worker process: extends leases and enforces step timeouts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, tuple[int, float]] = {}  # attempt -> (thread id, deadline)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._loop, args=(self._stop,), name="flowmend-watchdog", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._thread = None

    def track(self, attempt_id: int, timeout: float) -> None:
        with self._lock:
            self._running[attempt_id] = (threading.get_ident(), time.monotonic() + timeout)
        self.start()

    def untrack(self, attempt_id: int) -> None:
        with self._lock:
            self._running.pop(attempt_id, None)

    def _loop(self, stop: threading.Event) -> None:
        from django.db import close_old_connections

        interval = max(0.2, min(1.0, settings.FLOWMEND_LEASE_SECONDS / 3))
        last_lease = 0.0
        while not stop.wait(0.1):
            now = time.monotonic()
            with self._lock:
                items = list(self._running.items())
            for attempt_id, (thread_id, deadline) in items:
                if now > deadline:
                    with self._lock:  # only while the worker still runs the action
                        if self._running.pop(attempt_id, None):
                            raise_thread_exception(thread_id, StepTimeout)
            if items and now - last_lease >= interval:
                last_lease = now
                try:
                    gone = extend_leases([a for a, _ in items])
                except Exception:
                    log.exception("could not extend leases")
                    close_old_connections()
                    continue
                for attempt_id in gone:
                    with self._lock:
                        entry = self._running.pop(attempt_id, None)
                        if entry:
                            raise_thread_exception(entry[0], StepCancelled)


watchdog = Watchdog()


def execute(attempt_id: int) -> None:
    """The body of the `run_attempt` actor."""
    attempt = claim(attempt_id, WORKER_ID)
    if attempt is None:
        return  # already taken or finished: a duplicate delivery
    slice_end = time.monotonic() + settings.FLOWMEND_INLINE_SLICE_SECONDS
    while attempt is not None:
        report = run_attempt(attempt)
        claim_next = WORKER_ID if time.monotonic() < slice_end else None
        try:
            applied = apply(
                attempt.run_id,
                lambda run, r=report, a=attempt: _event_for(a, r),
                report=report,
                claim_for=claim_next,
            )
        except RunNotFound:
            return
        attempt = applied.inline if applied else None
        if attempt is not None:
            attempt.run = applied.run  # type: ignore[union-attr]


def _event_for(attempt: StepAttempt, report: Report) -> engine.Event:
    now = time.time()
    if report.succeeded:
        return engine.AttemptSucceeded(now, attempt.step, attempt.number, report.output)
    jitter = 0.75 + 0.5 * (int.from_bytes(os.urandom(2)) / 65535)
    assert report.error is not None
    return engine.AttemptFailed(now, attempt.step, attempt.number, report.error, jitter)


def run_attempt(attempt: StepAttempt) -> Report:
    """Execute an attempt's action outside any transaction; never raises (but for shutdown)."""
    if attempt.fault:
        fault = attempt.fault
        return Report(
            attempt.pk,
            False,
            error={
                "type": str(fault.get("error", "InjectedFault")),
                "message": str(fault.get("message", "injected fault")),
                "injected": True,
            },
        )
    run = attempt.run
    context = actions.StepContext(
        run_id=str(run.pk),
        workflow=run.workflow_name,
        step=attempt.step,
        attempt=attempt.number,
        idempotency_key=f"{run.pk}:{attempt.step}:{attempt.number}",
        inputs=run.input or {},
    )
    watchdog.track(attempt.pk, attempt.timeout_seconds)
    try:
        output = actions.get(attempt.step_type)(attempt.input or {}, context)
        watchdog.untrack(attempt.pk)
    except StepTimeout:
        return Report(
            attempt.pk,
            False,
            error={
                "type": "StepTimeout",
                "message": f"step {attempt.step} exceeded its timeout of {attempt.timeout_seconds:g}s",
            },
        )
    except StepCancelled:
        return Report(attempt.pk, False, error={"type": "Cancelled", "message": "run cancelled"})
    except actions.StepFailure as exc:
        watchdog.untrack(attempt.pk)
        return Report(attempt.pk, False, error={"type": exc.type, "message": str(exc), **exc.extra})
    except Exception as exc:
        watchdog.untrack(attempt.pk)
        return Report(attempt.pk, False, error=_error_of(exc))
    finally:
        watchdog.untrack(attempt.pk)
    try:
        output = json.loads(json.dumps(output, allow_nan=False))
    except (TypeError, ValueError) as exc:
        return Report(
            attempt.pk,
            False,
            error={
                "type": "OutputNotSerializable",
                "message": f"step {attempt.step} returned output that is not JSON: {exc}",
            },
        )
    return Report(attempt.pk, True, output=output)


def _error_of(exc: BaseException) -> dict[str, Any]:
    error: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc))[-8000:],
    }
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status is not None:
        error["status"] = status
    return error
