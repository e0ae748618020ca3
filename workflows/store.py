"""The only writer of run state.

One transaction per event: lock the run row, ``engine.decide``, persist the state,
attempts, events, checkpoints and errors, and hand the commands that talk to the
outside world (broker messages, live updates) to ``transaction.on_commit``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from interventions.models import Intervention
from workflows import engine
from workflows import spec as spec_mod
from workflows.models import (
    Checkpoint,
    ErrorRecord,
    Run,
    RunEvent,
    StepAttempt,
    WorkflowDefinition,
)

log = logging.getLogger(__name__)

# Callbacks run after each commit that changed a run: monitoring hooks in here.
run_changed_listeners: list[Callable[[Run, list[RunEvent]], None]] = []


class RunNotFound(Exception):
    pass


def to_ts(dt: datetime | None) -> float | None:
    return dt.timestamp() if dt else None


def from_ts(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, tz=UTC) if ts is not None else None


# --------------------------------------------------------------------------- specs

_spec_cache: dict[tuple[int, str], spec_mod.WorkflowSpec] = {}


def spec_for(definition: WorkflowDefinition) -> spec_mod.WorkflowSpec:
    key = (definition.pk, definition.checksum)
    cached = _spec_cache.get(key)
    if cached is None:
        cached = spec_mod.validate_data(definition.spec)
        _spec_cache[key] = cached
    return cached


# --------------------------------------------------------------------------- outcome


@dataclass
class Report:
    """What a worker tells the store about an attempt it ran."""

    attempt_id: int
    succeeded: bool
    output: Any = None
    error: dict[str, Any] | None = None


@dataclass
class Applied:
    run: Run
    commands: tuple[engine.Command, ...]
    inline: StepAttempt | None = None  # the next attempt, already claimed by the caller


def apply(
    run_id: Any,
    make_event: Callable[[Run], engine.Event],
    actor: str = "",
    *,
    report: Report | None = None,
    claim_for: str | None = None,
    before: Callable[[Run], None] | None = None,
) -> Applied | None:
    """Apply one event to a run in one transaction. Returns None for a stale report."""
    with transaction.atomic():
        try:
            run = (
                Run.objects.select_for_update(of=("self",))
                .select_related("definition")
                .get(pk=run_id)
            )
        except Run.DoesNotExist as exc:
            raise RunNotFound(str(run_id)) from exc
        now = timezone.now()
        if report is not None and not _close_reported_attempt(report, now):
            return None  # duplicate or late report (cancelled, lease lost): acknowledged
        recovered = None
        problems = state_problems(run)
        if problems:
            recovered = _recover_corrupted_state(run, problems, now)
            if report is not None or recovered is None:
                return recovered  # the attempt's step runs again from the restored state
        if before is not None:
            before(run)
        event = make_event(run)
        try:
            decision = engine.decide(
                spec_for(run.definition), run.state, event, settings.FLOWMEND_SHORT_WAIT_SECONDS
            )
        except engine.EngineError:
            if recovered is None:
                raise
            log.warning("run %s: %s not applicable after the restore; dropped", run.pk, event)
            return recovered  # the restore stands; it already re-ran what was unfinished
        applied = _persist(run, decision, now, actor, claim_for)
        if report is not None and report.error is not None:
            _record_error(run, report)
    return applied


def _close_reported_attempt(report: Report, now: datetime) -> bool:
    fields: dict[str, Any] = {"finished_at": now, "lease_until": None}
    if report.succeeded:
        fields.update(status="succeeded", output=report.output)
    else:
        fields.update(status="failed", error=report.error)
    return StepAttempt.objects.filter(pk=report.attempt_id, status="running").update(**fields) == 1


def _persist(
    run: Run,
    decision: engine.Decision,
    now: datetime,
    actor: str,
    claim_for: str | None,
) -> Applied:
    state = decision.state
    commands = decision.commands
    events: list[RunEvent] = []
    new_attempts: list[StepAttempt] = []
    dispatches = [c for c in commands if isinstance(c, engine.DispatchAttempt)]
    inline_cmd = dispatches[0] if claim_for and len(dispatches) == 1 else None
    inline: StepAttempt | None = None
    timers: list[engine.SetTimer] = []
    lease = timedelta(seconds=settings.FLOWMEND_LEASE_SECONDS)

    for cmd in commands:
        if isinstance(cmd, engine.Emit):
            run.event_seq += 1
            events.append(
                RunEvent(
                    run=run,
                    seq=run.event_seq,
                    type=cmd.type,
                    step=cmd.step,
                    attempt=cmd.attempt,
                    at=now,
                    actor=actor,
                    state_version=run.state_version + 1,
                    data=_jsonable(cmd.data),
                )
            )
        elif isinstance(cmd, engine.DispatchAttempt):
            attempt = StepAttempt(
                run=run,
                step=cmd.step,
                kind=cmd.kind,
                step_type=cmd.step_type,
                number=cmd.attempt,
                input=cmd.input,
                fault=cmd.fault,
                timeout_seconds=cmd.timeout,
                queued_at=now,
            )
            if cmd is inline_cmd:
                attempt.status = "running"
                attempt.worker = claim_for or ""
                attempt.started_at = now
                attempt.lease_until = now + lease
                inline = attempt
            new_attempts.append(attempt)
        elif isinstance(cmd, engine.RecordAttempt):
            new_attempts.append(
                StepAttempt(
                    run=run,
                    step=cmd.step,
                    kind=cmd.kind,
                    step_type=cmd.step_type,
                    number=cmd.attempt,
                    input=cmd.input,
                    status="running",
                    queued_at=now,
                    started_at=now,
                    worker="engine",
                )
            )
        elif isinstance(cmd, engine.SetTimer):
            timers.append(cmd)
        elif isinstance(cmd, engine.TakeCheckpoint):
            pass  # written below, from the final state
    if new_attempts:
        StepAttempt.objects.bulk_create(new_attempts)
    for cmd in commands:
        if isinstance(cmd, engine.CloseAttempt):
            StepAttempt.objects.filter(
                run=run, step=cmd.step, number=cmd.attempt, status__in=("queued", "running")
            ).update(
                status=cmd.status,
                output=cmd.output,
                error=cmd.error,
                finished_at=now,
                lease_until=None,
            )
        elif isinstance(cmd, engine.OpenIntervention):
            _open_intervention(run, cmd, now)
        elif isinstance(cmd, engine.CloseInterventions):
            qs = Intervention.objects.filter(run=run, status="open")
            if cmd.step is not None:
                qs = qs.filter(step=cmd.step)
            qs.update(status="cancelled", decided_at=now)
        elif isinstance(cmd, engine.TakeCheckpoint):
            write_checkpoint(run, state, cmd.kind, cmd.step, actor or "engine")
    if events:
        RunEvent.objects.bulk_create(events)

    _update_run_row(run, state, now)
    _after_commit(run, events, new_attempts, inline, timers, now)
    return Applied(run, commands, inline)


def state_checksum(state: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(state)).hexdigest()


def state_problems(run: Run) -> list[str]:
    """Integrity check on load: the stored checksum and the state's schema."""
    if not run.state_checksum:
        return []  # a run created before checksums, or not started yet
    problems = []
    if state_checksum(run.state) != run.state_checksum:
        problems.append("the state does not match its checksum")
    problems.extend(engine.validate_state(run.state))
    return problems


