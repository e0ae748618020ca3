"""Models -> plain dicts, as the API answers them (CONTRACT §3). Pages reuse them.

Datetimes stay ``datetime`` objects (the API's JSON renderer writes them as ISO 8601; a
template can format them); ids of runs are strings.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from interventions.models import Intervention
from workflows import engine, store
from workflows.models import (
    Checkpoint,
    ErrorRecord,
    Run,
    RunEvent,
    StepAttempt,
    WorkflowDefinition,
)

RECOVERY_KEYS = ("strategy", "number", "success", "action", "duration_ms")


def _dt(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, tz=UTC) if ts is not None else None


# --------------------------------------------------------------------------- workflows


def workflow_version(definition: WorkflowDefinition) -> dict[str, Any]:
    return {
        "version": definition.version,
        "checksum": definition.checksum,
        "description": definition.description,
        "created_at": definition.created_at,
        "created_by": definition.created_by.username if definition.created_by_id else None,
    }


def workflow(versions: list[WorkflowDefinition]) -> dict[str, Any]:
    """A workflow from its versions, newest first."""
    latest = versions[0]
    return {
        "name": latest.name,
        "latest_version": latest.version,
        "description": latest.description,
        "checksum": latest.checksum,
        "source": latest.source,
        "versions": [workflow_version(d) for d in versions],
    }


def workflow_saved(definition: WorkflowDefinition, created: bool) -> dict[str, Any]:
    return {
        "name": definition.name,
        "version": definition.version,
        "checksum": definition.checksum,
        "created": created,
    }


# --------------------------------------------------------------------------- runs


def run_summary(run: Run) -> dict[str, Any]:
    """A run in a list: no steps."""
    return {
        "id": str(run.pk),
        "workflow": run.workflow_name,
        "version": run.workflow_version,
        "status": run.status,
        "error": run.error,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "progress": engine.progress(run.state or {}),
        "restarted_from": str(run.restarted_from_id) if run.restarted_from_id else None,
    }


def attempt(a: StepAttempt) -> dict[str, Any]:
    return {
        "number": a.number,
        "status": a.status,
        "started_at": a.started_at,
        "finished_at": a.finished_at,
        "error": a.error,
        "queued_at": a.queued_at,
        "duration_ms": a.duration_ms,
        "worker": a.worker,
        "fault": a.fault,
    }


def _spec_steps(run: Run) -> list[tuple[str, str]]:
    """(name, type) of every step of the run's workflow, in the spec's depth-first order."""
    try:
        spec = store.spec_for(run.definition)
    except Exception:  # an old definition that no longer validates: types unknown
        return []
    return [(s.name, s.type) for s, _ in spec.all_steps()]


_SUFFIX = re.compile(r"\[(\d+)\]")
_GROUPS = {"handler": 1, "compensation": 2}


def step_order(run: Run, positions: dict[str, int] | None = None) -> list[str]:
    """The run's step instances in display order.

    PostgreSQL's jsonb does not keep the key order of ``state["steps"]``, so the order is
    rebuilt: main steps (with their fallbacks) in the workflow's order, iterations by index;
    then on-error handlers; then compensations in the order they ran.
    """
    state_steps = (run.state or {}).get("steps", {})
    if positions is None:
        positions = {name: i for i, (name, _) in enumerate(_spec_steps(run))}
    compensations = {n: i for i, n in enumerate((run.state or {}).get("compensations") or [])}

    def key(name: str) -> tuple[Any, ...]:
        st = state_steps[name]
        kind = st.get("kind", "action")
        group = _GROUPS.get(kind, 0)
        suffix = tuple(int(i) for i in _SUFFIX.findall(st.get("suffix") or ""))
        base = st.get("base", name)
        position = positions.get(base, len(positions))
        if group == 2 and name in compensations:
            return (group, compensations[name], (), name)
        return (group, position, suffix, name)

    return sorted(state_steps, key=key)


def steps(run: Run, attempts: Iterable[StepAttempt] | None = None) -> list[dict[str, Any]]:
    """The run's step instances in ``step_order``, with their attempts."""
    if attempts is None:
        attempts = StepAttempt.objects.filter(run=run).order_by("step", "number", "id")
    by_step: dict[str, list[StepAttempt]] = defaultdict(list)
    for a in attempts:
        by_step[a.step].append(a)
    spec_steps = _spec_steps(run)
    types = dict(spec_steps)
    positions = {name: i for i, (name, _) in enumerate(spec_steps)}
    state_steps = (run.state or {}).get("steps", {})
    out = []
    for name in step_order(run, positions):
        st = state_steps[name]
        base = st.get("base", name)
        mine = sorted(by_step.get(name, []), key=_number)
        status = st.get("status", "pending")
        if status == "queued" and mine and mine[-1].status == "running":
            status = "running"  # a worker has claimed the attempt the engine queued
        out.append(
            {
                "name": name,
                "base": base,
                "type": types.get(base, ""),
                "kind": st.get("kind", "action"),
                "status": status,
                "output": st.get("output"),
                "error": st.get("error"),
                "scope": st.get("scope", ""),
                "started_at": _dt(st.get("started")),
                "finished_at": _dt(st.get("finished")),
                "attempts": [attempt(a) for a in mine],
            }
        )
    return out


