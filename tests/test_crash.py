"""A worker killed with SIGKILL in the middle of a step loses nothing."""

from __future__ import annotations

import time

import pytest

from tests.runtime import kill_process_group, start_worker_process, wait_for_run
from workflows import services
from workflows.models import RunEvent, StepAttempt

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def short_leases(settings):
    settings.FLOWMEND_PYTHON_MODULES = ["examples", "tests"]
    settings.FLOWMEND_LEASE_SECONDS = 1.5


def wait_until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def test_sigkill_mid_step_requeues_and_finishes_once(short_leases, sweeper_thread, tmp_path):
    marker = tmp_path / "executions.log"
    definition, _ = services.save_workflow(
        f"""
name: crashy
steps:
  - {{name: first, type: noop}}
  - name: slow
    type: python
    with: {{function: "tests.steps:slow", args: {{seconds: 1.5, marker: "{marker}"}}}}
  - {{name: last, type: noop}}
"""
    )
    victim = start_worker_process()
    survivor = None
    try:
        run = services.start_run(definition.name)
        wait_until(lambda: marker.exists() and "slow:1:start" in marker.read_text())
        kill_process_group(victim)  # SIGKILL mid-step: no cleanup runs
        attempt = StepAttempt.objects.get(run=run, step="slow")
        assert attempt.status == "running"

        survivor = start_worker_process()
        run = wait_for_run(run.pk, timeout=40)
        assert run.status == "succeeded", run.state
    finally:
        kill_process_group(victim)
        if survivor is not None:
            kill_process_group(survivor)

    # the action ran at least once (twice here), but its result was recorded once
    assert marker.read_text().count("slow:1:start") == 2
    attempts = list(StepAttempt.objects.filter(run=run, step="slow"))
    assert len(attempts) == 1
    assert attempts[0].status == "succeeded"
    assert attempts[0].dispatch_count == 2
    assert RunEvent.objects.filter(run=run, type="step.succeeded", step="slow").count() == 1
    assert RunEvent.objects.filter(run=run, type="step.succeeded", step="last").count() == 1


def test_lost_broker_messages_are_sent_again(short_leases, sweeper_thread):
    """The broker only carries "do this now": flush it and the sweeper re-dispatches."""
    import dramatiq

    services.save_workflow(
        "name: lost-message\nsteps:\n  - {name: a, type: noop}\n  - {name: b, type: noop}\n"
    )
    run = services.start_run("lost-message")  # queued; no worker is running yet
    dramatiq.get_broker().flush_all()  # the message is gone
    worker = start_worker_process()
    try:
        run = wait_for_run(run.pk, timeout=30)
    finally:
        kill_process_group(worker)
    assert run.status == "succeeded"
    attempt = StepAttempt.objects.get(run=run, step="a")
    assert attempt.dispatch_count == 2