def _recover_corrupted_state(run: Run, problems: list[str], now: datetime) -> Applied | None:
    """Record a state_corruption error and restore the newest valid checkpoint."""
    started = time.monotonic()
    log.error("run %s: corrupted state: %s", run.pk, "; ".join(problems))
    record = ErrorRecord.objects.create(
        run=run,
        error_class="state_corruption",
        severity="critical",
        retryable=False,
        type="StateCorruption",
        message="; ".join(problems)[:2000],
        fingerprint=fingerprint(run.workflow_name, "", {"type": "StateCorruption"}),
        workflow_name=run.workflow_name,
    )
    for checkpoint in run.checkpoints.filter(valid=True).order_by("-created_at", "-pk"):
        try:
            state = load_checkpoint(checkpoint)
        except CheckpointInvalid:
            continue
        decision = engine.decide(
            spec_for(run.definition),
            state,
            engine.RestoreState(now.timestamp(), state, str(checkpoint.pk)),
            settings.FLOWMEND_SHORT_WAIT_SECONDS,
        )
        applied = _persist(run, decision, now, "integrity-check", None)
        record.recovery = [
            {
                "strategy": "restore_from_last_valid_checkpoint",
                "number": 1,
                "success": True,
                "action": f"restored checkpoint {checkpoint.pk} ({checkpoint.kind})",
                "duration_ms": round((time.monotonic() - started) * 1000, 2),
            }
        ]
        record.save(update_fields=["recovery"])
        return applied
    record.recovery = [
        {
            "strategy": "restore_from_last_valid_checkpoint",
            "number": 1,
            "success": False,
            "action": "no valid checkpoint: the run is failed; restart it",
            "duration_ms": round((time.monotonic() - started) * 1000, 2),
        }
    ]
    record.save(update_fields=["recovery"])
    run.status = "failed"
    run.error = {"type": "StateCorruption", "message": "; ".join(problems)}
    run.finished_at = now
    run.save(update_fields=["status", "error", "finished_at", "updated_at"])
    return None


