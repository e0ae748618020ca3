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
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from interventions.models import Intervention
from workflows import engine, sql
from workflows import spec as spec_mod
from workflows.models import (
    Checkpoint,
    ErrorRecord,
    Run,
    RunEvent,
    StepAttempt,
    WorkflowDefinition,
    canonical_json,
)

log = logging.getLogger(__name__)

# Callbacks run after each commit that changed a run, with the run and its new state
# version: monitoring hooks in here. They must be cheap (they run in worker threads).
run_changed_listeners: list[Callable[[Run, int], None]] = []


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
        if "spec" in definition.__dict__:
            data = definition.spec
        else:  # loaded without its spec (the hot path never reads it)
            data = WorkflowDefinition.objects.values_list("spec", flat=True).get(pk=definition.pk)
        cached = spec_mod.validate_data(data)
        _spec_cache[key] = cached
    return cached


_LOCK_SQL = """
SELECT r.id, r.definition_id, r.workflow_name, r.workflow_version, r.status, r.input,
       r.state_doc, r.state_checksum, r.state_version, r.event_seq, r.due_at, r.deadline,
       r.started_at, r.finished_at, r.created_at, r.restarted_from_id, r.created_by_id,
       d.name, d.version, d.checksum
FROM workflows_run r JOIN workflows_workflowdefinition d ON d.id = r.definition_id
WHERE r.id = %s FOR UPDATE OF r
"""


def _lock_run(run_id: Any) -> Run:
    """SELECT ... FOR UPDATE of the run row, with what the hot path needs and no more."""
    if connection.vendor != "postgresql":  # SQLite (embedded): the ORM, one writer anyway
        try:
            return Run.objects.select_related("definition").defer(*_NOT_NEEDED).get(pk=run_id)
        except (Run.DoesNotExist, ValueError, ValidationError) as exc:
            raise RunNotFound(str(run_id)) from exc
    try:
        key = run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(str(run_id))
    except ValueError as exc:
        raise RunNotFound(str(run_id)) from exc
    with sql._cursor() as cursor:
        cursor.execute(_LOCK_SQL, [key])
        row = cursor.fetchone()
    if row is None:
        raise RunNotFound(str(run_id))
    (pk, definition_id, workflow_name, workflow_version, status, input_, state_doc,
     checksum, state_version, event_seq, due_at, deadline, started_at, finished_at,
     created_at, restarted_from_id, created_by_id, d_name, d_version, d_checksum) = row  # fmt: skip
    definition = WorkflowDefinition(
        pk=definition_id, name=d_name, version=d_version, checksum=d_checksum
    )
    definition.__dict__.pop("spec", None)
    run = Run(
        pk=pk, definition=definition, workflow_name=workflow_name,
        workflow_version=workflow_version, status=status,
        input=json.loads(input_) if isinstance(input_, str) else input_,
        state_doc=state_doc, state_checksum=checksum, state_version=state_version,
        event_seq=event_seq, due_at=due_at, deadline=deadline, started_at=started_at,
        finished_at=finished_at, created_at=created_at, restarted_from_id=restarted_from_id,
        created_by_id=created_by_id,
    )  # fmt: skip
    run._state.adding = False
    run._state.db = "default"
    return run


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


# columns the hot path never reads (spec_for caches the parsed spec by checksum)
_NOT_NEEDED = ("faults", "definition__spec", "definition__source")


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
        run = _lock_run(run_id)
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
    values: dict[str, Any] = {"finished_at": now, "lease_until": None}
    if report.succeeded:
        values.update(status="succeeded", output=sql.Json(report.output))
    else:
        values.update(status="failed", error=sql.Json(report.error))
    return sql.update(ATTEMPTS, "id = %s AND status = 'running'", [report.attempt_id], values) == 1


ATTEMPTS = StepAttempt._meta.db_table
EVENTS = RunEvent._meta.db_table
RUNS = Run._meta.db_table
CHECKPOINTS = Checkpoint._meta.db_table
_ATTEMPT_COLUMNS = (
    "run_id", "step", "kind", "step_type", "number", "status", "input", "fault", "output",
    "error", "timeout_seconds", "queued_at", "started_at", "worker", "lease_until",
    "dispatch_count",
)  # fmt: skip
_EVENT_COLUMNS = (
    "run_id", "seq", "type", "step", "attempt", "at", "actor", "state_version", "data",
)  # fmt: skip


