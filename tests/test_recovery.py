"""Checkpoints, integrity and the recovery verbs, executed by real workers."""

from __future__ import annotations

import pytest
from django.db import connection

from tests.runtime import wait_for_run
from workflows import services, store
from workflows.models import Checkpoint, ErrorRecord, StepAttempt

pytestmark = pytest.mark.django_db(transaction=True)

CHAIN = """
name: recoverable
steps:
  - {name: a, type: noop, with: {v: 1}}
  - {name: b, type: noop, with: {v: 2}}
  - {name: c, type: python, with: {function: "tests.steps:fail_until", args: {succeed_on: 2}}}
  - {name: d, type: noop}
"""


@pytest.fixture(autouse=True)
def _allow_test_steps(settings):
    settings.FLOWMEND_PYTHON_MODULES = ["examples", "tests"]


def failed_run():
    services.save_workflow(CHAIN)
    run = wait_for_run(services.start_run("recoverable").pk)
    assert run.status == "failed"
    return run


def test_checkpoint_after_each_step_is_verifiable(worker):
    run = failed_run()
    checkpoints = list(run.checkpoints.order_by("created_at", "pk"))
    assert [c.step for c in checkpoints] == ["a", "b"]
    for checkpoint in checkpoints:
        state = store.load_checkpoint(checkpoint)
        assert store.canonical_json(state)
        assert checkpoint.valid and checkpoint.size_bytes > 0


def test_restore_reruns_later_steps_and_keeps_history(worker):
    run = failed_run()
    first = run.checkpoints.get(step="a")
    services.restore(run.pk, first.pk)
    run = wait_for_run(run.pk)
    assert run.status == "succeeded"
    b_attempts = list(StepAttempt.objects.filter(run=run, step="b").order_by("number"))
    assert [a.number for a in b_attempts] == [1, 2]  # the earlier attempt is kept
    assert run.events.filter(type="run.restored").exists()


def test_resume_from_step_keeps_upstream(worker):
    run = failed_run()
    preview = services.preview_resume_from(run.pk, "c")
    assert preview == {"run_again": ["c", "d"], "kept": ["a", "b"]}
    services.resume_from(run.pk, "c")
    run = wait_for_run(run.pk)
    assert run.status == "succeeded"
    assert StepAttempt.objects.filter(run=run, step="a").count() == 1
    assert StepAttempt.objects.filter(run=run, step="c").count() == 2


def test_restore_refuses_other_runs_and_corrupt_checkpoints(worker):
    run = failed_run()
    other = failed_run()
    theirs = other.checkpoints.first()
    with pytest.raises(services.ServiceError) as err:
        services.restore(run.pk, theirs.pk)
    assert (
        err.value.status == 400
        and "another run" in err.value.message
        or "belongs" in err.value.message
    )
    mine = run.checkpoints.first()
    Checkpoint.objects.filter(pk=mine.pk).update(checksum="0" * 64)
    with pytest.raises(services.ServiceError) as err:
        services.restore(run.pk, mine.pk)
    assert err.value.status == 409 and "corrupt" in err.value.message
    assert not Checkpoint.objects.get(pk=mine.pk).valid
    assert services.get_run(run.pk).status == "failed"  # nothing changed


def test_corrupted_state_is_detected_and_restored(worker):
    run = failed_run()
    with connection.cursor() as cursor:  # somebody edits the state behind the engine's back
        cursor.execute(
            'UPDATE workflows_run SET state_doc = replace(state_doc, \'"status":"succeeded"\', '
            '\'"status":"bogus"\') WHERE id = %s',
            [run.pk],
        )
    services.retry_step(run.pk, "c")
    run = wait_for_run(run.pk)
    record = ErrorRecord.objects.get(run=run, error_class="state_corruption")
    assert record.recovery[0]["strategy"] == "restore_from_last_valid_checkpoint"
    assert record.recovery[0]["success"] is True
    assert run.status == "succeeded"


def test_breakpoint_pauses_before_the_step(worker):
    services.save_workflow(
        """
name: with-break
steps:
  - {name: gate, type: approval}
  - {name: a, type: noop}
  - {name: d, type: noop}
"""
    )
    run = wait_for_run(services.start_run("with-break").pk, {"awaiting_intervention"})
    services.set_breakpoint(run.pk, "d")
    services.decide(run.interventions.get().pk, "approve")
    run = wait_for_run(run.pk, {"paused"})
    assert run.state["steps"]["a"]["status"] == "succeeded"
    assert run.state["steps"]["d"]["status"] == "pending"
    services.resume(run.pk)
    assert wait_for_run(run.pk).status == "succeeded"


def test_migrate_a_failed_run_to_a_new_version(worker):
    run = failed_run()
    services.save_workflow(CHAIN.replace("succeed_on: 2", "succeed_on: 1"))
    with pytest.raises(services.ServiceError):
        services.migrate(run.pk, 1)  # already there
    run = services.migrate(run.pk, 2)
    assert run.workflow_version == 2
    services.retry_step(run.pk, "c")
    run = wait_for_run(run.pk)
    assert run.status == "succeeded"


def test_migrate_refuses_when_completed_steps_disappear(worker):
    run = failed_run()
    services.save_workflow(CHAIN.replace("name: a,", "name: a2,"))
    with pytest.raises(services.ServiceError) as err:
        services.migrate(run.pk, 2)
    assert "a" in err.value.message and err.value.status == 409


def test_checkpoint_retention_keeps_the_newest_valid(worker):
    from workflows import sweeper

    steps = "\n".join(f"  - {{name: s{i}, type: noop}}" for i in range(8))
    services.save_workflow(f"name: many\nsettings:\n  checkpoints: {{keep: 3}}\nsteps:\n{steps}\n")
    run = wait_for_run(services.start_run("many").pk)
    assert run.checkpoints.count() == 8
    newest = run.checkpoints.order_by("-created_at", "-pk").first()
    Checkpoint.objects.filter(pk=newest.pk).update(valid=False)
    sweeper.enforce_checkpoint_retention()
    left = list(run.checkpoints.order_by("-created_at", "-pk").values_list("step", flat=True))
    assert left == ["s7", "s6", "s5"]  # s7 is invalid; s6 is the newest valid
    Checkpoint.objects.filter(run=run).exclude(step="s5").delete()
    Checkpoint.objects.filter(run=run).update(created_at="2000-01-01T00:00:00Z")
    sweeper.enforce_checkpoint_retention()
    assert list(run.checkpoints.values_list("step", flat=True)) == ["s5"]