def _number(a: StepAttempt) -> tuple[int, int]:
    return a.number, a.pk or 0


def run_detail(run: Run) -> dict[str, Any]:
    """A run with its progress and steps (CONTRACT §3 ``GET /runs/{id}``)."""
    data = run_summary(run)
    data.update(
        input=run.input,
        output=run.output,
        steps=steps(run),
    )
    return data


# --------------------------------------------------------------------------- history


def event(e: RunEvent) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "type": e.type,
        "step": e.step,
        "attempt": e.attempt,
        "at": e.at,
        "actor": e.actor,
        "data": e.data,
    }


def checkpoint(c: Checkpoint) -> dict[str, Any]:
    return {
        "id": c.pk,
        "step": c.step,
        "kind": c.kind,
        "created_at": c.created_at,
        "checksum": c.checksum,
        "size_bytes": c.size_bytes,
        "compressed": c.compressed,
        "valid": c.valid,
        "state_version": c.state_version,
        "created_by": c.created_by,
    }


def recovery_entry(entry: Any) -> dict[str, Any]:
    entry = entry if isinstance(entry, dict) else {}
    return {key: entry.get(key) for key in RECOVERY_KEYS}


def error(e: ErrorRecord) -> dict[str, Any]:
    return {
        "id": e.pk,
        "run": str(e.run_id),
        "step": e.step,
        "attempt": e.attempt,
        "class": e.error_class,
        "severity": e.severity,
        "retryable": e.retryable,
        "type": e.type,
        "message": e.message,
        "fingerprint": e.fingerprint,
        "created_at": e.created_at,
        "recovery": [recovery_entry(r) for r in (e.recovery or [])],
    }


# --------------------------------------------------------------------------- interventions


def intervention(i: Intervention) -> dict[str, Any]:
    return {
        "id": i.pk,
        "run": str(i.run_id),
        "step": i.step,
        "kind": i.kind,
        "reason": i.reason,
        "prompt": i.prompt,
        "status": i.status,
        "options": list(i.options or []),
        "created_at": i.created_at,
        "expires_at": i.expires_at,
        "decided_at": i.decided_at,
        "decided_by": i.decided_by.username if i.decided_by_id else None,
        "action": i.action,
        "comment": i.comment,
        "output": i.output,
        "required_approvals": i.required_approvals,
        "approvals": [{"by": a.get("by"), "at": a.get("at")} for a in (i.approvals or [])],
    }


def intervention_detail(i: Intervention) -> dict[str, Any]:
    data = intervention(i)
    data["context"] = i.context
    return data


def error_groups(queryset: Any, limit: int = 100) -> list[dict[str, Any]]:
    """ErrorRecords grouped by fingerprint, most recently seen first (``GET /errors``).

    ``class``, ``type`` and ``message`` are those of the group's latest record; ``runs``
    lists the distinct runs it happened in.
    """
    from django.db.models import Count, Max, Min

    groups = list(
        queryset.order_by()
        .values("fingerprint")
        .annotate(count=Count("id"), first_seen=Min("created_at"), last_seen=Max("created_at"))
        .order_by("-last_seen", "fingerprint")[:limit]
    )
    fingerprints = [g["fingerprint"] for g in groups]
    latest: dict[str, ErrorRecord] = {}
    runs: dict[str, list[str]] = defaultdict(list)
    records = (
        queryset.filter(fingerprint__in=fingerprints)
        .only("fingerprint", "error_class", "type", "message", "run_id", "created_at")
        .order_by("-created_at", "-id")
    )
    for r in records:
        latest.setdefault(r.fingerprint, r)
        run_id = str(r.run_id)
        if run_id not in runs[r.fingerprint]:
            runs[r.fingerprint].append(run_id)
    out = []
    for g in groups:
        r = latest[g["fingerprint"]]
        out.append(
            {
                "fingerprint": g["fingerprint"],
                "class": r.error_class,
                "type": r.type,
                "message": r.message,
                "count": g["count"],
                "first_seen": g["first_seen"],
                "last_seen": g["last_seen"],
                "runs": runs[g["fingerprint"]],
            }
        )
    return out
