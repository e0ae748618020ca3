"""End to end on real PostgreSQL, a real broker and real Dramatiq workers."""

from __future__ import annotations

import pytest

from interventions.models import Intervention
from tests.runtime import wait_for_run
from workflows import services
from workflows.models import RunEvent, StepAttempt

pytestmark = pytest.mark.django_db(transaction=True)


def save(text: str) -> str:
    definition, _ = services.save_workflow(text)
    return definition.name


@pytest.fixture(autouse=True)
def _allow_test_steps(settings):
    settings.FLOWMEND_PYTHON_MODULES = ["examples", "tests"]


def test_chain_of_noops_succeeds(worker):
    steps = "\n".join(f"  - {{name: s{i}, type: noop, with: {{i: {i}}}}}" for i in range(10))
    name = save(f"name: chain\nsteps:\n{steps}\n")
    run = services.start_run(name)
    run = wait_for_run(run.pk)
    assert run.status == "succeeded"
    assert run.output["s9"] == {"i": 9}
    assert StepAttempt.objects.filter(run=run, status="succeeded").count() == 10
    seqs = list(RunEvent.objects.filter(run=run).values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))


def test_retry_then_success_records_each_attempt(worker):
    name = save(
        """
name: flaky
steps:
  - name: call
    type: python
    with: {function: "tests.steps:fail_until", args: {succeed_on: 3}}
    on-failure:
      retry: {max-attempts: 3, delay: 50ms, strategy: exponential}
"""
    )
    run = wait_for_run(services.start_run(name).pk)
    assert run.status == "succeeded"
    attempts = list(StepAttempt.objects.filter(run=run).order_by("number"))
    assert [a.status for a in attempts] == ["failed", "failed", "succeeded"]
    assert attempts[0].error["type"] == "ConnectionError"
    assert run.errors.count() == 2


def test_fallback_then_continue(worker):
    name = save(
        """
name: fallback-continue
steps:
  - name: primary
    type: python
    with: {function: "tests.steps:always_fail"}
    on-failure:
      retry: {max-attempts: 1}
      fallback: [{name: backup, type: noop, with: {used: backup}}]
      continue: true
  - {name: after, type: noop}
"""
    )
    run = wait_for_run(services.start_run(name).pk)
    assert run.status == "succeeded"
    steps = run.state["steps"]
    assert steps["primary"]["status"] == "failed"
    assert steps["backup"]["status"] == "succeeded"
    assert steps["after"]["status"] == "succeeded"


def test_failed_saga_compensates_newest_first(worker):
    name = save(
        """
name: saga
settings:
  on-error: [{name: tell-ops, type: noop}]
steps:
  - {name: reserve, type: noop, compensate: {name: release, type: noop}}
  - {name: charge, type: noop, compensate: {name: refund, type: noop}}
  - {name: ship, type: python, with: {function: "tests.steps:always_fail"}}
"""
    )
    run = wait_for_run(services.start_run(name).pk)
    assert run.status == "compensated"
    order = list(
        RunEvent.objects.filter(run=run, type="step.succeeded").values_list("step", flat=True)
    )
    assert order[-3:] == ["tell-ops", "refund", "release"]
    assert run.state["steps"]["reserve"]["status"] == "compensated"


def test_approval_waits_for_a_decision(worker):
    name = save(
        """
name: gate
steps:
  - {name: review, type: approval, with: {prompt: "Ship it?"}}
  - {name: done, type: noop}
"""
    )
    run = wait_for_run(services.start_run(name).pk, {"awaiting_intervention"})
    intervention = Intervention.objects.get(run=run, status="open")
    assert intervention.options == ["approve", "reject"]
    services.decide(intervention.pk, "approve", comment="fine")
    run = wait_for_run(run.pk)
    assert run.status == "succeeded"
    assert run.state["steps"]["review"]["output"]["action"] == "approve"


def test_step_timeout_fails_the_attempt(worker):
    name = save(
        """
name: too-slow
steps:
  - name: slow
    type: python
    timeout: 300ms
    with: {function: "tests.steps:slow", args: {seconds: 3}}
"""
    )
    run = wait_for_run(services.start_run(name).pk)
    assert run.status == "failed"
    assert run.error["type"] == "StepTimeout"


def test_output_that_is_not_json_fails_the_step(worker):
    name = save(
        """
name: bad-output
steps:
  - {name: weird, type: python, with: {function: "tests.steps:not_json"}, on-failure: {continue: true}}
  - {name: next, type: noop}
"""
    )
    run = wait_for_run(services.start_run(name).pk)
    assert run.status == "succeeded"
    assert run.state["steps"]["weird"]["error"]["type"] == "OutputNotSerializable"


def test_long_retry_delay_parks_the_run_in_waiting(worker, sweeper_thread, settings):
    settings.FLOWMEND_SHORT_WAIT_SECONDS = 0.2
    name = save(
        """
name: long-wait
steps:
  - name: call
    type: python
    with: {function: "tests.steps:fail_until", args: {succeed_on: 2}}
    on-failure: {retry: {max-attempts: 1, delay: 1s}}
"""
    )
    run = wait_for_run(services.start_run(name).pk, {"waiting"})
    assert run.due_at is not None
    run = wait_for_run(run.pk)
    assert run.status == "succeeded"


def test_injected_faults_fail_those_attempts(worker):
    name = save(
        """
name: faulty
steps:
  - name: charge
    type: noop
    on-failure: {retry: {max-attempts: 2}}
"""
    )
    faults = [
        {"step": "charge", "attempts": [1, 2], "error": "TimeoutError", "message": "injected"}
    ]
    run = wait_for_run(services.start_run(name, faults=faults).pk)
    assert run.status == "succeeded"
    errors = list(
        StepAttempt.objects.filter(run=run).order_by("number").values_list("status", flat=True)
    )
    assert errors == ["failed", "failed", "succeeded"]


def test_four_eyes_approval_needs_two_people_other_than_the_requester(worker, django_user_model):
    name = save(
        """
name: four-eyes
settings: {interventions: {approvals: 2}}
steps:
  - {name: sign-off, type: approval, with: {prompt: "Release?"}}
  - {name: release, type: noop}
"""
    )
    requester, ann, bob = (
        django_user_model.objects.create_user(n, password="pw") for n in ("req", "ann", "bob")
    )
    run = wait_for_run(services.start_run(name, user=requester).pk, {"awaiting_intervention"})
    intervention = Intervention.objects.get(run=run, status="open")
    assert intervention.required_approvals == 2
    with pytest.raises(services.ServiceError) as err:
        services.decide(intervention.pk, "approve", requester)
    assert err.value.status == 403
    assert services.decide(intervention.pk, "approve", ann).status == "open"  # one of two
    with pytest.raises(services.ServiceError):
        services.decide(intervention.pk, "approve", ann)  # the same person twice
    assert services.decide(intervention.pk, "approve", bob).status == "decided"
    run = wait_for_run(run.pk)
    assert run.status == "succeeded"
    assert [a["by"] for a in Intervention.objects.get(pk=intervention.pk).approvals] == [
        "ann",
        "bob",
    ]