def _update_run_row(run: Run, state: dict[str, Any], now: datetime) -> None:
    run.state = state
    run.state_checksum = state_checksum(state)
    run.state_version += 1
    run.status = state["status"]
    run.due_at = from_ts(engine.next_due(state))
    run.deadline = from_ts(state.get("deadline")) if state.get("phase") == "main" else None
    if run.started_at is None and state.get("phase") != "new":
        run.started_at = now
    if state.get("phase") == "done":
        run.finished_at = run.finished_at or now
        run.output = state.get("output")
        run.error = state.get("error")
    else:
        run.finished_at = None
        run.error = state.get("error")
    run.save(
        update_fields=[
            "definition",
            "workflow_version",
            "state",
            "state_checksum",
            "state_version",
            "status",
            "due_at",
            "deadline",
            "started_at",
            "finished_at",
            "output",
            "error",
            "event_seq",
            "updated_at",
        ]
    )


def _after_commit(
    run: Run,
    events: list[RunEvent],
    attempts: list[StepAttempt],
    inline: StepAttempt | None,
    timers: list[engine.SetTimer],
    now: datetime,
) -> None:
    to_send = [a for a in attempts if a.status == "queued"]
    short = settings.FLOWMEND_SHORT_WAIT_SECONDS
    wakes = [(t.step, t.due - now.timestamp()) for t in timers if t.due - now.timestamp() <= short]

    def send() -> None:
        from workflows import actors

        for a in to_send:
            actors.dispatch_attempt(a.pk)
        for step, delay in wakes:
            actors.wake(str(run.pk), step, max(0.0, delay))
        for listener in run_changed_listeners:
            try:
                listener(run, events)
            except Exception:  # a broken listener never breaks the engine
                log.exception("run listener failed")

    transaction.on_commit(send)


def record_event(run_id: Any, type: str, actor: str = "", data: dict[str, Any] | None = None) -> RunEvent:
    """Append one event to a run's history without touching its state (e.g. ``run.restarted``).

    Takes the row lock, so ``seq`` stays gap-free and ordered with the engine's events.
    """
    with transaction.atomic():
        try:
            run = Run.objects.select_for_update(of=("self",)).get(pk=run_id)
        except Run.DoesNotExist as exc:
            raise RunNotFound(str(run_id)) from exc
        run.event_seq += 1
        event = RunEvent.objects.create(
            run=run,
            seq=run.event_seq,
            type=type,
            at=timezone.now(),
            actor=actor,
            state_version=run.state_version,
            data=_jsonable(data or {}),
        )
        Run.objects.filter(pk=run.pk).update(event_seq=run.event_seq, updated_at=event.at)

        def notify() -> None:
            for listener in run_changed_listeners:
                try:
                    listener(run, [event])
                except Exception:  # a broken listener never breaks the engine
                    log.exception("run listener failed")

        transaction.on_commit(notify)
    return event


def _open_intervention(run: Run, cmd: engine.OpenIntervention, now: datetime) -> None:
    spec = spec_for(run.definition)
    expires = now + timedelta(seconds=spec.settings.interventions.timeout)
    Intervention.objects.create(
        run=run,
        step=cmd.step,
        kind=cmd.kind,
        reason=cmd.reason,
        prompt=cmd.prompt,
        options=list(cmd.options),
        expires_at=expires,
        context={"error": run.state.get("steps", {}).get(cmd.step, {}).get("error")},
    )


# --------------------------------------------------------------------------- errors

_NUMBERS = re.compile(r"\b\d+\b")
_HEX = re.compile(r"\b[0-9a-f]{8,}\b|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f-]{27}", re.I)

ERROR_CLASSES_BY_TYPE = {
    "StepTimeout": "timeout",
    "TimeoutError": "timeout",
    "TimeoutException": "timeout",
    "ReadTimeout": "timeout",
    "ConnectTimeout": "timeout",
    "MemoryError": "resource_exhaustion",
    "ResourceExhausted": "resource_exhaustion",
    "ConnectionError": "transient",
    "ConnectError": "transient",
    "WorkerLost": "transient",
    "ValidationError": "permanent",
    "OutputNotSerializable": "permanent",
    "ExpressionError": "permanent",
    "Rejected": "permanent",
}


