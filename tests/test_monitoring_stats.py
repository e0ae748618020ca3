"""The console's figures (monitoring.stats) on a small crafted dataset, real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from interventions.models import Intervention
from monitoring import stats
from workflows import engine
from workflows.models import ErrorRecord, Run, RunEvent, StepAttempt, WorkflowDefinition


@pytest.fixture
def definition(saved_workflow: Any) -> WorkflowDefinition:
    return saved_workflow()


def make_run(
    definition: WorkflowDefinition, status: str, ago: float = 600, took: float = 10, **fields: Any
) -> Run:
    now = timezone.now()
    terminal = status in ("succeeded", "failed", "cancelled", "compensated")
    run = Run.objects.create(
        definition=definition, workflow_name=fields.pop("workflow", definition.name), workflow_version=1,
        status=status, state={"schema": 1, "phase": "done" if terminal else "main", "steps": {}}, **fields,
    )  # fmt: skip
    started = now - timedelta(seconds=ago)
    Run.objects.filter(pk=run.pk).update(
        created_at=started,
        started_at=started,
        finished_at=started + timedelta(seconds=took) if terminal else None,
    )
    run.refresh_from_db()
    return run


def attempt(run: Run, step: str, number: int, status: str, ago: float) -> StepAttempt:
    """An attempt that finished ``ago`` seconds ago; a failed one gets its error record."""
    at = timezone.now() - timedelta(seconds=ago)
    if status == "failed":
        record = ErrorRecord.objects.create(run=run, step=step, attempt=number, type="Boom", message="no",
                                            fingerprint=f"fp-{step}", workflow_name=run.workflow_name)  # fmt: skip
        ErrorRecord.objects.filter(pk=record.pk).update(created_at=at)
    return StepAttempt.objects.create(
        run=run, step=step, step_type="noop", number=number, status=status,
        queued_at=at - timedelta(seconds=1), started_at=at - timedelta(seconds=1), finished_at=at,
    )  # fmt: skip


def test_runs_by_status_and_open_interventions(definition: WorkflowDefinition) -> None:
    for status in ("succeeded", "succeeded", "failed", "running"):
        make_run(definition, status)
    waiting = make_run(definition, "awaiting_intervention")
    Intervention.objects.create(run=waiting, kind="escalation", reason="x")
    Intervention.objects.create(run=waiting, kind="approval", reason="y")
    Intervention.objects.create(run=waiting, kind="approval", reason="z", status="decided")
    counts = {row["status"]: row["count"] for row in stats.runs_by_status()}
    assert counts["succeeded"] == 2 and counts["failed"] == 1 and counts["compensated"] == 0
    assert stats.runs_by_status()[0]["url"] == "/runs/?status=pending"
    assert stats.open_interventions()["count"] == 2
    assert stats.open_interventions()["by_kind"] == {"escalation": 1, "approval": 1}


def test_throughput_and_failure_rate_per_minute(definition: WorkflowDefinition) -> None:
    run = make_run(definition, "succeeded", ago=130, took=5)  # finished ~2 minutes ago
    make_run(definition, "failed", ago=7300)  # over an hour ago: out of the window
    attempt(run, "first", 1, "failed", 125)
    attempt(run, "first", 2, "succeeded", 125)
    attempt(run, "second", 1, "succeeded", 125)
    attempt(run, "second", 2, "cancelled", 125)  # cancelled attempts are not throughput
    attempt(run, "old", 1, "failed", 4000)
    rows = stats.throughput_per_minute(hours=1)
    assert 60 <= len(rows) <= 61
    assert sum(r["runs"] for r in rows) == 1 and sum(r["attempts"] for r in rows) == 3
    assert sum(r["failed"] for r in rows) == 1
    assert [r["rate"] for r in rows if r["attempts"]] == [pytest.approx(1 / 3)]
    busy = [r for r in stats.failure_rate_per_minute(hours=1) if r["finished"]]
    assert len(busy) == 1 and busy[0]["failed"] == 1 and busy[0]["rate"] == pytest.approx(1 / 3)
    assert all(r["rate"] is None for r in stats.failure_rate_per_minute() if not r["finished"])


def test_error_handling_success_rate(definition: WorkflowDefinition) -> None:
    recovered = make_run(definition, "succeeded")
    attempt(recovered, "first", 1, "failed", 500)
    attempt(recovered, "first", 2, "succeeded", 500)
    lost = make_run(definition, "failed")
    attempt(lost, "first", 1, "failed", 500)
    compensated = make_run(definition, "compensated")
    attempt(compensated, "first", 1, "failed", 500)
    clean = make_run(definition, "succeeded")  # no failure: not counted
    attempt(clean, "first", 1, "succeeded", 500)
    old = make_run(definition, "succeeded", ago=3 * 86400)  # outside 24 h
    attempt(old, "first", 1, "failed", 3 * 86400)
    result = stats.error_handling_success_rate(hours=24)
    assert (result["total"], result["recovered"]) == (3, 1)
    assert result["rate"] == pytest.approx(1 / 3)
    assert stats.error_handling_success_rate(hours=0.001)["rate"] is None


def test_stalled_runs(definition: WorkflowDefinition) -> None:
    now = timezone.now()

    def event(run: Run, ago: float) -> None:  # the store saves the run row with every event
        Run.objects.filter(pk=run.pk).update(updated_at=now - timedelta(seconds=ago))

    stuck = make_run(definition, "running")
    event(stuck, 900)
    busy = make_run(definition, "running")
    event(busy, 10)
    leased = make_run(definition, "running")  # quiet, but a worker holds a live lease
    event(leased, 900)
    StepAttempt.objects.create(run=leased, step="first", step_type="noop", number=1, status="running",
                               queued_at=now, lease_until=now + timedelta(seconds=60))  # fmt: skip
    asking = make_run(definition, "awaiting_intervention")
    event(asking, 900)
    sleeping = make_run(definition, "waiting", due_at=now + timedelta(hours=1))
    event(sleeping, 900)
    overdue = make_run(definition, "waiting", due_at=now - timedelta(minutes=10))
    event(overdue, 1200)
    finished = make_run(definition, "failed")
    event(finished, 900)
    found = stats.stalled_runs(threshold_seconds=300)
    assert [r["id"] for r in found] == [str(overdue.pk), str(stuck.pk)]  # longest idle first
    assert found[1]["idle_seconds"] == pytest.approx(900, abs=5)
    assert found[1]["url"] == f"/runs/{stuck.pk}/"
    assert [r["id"] for r in stats.stalled_runs(threshold_seconds=1000)] == [str(overdue.pk)]


def test_failing_steps_merges_instances(
    definition: WorkflowDefinition, saved_workflow: Any
) -> None:
    a = make_run(definition, "failed")
    b = make_run(definition, "failed")
    for run in (a, b):
        attempt(run, "charge", 1, "failed", 100)
    attempt(a, "process[0]", 1, "failed", 100)
    attempt(a, "process[1]", 1, "failed", 100)
    attempt(a, "process[2]", 1, "failed", 100)
    attempt(a, "backup@charge", 1, "failed", 100)
    attempt(a, "charge", 2, "failed", 90000)  # outside 24 h
    attempt(a, "ship", 1, "succeeded", 100)
    top = stats.failing_steps(hours=24)
    assert [(r["workflow"], r["step"], r["failures"]) for r in top] == [
        ("simple", "process", 3),
        ("simple", "charge", 2),
        ("simple", "backup", 1),
    ]
    assert top[0]["url"] == "/runs/?workflow=simple&status=failed"
    assert len(stats.failing_steps(limit=1)) == 1


def test_error_groups_across_runs(definition: WorkflowDefinition) -> None:
    runs = [make_run(definition, "failed") for _ in range(3)]
    other = make_run(definition, "failed", workflow="billing")

    def error(
        run: Run, step: str, fp: str, klass: str = "transient", workflow: str = "simple"
    ) -> ErrorRecord:
        return ErrorRecord.objects.create(run=run, step=step, attempt=1, type="Boom", message=f"m-{fp}",
                                          fingerprint=fp, error_class=klass, workflow_name=workflow,
                                          traceback="Traceback...")  # fmt: skip

    for run in runs:
        error(run, "process[0]", "aaa")
        error(run, "process[1]", "aaa")
    error(other, "charge", "aaa", workflow="billing")
    error(runs[0], "charge", "bbb", klass="permanent")
    groups = {g["fingerprint"]: g for g in stats.error_groups()}
    a = groups["aaa"]
    assert (a["count"], a["run_count"]) == (7, 4)
    assert a["workflows"] == ["billing", "simple"] and a["steps"] == ["charge", "process"]
    assert set(a["runs"]) == {str(r.pk) for r in [*runs, other]}
    assert a["runs"][0] == str(other.pk)  # newest first
    assert a["traceback"] == "Traceback..." and a["url"] == "/errors/?fingerprint=aaa"
    assert a["first_seen"] <= a["last_seen"]
    assert [g["fingerprint"] for g in stats.error_groups(klass="permanent")] == ["bbb"]
    assert stats.error_groups(fingerprint="aaa", workflow="billing")[0]["count"] == 1
    assert len(stats.error_groups(fingerprint="aaa", runs_per_group=2)[0]["runs"]) == 2
    assert stats.error_groups(fingerprint="nope") == []


def test_workflow_stats(definition: WorkflowDefinition) -> None:
    for took in (10, 20, 30, 40):
        make_run(definition, "succeeded", took=took)
    make_run(definition, "failed", took=100)
    make_run(definition, "running")
    s = stats.workflow_stats("simple")
    assert s["finished"] == 5 and s["success_rate"] == pytest.approx(0.8)
    assert s["duration_median"] == pytest.approx(30) and s["duration_p95"] == pytest.approx(100)
    assert s["by_status"] == {"succeeded": 4, "failed": 1}
    assert stats.workflow_stats("simple", last=2)["finished"] == 2
    assert stats.workflow_stats("nothing")["success_rate"] is None


def test_seeddemo_writes_consistent_runs(db: None) -> None:
    call_command("seeddemo", runs=60, attempts_per_run=6, stdout=open("/dev/null", "w"))  # noqa: SIM115
    assert Run.objects.count() == 60
    assert set(Run.objects.values_list("workflow_name", flat=True)) == {
        "demo-pipeline",
        "demo-wide",
    }
    for run in Run.objects.all():
        assert engine.validate_state(run.state) == []
        assert run.state["status"] == run.status
        tries = StepAttempt.objects.filter(run=run)
        for name, st in run.state["steps"].items():
            mine = [a for a in tries if a.step == name]
            assert st["attempt"] == len(mine), (run.status, name)
        assert run.event_seq == RunEvent.objects.filter(run=run).count()
    failed = StepAttempt.objects.filter(status="failed").count()
    assert ErrorRecord.objects.count() == failed > 0