def _persist(
    run: Run,
    decision: engine.Decision,
    now: datetime,
    actor: str,
    claim_for: str | None,
) -> Applied:
    """Write what ``decide`` returned: a handful of statements, one per table touched."""
    state = decision.state
    commands = decision.commands
    state_text = canonical_json(state)
    version = run.state_version + 1
    events: list[tuple[Any, ...]] = []
    attempts: list[tuple[Any, ...]] = []
    attempt_meta: list[tuple[str, str, int]] = []  # (status, step, number)
    dispatches = [c for c in commands if isinstance(c, engine.DispatchAttempt)]
    inline_cmd = dispatches[0] if claim_for and len(dispatches) == 1 else None
    timers: list[engine.SetTimer] = []
    lease_until = now + timedelta(seconds=settings.FLOWMEND_LEASE_SECONDS)

    for cmd in commands:
        if isinstance(cmd, engine.Emit):
            run.event_seq += 1
            events.append(
                (run.pk, run.event_seq, cmd.type, cmd.step, cmd.attempt, now, actor, version,
                 sql.Json(cmd.data))
            )  # fmt: skip
        elif isinstance(cmd, engine.DispatchAttempt):
            inline = cmd is inline_cmd
            attempts.append(
                (run.pk, cmd.step, cmd.kind, cmd.step_type, cmd.attempt,
                 "running" if inline else "queued", sql.Json(cmd.input), sql.Json(cmd.fault),
                 None, None, cmd.timeout, now, now if inline else None,
                 claim_for if inline else "", lease_until if inline else None, 1)
            )  # fmt: skip
            attempt_meta.append(("inline" if inline else "queued", cmd.step, cmd.attempt))
        elif isinstance(cmd, engine.RecordAttempt):
            attempts.append(
                (run.pk, cmd.step, cmd.kind, cmd.step_type, cmd.attempt, "running",
                 sql.Json(cmd.input), None, None, None, 0, now, now, "engine", None, 1)
            )  # fmt: skip
            attempt_meta.append(("engine", cmd.step, cmd.attempt))
        elif isinstance(cmd, engine.SetTimer):
            timers.append(cmd)
    batch = sql.Batch()  # everything below goes to PostgreSQL in one round trip
    batch.insert(ATTEMPTS, _ATTEMPT_COLUMNS, attempts, returning=True)
    for cmd in commands:
        if isinstance(cmd, engine.CloseAttempt):
            batch.update(
                ATTEMPTS,
                "run_id = %s AND step = %s AND number = %s AND status IN ('queued', 'running')",
                [run.pk, cmd.step, cmd.attempt],
                {
                    "status": cmd.status,
                    "output": sql.Json(cmd.output),
                    "error": sql.Json(cmd.error),
                    "finished_at": now,
                    "lease_until": None,
                },
            )
        elif isinstance(cmd, engine.OpenIntervention):
            _open_intervention(run, cmd, now)
        elif isinstance(cmd, engine.CloseInterventions):
            qs = Intervention.objects.filter(run=run, status="open")
            if cmd.step is not None:
                qs = qs.filter(step=cmd.step)
            qs.update(status="cancelled", decided_at=now)
        elif isinstance(cmd, engine.TakeCheckpoint):
            _insert_checkpoint(
                batch, run, state_text, version, cmd.kind, cmd.step, actor or "engine"
            )
    batch.insert(EVENTS, _EVENT_COLUMNS, events)
    _update_run_row(batch, run, state, state_text, now)
    ids = [row[0] for row in batch.run(fetch=bool(attempts))]

    to_send = [pk for pk, (kind, _, _) in zip(ids, attempt_meta, strict=True) if kind == "queued"]
    inline = _inline_attempt(run, ids, attempt_meta, inline_cmd, claim_for, now, lease_until)
    _after_commit(run, version, to_send, timers, now)
    return Applied(run, commands, inline)


def _inline_attempt(
    run: Run,
    ids: list[int],
    meta: list[tuple[str, str, int]],
    cmd: engine.DispatchAttempt | None,
    worker: str | None,
    now: datetime,
    lease_until: datetime,
) -> StepAttempt | None:
    """The attempt this worker claimed in the same transaction, ready to execute."""
    if cmd is None:
        return None
    pk = next(pk for pk, (kind, _, _) in zip(ids, meta, strict=True) if kind == "inline")
    attempt = StepAttempt(
        pk=pk, run=run, step=cmd.step, kind=cmd.kind, step_type=cmd.step_type,
        number=cmd.attempt, status="running", input=cmd.input, fault=cmd.fault,
        timeout_seconds=cmd.timeout, queued_at=now, started_at=now, worker=worker or "",
        lease_until=lease_until,
    )  # fmt: skip
    attempt._state.adding = False
    return attempt


def state_problems(run: Run) -> list[str]:
    """Integrity check on load: the stored checksum and the state's schema."""
    if not run.state_checksum:
        return []  # a run created before checksums, or not started yet
    if hashlib.sha256(run.state_doc.encode()).hexdigest() != run.state_checksum:
        return ["the state does not match its checksum", *engine.validate_state(_parsed(run))]
    return engine.validate_state(_parsed(run))


def _parsed(run: Run) -> Any:
    try:
        return run.state
    except ValueError:
        return None  # not JSON at all: validate_state says so


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