def classify(error: dict[str, Any]) -> tuple[str, str, bool]:
    """(class, severity, retryable) of an error dict."""
    etype = str(error.get("type", ""))
    if etype == "HTTPStatusError":
        status = int(error.get("status") or 0)
        if status == 429:
            return "rate_limited", "medium", True
        if status >= 500:
            return "transient", "medium", True
        return "permanent", "medium", False
    cls = ERROR_CLASSES_BY_TYPE.get(etype, "step_error")
    severity = {"resource_exhaustion": "high", "permanent": "medium"}.get(cls, "medium")
    return cls, severity, cls not in ("permanent",)


def fingerprint(workflow: str, step: str, error: dict[str, Any]) -> str:
    message = _HEX.sub("<id>", str(error.get("message", "")))
    message = _NUMBERS.sub("<n>", message)[:300]
    base = step.split("[", 1)[0]
    raw = f"{workflow}|{base}|{error.get('type', '')}|{message}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _record_error(run: Run, report: Report) -> None:
    attempt = StepAttempt.objects.only("step", "number").get(pk=report.attempt_id)
    error = report.error or {}
    cls, severity, retryable = classify(error)
    ErrorRecord.objects.create(
        run=run,
        step=attempt.step,
        attempt=attempt.number,
        error_class=cls,
        severity=severity,
        retryable=retryable,
        type=str(error.get("type", "Error"))[:200],
        message=str(error.get("message", "")),
        traceback=str(error.get("traceback", "")),
        fingerprint=fingerprint(run.workflow_name, attempt.step, error),
        workflow_name=run.workflow_name,
    )


# --------------------------------------------------------------------------- checkpoints


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def write_checkpoint(run: Run, state: dict[str, Any], kind: str, step: str, by: str) -> Checkpoint:
    raw = canonical_json(state)
    limit = spec_for(run.definition).settings.checkpoints.compress_above
    compressed = len(raw) > limit
    data = zlib.compress(raw, 1) if compressed else raw
    return Checkpoint.objects.create(
        run=run,
        step=step,
        kind=kind,
        data=data,
        checksum=hashlib.sha256(raw).hexdigest(),
        size_bytes=len(raw),
        compressed=compressed,
        state_version=run.state_version + 1,
        workflow_version=run.workflow_version,
        schema_version=engine.STATE_SCHEMA,
        created_by=by,
    )


class CheckpointInvalid(Exception):
    pass


def load_checkpoint(checkpoint: Checkpoint) -> dict[str, Any]:
    """The checkpoint's state, verified (checksum and schema); marks it invalid if not."""
    try:
        raw = bytes(checkpoint.data)
        if checkpoint.compressed:
            raw = zlib.decompress(raw)
        if hashlib.sha256(raw).hexdigest() != checkpoint.checksum:
            raise CheckpointInvalid("its data does not match its checksum")
        state = json.loads(raw)
        problems = engine.validate_state(state)
        if problems:
            raise CheckpointInvalid("; ".join(problems[:5]))
    except (zlib.error, ValueError, CheckpointInvalid) as exc:
        Checkpoint.objects.filter(pk=checkpoint.pk).update(valid=False)
        checkpoint.valid = False
        raise CheckpointInvalid(f"checkpoint {checkpoint.pk} is corrupt: {exc}") from exc
    return dict(state)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return json.loads(json.dumps(value, default=str))


# --------------------------------------------------------------------------- claiming


def claim(attempt_id: int, worker: str) -> StepAttempt | None:
    """queued -> running with a lease. None when someone else has it (duplicate delivery)."""
    now = timezone.now()
    lease = now + timedelta(seconds=settings.FLOWMEND_LEASE_SECONDS)
    updated = StepAttempt.objects.filter(pk=attempt_id, status="queued").update(
        status="running", worker=worker, started_at=now, lease_until=lease
    )
    if not updated:
        return None
    return StepAttempt.objects.select_related("run").get(pk=attempt_id)


def extend_leases(attempt_ids: list[int]) -> set[int]:
    """Extend the leases of attempts still running; returns those no longer running."""
    if not attempt_ids:
        return set()
    lease = timezone.now() + timedelta(seconds=settings.FLOWMEND_LEASE_SECONDS)
    StepAttempt.objects.filter(pk__in=attempt_ids, status="running").update(lease_until=lease)
    still = set(
        StepAttempt.objects.filter(pk__in=attempt_ids, status="running").values_list(
            "pk", flat=True
        )
    )
    return set(attempt_ids) - still
