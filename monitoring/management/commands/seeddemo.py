"""Bulk-create demo runs for benchmarks and screenshots: ``manage.py seeddemo --runs N``.

A demo/bench tool, not a migration: it saves demo workflows (``demo-pipeline`` with
``--attempts-per-run - 1`` steps and ``demo-wide`` with 20) and writes runs whose state,
attempts, events and error records agree with each other, as a worker would have left
them: mostly succeeded (some after a retry), some failed after their retries, cancelled,
and a few still running, waiting, paused or awaiting a person. Runs are spread over the
last 7 days (unfinished ones over the last 30 minutes). Every run's input says
``{"demo": true}``. On PostgreSQL rows go in with COPY (100k runs and ~1M attempts in a
few minutes); elsewhere with bulk_create.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, transaction

from workflows import services, store
from workflows.models import (
    ErrorRecord,
    Run,
    RunEvent,
    StepAttempt,
    WorkflowDefinition,
    canonical_json,
)

BATCH = 5000
STATUS_WEIGHTS = {
    "succeeded": 72, "failed": 12, "cancelled": 4, "running": 5, "waiting": 2,
    "awaiting_intervention": 2, "paused": 2, "pending": 1,
}  # fmt: skip
ERRORS = [
    ("UpstreamUnavailable", "upstream 503 from payments-{n}", "transient"),
    ("TimeoutError", "step timed out after 30s", "timeout"),
    ("KeyError", "'customer_id'", "step_error"),
    ("ValueError", "invalid amount -{n}", "step_error"),
    ("ConnectionError", "connection refused by 10.0.{n}.7:5432", "transient"),
]
RUN_COLS = ("id", "definition_id", "workflow_name", "workflow_version", "status", "input", "output", "error",
            "faults", "state_doc", "state_version", "state_checksum", "event_seq", "due_at", "deadline",
            "created_at", "started_at", "finished_at", "updated_at")  # fmt: skip
ATTEMPT_COLS = ("run_id", "step", "kind", "step_type", "number", "status", "input", "output", "error",
                "timeout_seconds", "queued_at", "not_before", "started_at", "finished_at", "worker",
                "lease_until", "dispatch_count")  # fmt: skip
EVENT_COLS = ("run_id", "seq", "type", "step", "attempt", "at", "actor", "state_version", "data")
ERROR_COLS = ("run_id", "step", "attempt", "error_class", "severity", "retryable", "type", "message",
              "traceback", "fingerprint", "workflow_name", "recovery", "created_at")  # fmt: skip


def workflow_yaml(name: str, steps: int) -> str:
    lines = [f"name: {name}", "description: Demo workflow made by seeddemo (bench data).", "steps:"]
    for i in range(1, steps + 1):
        lines += [f"  - name: step-{i:02d}", "    type: noop",
                  "    on-failure: {retry: {max-attempts: 3, delay: 2s}}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def _dt(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, tz=UTC) if ts is not None else None


class Maker:
    """Simulates one run at a time into row tuples."""

    def __init__(self, rng: random.Random, now: float) -> None:
        self.rng, self.now = rng, now

    def run(self, definition: WorkflowDefinition, steps: int) -> tuple[tuple, list, list, list]:  # type: ignore[type-arg]
        rng = self.rng
        status = rng.choices(list(STATUS_WEIGHTS), list(STATUS_WEIGHTS.values()))[0]
        terminal = status in ("succeeded", "failed", "cancelled")
        created = self.now - (rng.uniform(60, 7 * 86400) if terminal else rng.uniform(0, 1800))
        run_id = uuid.uuid4()
        names = [f"step-{i:02d}" for i in range(1, steps + 1)]
        stop = rng.randrange(steps)  # the step where a non-succeeded run stops
        attempts: list[tuple] = []  # type: ignore[type-arg]
        events: list[tuple] = []  # type: ignore[type-arg]
        errors: list[tuple] = []  # type: ignore[type-arg]
        state_steps: dict[str, Any] = {}
        t = created + rng.uniform(0.005, 0.05)
        started = t
        seq = 0

        def event(type_: str, step: str = "", attempt: int | None = None, **data: Any) -> None:
            nonlocal seq
            seq += 1
            events.append(
                (run_id, seq, type_, step, attempt, _dt(t), "worker", seq, json.dumps(data))
            )

        event("run.started")
        run_error = None
        due = None
        for i, name in enumerate(names):
            st = {"base": name, "suffix": "", "kind": "action", "scope": "", "status": "pending",
                  "attempt": 0, "retries": 0, "output": None, "error": None, "due": None,
                  "started": None, "finished": None}  # fmt: skip
            state_steps[name] = st
            if status != "succeeded" and i > stop:
                if status in ("failed", "cancelled"):
                    st.update(status="cancelled", finished=t)
                continue
            final_here = status != "succeeded" and i == stop
            fails = 3 if final_here and status in ("failed", "awaiting_intervention") else (
                1 if final_here and status == "waiting" else (1 if rng.random() < 0.08 else 0))  # fmt: skip
            n_attempts = (
                fails
                if final_here and status in ("failed", "awaiting_intervention", "waiting")
                else fails + 1
            )
            st["started"] = t
            for number in range(1, n_attempts + 1):
                queued = t
                begin = queued + rng.uniform(0.002, 0.05)
                end = begin + rng.expovariate(1 / 0.8)
                last = number == n_attempts
                if final_here and last and status in ("running", "paused", "cancelled", "pending"):
                    live = status == "running"
                    astat = "running" if live else "cancelled"
                    attempts.append((run_id, name, "action", "noop", number, astat, "{}", None, None, 300.0,
                                     _dt(queued), None, _dt(begin), None if live else _dt(end), "demo-worker",
                                     _dt(self.now + 60) if live else None, 1))  # fmt: skip
                    st.update(
                        status="queued" if live else "cancelled",
                        attempt=number,
                        finished=None if live else end,
                    )
                    t = end
                    break
                failed = number <= fails
                if failed:
                    etype, msg, cls = rng.choice(ERRORS)
                    error = {"type": etype, "message": msg.format(n=rng.randrange(4))}
                    attempts.append((run_id, name, "action", "noop", number, "failed", "{}", None, json.dumps(error),
                                     300.0, _dt(queued), None, _dt(begin), _dt(end), "demo-worker", None, 1))  # fmt: skip
                    t = end
                    fp = store.fingerprint(definition.name, name, error)
                    klass, severity, retryable = store.classify(error)
                    errors.append((run_id, name, number, klass, severity, retryable, etype, error["message"],
                                   f'Traceback (most recent call last):\n  File "demo.py", line 1\n{etype}: {error["message"]}',
                                   fp, definition.name, "[]", _dt(end)))  # fmt: skip
                    if number < 3:
                        wait = 2.0 * number
                        event("step.retrying", name, number, error=error, wait=wait, retry=number)
                        st.update(status="retrying", retries=number, error=error, attempt=number)
                        if last:  # waiting on the retry timer
                            due = end + (wait if status != "waiting" else 900)
                            st["due"] = due
                            break
                        t = end + wait
                    else:
                        event("step.failed", name, number, error=error)
                        st.update(status="failed", attempt=number, error=error, finished=end)
                        if status == "awaiting_intervention":
                            st["escalated"] = True
                        run_error = {**error, "step": name}
                else:
                    attempts.append((run_id, name, "action", "noop", number, "succeeded", "{}", '{"ok": true}', None,
                                     300.0, _dt(queued), None, _dt(begin), _dt(end), "demo-worker", None, 1))  # fmt: skip
                    t = end
                    event("step.succeeded", name, number)
                    st.update(
                        status="succeeded",
                        attempt=number,
                        output={"ok": True},
                        error=None,
                        finished=end,
                    )
        finished = t if terminal else None
        if terminal:
            event(f"run.{status}")
        state = {
            "schema": 1, "phase": "done" if terminal else "main", "status": status,
            "paused": status == "paused", "cancelled": status == "cancelled", "inputs": {"demo": True},
            "run_id": str(run_id), "faults": [], "deadline": started + 3600,
            "error": run_error if status == "failed" else None,
            "output": {n: s["output"] for n, s in state_steps.items() if s["status"] == "succeeded"} if status == "succeeded" else None,
            "completed": [n for n, s in state_steps.items() if s["status"] == "succeeded"],
            "iterations": {}, "checkpoint": {"count": 0, "last": started}, "started": started,
            "steps": state_steps,
        }  # fmt: skip
        if terminal:
            state.update(final=status, finished=finished)
        if status == "pending":
            state = {"schema": 1, "phase": "new", "status": "pending", "steps": {}}
            attempts, events, errors = [], [], []
            seq = 0
        ts = _dt(t)
        doc = canonical_json(state)
        row = (run_id, definition.pk, definition.name, definition.version, status, '{"demo": true}',
               json.dumps(state.get("output")) if terminal else None,
               json.dumps(run_error) if status == "failed" else None, "[]", doc.decode(), seq,
               hashlib.sha256(doc).hexdigest(), seq, _dt(due), None if terminal else _dt(started + 3600),
               _dt(created), None if status == "pending" else _dt(started), _dt(finished), ts)  # fmt: skip
        return row, attempts, events, errors


def _copy(table: str, cols: tuple[str, ...], rows: list[tuple]) -> None:  # type: ignore[type-arg]
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy,
    ):
        for r in rows:
            copy.write_row(r)


def _bulk(model: Any, cols: tuple[str, ...], rows: list[tuple]) -> None:  # type: ignore[type-arg]
    objs = []
    for r in rows:
        values = dict(zip(cols, r, strict=True))
        for key in ("input", "output", "error", "faults", "state", "data", "recovery"):
            if key in values and isinstance(values[key], str):
                values[key] = json.loads(values[key])
        objs.append(model(**values))
    model.objects.bulk_create(objs, batch_size=1000)


class Command(BaseCommand):
    help = "Bulk-create demo runs (bench/screenshot data): demo-* workflows, input {demo: true}."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--runs", type=int, default=1000)
        parser.add_argument("--attempts-per-run", type=int, default=10)
        parser.add_argument(
            "--workflow", default="demo-pipeline", help="name of the main demo workflow"
        )
        parser.add_argument("--seed", type=int, default=7)

    def handle(self, *args: Any, **opts: Any) -> None:
        runs, per_run = opts["runs"], max(opts["attempts_per_run"], 2)
        self.stdout.write(
            f"seeddemo: writing {runs} demo runs (~{runs * per_run} step attempts) into "
            f"{connection.settings_dict['NAME']} - demo data for benchmarks, not for production"
        )
        main = self._definition(opts["workflow"], per_run - 1)
        wide = self._definition("demo-wide", 20)
        maker = Maker(random.Random(opts["seed"]), time.time())
        started = time.monotonic()
        counts = [0, 0, 0, 0]
        for batch in self._batches(maker, main, wide, per_run - 1, runs):
            self._write(batch)
            counts = [c + len(b) for c, b in zip(counts, batch, strict=True)]
            self.stdout.write(
                f"  {counts[0]} runs, {counts[1]} attempts ({time.monotonic() - started:.0f}s)"
            )
        if connection.vendor == "postgresql":
            # VACUUM also sets the visibility map (index-only scans); not inside a transaction
            command = "ANALYZE" if connection.in_atomic_block else "VACUUM ANALYZE"
            with connection.cursor() as cursor:
                for table in (
                    "workflows_run",
                    "workflows_stepattempt",
                    "workflows_runevent",
                    "workflows_errorrecord",
                ):
                    cursor.execute(f"{command} {table}")
        self.stdout.write(
            f"seeddemo: done: {counts[0]} runs, {counts[1]} attempts, {counts[2]} events, "
            f"{counts[3]} errors in {time.monotonic() - started:.1f}s"
        )

    def _definition(self, name: str, steps: int) -> WorkflowDefinition:
        definition, _ = services.save_workflow(workflow_yaml(name, steps), "application/yaml", None)
        return definition

    def _batches(
        self,
        maker: Maker,
        main: WorkflowDefinition,
        wide: WorkflowDefinition,
        steps: int,
        runs: int,
    ) -> Iterator[list[list]]:  # type: ignore[type-arg]
        batch: list[list] = [[], [], [], []]  # type: ignore[type-arg]
        for i in range(runs):
            wide_run = i % 10 == 9
            row, attempts, events, errors = maker.run(
                wide if wide_run else main, 20 if wide_run else steps
            )
            batch[0].append(row)
            batch[1].extend(attempts)
            batch[2].extend(events)
            batch[3].extend(errors)
            if len(batch[0]) >= BATCH:
                yield batch
                batch = [[], [], [], []]
        if batch[0]:
            yield batch

    def _write(self, batch: list[list]) -> None:  # type: ignore[type-arg]
        tables = [("workflows_run", RUN_COLS, Run), ("workflows_stepattempt", ATTEMPT_COLS, StepAttempt),
                  ("workflows_runevent", EVENT_COLS, RunEvent), ("workflows_errorrecord", ERROR_COLS, ErrorRecord)]  # fmt: skip
        with transaction.atomic():
            for (table, cols, model), rows in zip(tables, batch, strict=True):
                if not rows:
                    continue
                if connection.vendor == "postgresql":
                    _copy(table, cols, rows)
                else:
                    _bulk(
                        model,
                        tuple(
                            c.removesuffix("_id") if c in ("run_id", "definition_id") else c
                            for c in cols
                        ),
                        rows,
                    )