def _update_run_row(
    batch: sql.Batch, run: Run, state: dict[str, Any], state_text: bytes, now: datetime
) -> None:
    run.state_doc = state_text.decode()
    run.__dict__["_state_cache"] = (run.state_doc, state)
    run.state_checksum = hashlib.sha256(state_text).hexdigest()
    run.state_version += 1
    run.status = state["status"]
    run.due_at = from_ts(engine.next_due(state))
    run.deadline = from_ts(state.get("deadline")) if state.get("phase") == "main" else None
    if run.started_at is None and state.get("phase") != "new":
        run.started_at = now
    if state.get("phase") == "done":
        run.finished_at = run.finished_at or now
        run.output = state.get("output")
    else:
        run.finished_at = None
        run.output = None
    run.error = state.get("error")
    run.updated_at = now
    batch.update(
        RUNS,
        "id = %s",
        [run.pk],
        {
            "definition_id": run.definition_id,
            "workflow_version": run.workflow_version,
            "state_doc": run.state_doc,
            "state_checksum": run.state_checksum,
            "state_version": run.state_version,
            "status": run.status,
            "due_at": run.due_at,
            "deadline": run.deadline,
            "started_at": run.started_at,
            "finished_at": run.finished_at,
            "output": sql.Json(run.output),
            "error": sql.Json(run.error),
            "event_seq": run.event_seq,
            "updated_at": now,
        },
    )


def _after_commit(
    run: Run, version: int, to_send: list[int], timers: list[engine.SetTimer], now: datetime
) -> None:
    short = settings.FLOWMEND_SHORT_WAIT_SECONDS
    wakes = [(t.step, t.due - now.timestamp()) for t in timers if t.due - now.timestamp() <= short]

    def send() -> None:
        from workflows import actors

        for pk in to_send:
            actors.dispatch_attempt(pk)
        for step, delay in wakes:
            actors.wake(str(run.pk), step, max(0.0, delay))
        for listener in run_changed_listeners:
            try:
                listener(run, version)
            except Exception:  # a broken listener never breaks the engine
                log.exception("run listener failed")

    transaction.on_commit(send)


def record_event(
    run_id: Any, type: str, actor: str = "", data: dict[str, Any] | None = None
) -> RunEvent:
    """Append one event to a run's history without touching its state (``run.restarted``).

    Takes the row lock, so ``seq`` stays gap-free and ordered with the engine's events.
    """
    with transaction.atomic():
        try:
            run = (
                Run.objects.select_for_update(of=("self",))
                .only("id", "event_seq", "state_version")
                .get(pk=run_id)
            )
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
                    listener(run, run.state_version)
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
        required_approvals=spec.settings.interventions.approvals if cmd.kind == "approval" else 1,
        expires_at=expires,
        context={"error": run.state.get("steps", {}).get(cmd.step, {}).get("error")},
    )


# --------------------------------------------------------------------------- errors

_NUMBERS = re.compile(r"\d+")  # also inside tokens: "order bulk55" ~ "order bulk54"
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


_CHECKPOINT_COLUMNS = (
    "run_id", "step", "kind", "data", "checksum", "size_bytes", "compressed", "valid",
    "state_version", "workflow_version", "schema_version", "created_at", "created_by",
)  # fmt: skip


def _checkpoint_row(
    run: Run, raw: bytes, state_version: int, kind: str, step: str, by: str
) -> tuple[Any, ...]:
    """Canonical JSON in, a checkpoint row out: sha256, zlib above `compress-above`."""
    limit = spec_for(run.definition).settings.checkpoints.compress_above
    compressed = len(raw) > limit
    return (
        run.pk, step, kind, zlib.compress(raw, 1) if compressed else raw,
        hashlib.sha256(raw).hexdigest(), len(raw), compressed, True, state_version,
        run.workflow_version, engine.STATE_SCHEMA, timezone.now(), by,
    )  # fmt: skip


def _insert_checkpoint(
    batch: sql.Batch, run: Run, raw: bytes, state_version: int, kind: str, step: str, by: str
) -> None:
    batch.insert(
        CHECKPOINTS, _CHECKPOINT_COLUMNS, [_checkpoint_row(run, raw, state_version, kind, step, by)]
    )


def write_checkpoint(run: Run, state: dict[str, Any], kind: str, step: str, by: str) -> Checkpoint:
    """A checkpoint of ``state`` outside the event path (benchmarks, tools)."""
    row = _checkpoint_row(run, canonical_json(state), run.state_version, kind, step, by)
    (pk,) = sql.insert(CHECKPOINTS, _CHECKPOINT_COLUMNS, [row], returning=True)
    checkpoint = Checkpoint(pk=pk, **dict(zip(_CHECKPOINT_COLUMNS, row, strict=True)))
    checkpoint._state.adding = False
    return checkpoint


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
