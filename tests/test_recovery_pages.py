"""Recovery on the run page (checkpoints, restore, resume-from preview, breakpoint, restart
with edited input, migrate, history, exports) and the recovery admin actions, executed by
real workers on PostgreSQL + Redis."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from tests.runtime import wait_for_run
from workflows import services
from workflows.models import Checkpoint, Run, RunEvent, StepAttempt

pytestmark = pytest.mark.django_db(transaction=True)

CHAIN = """
name: recoverable
steps:
  - {name: a, type: noop, with: {v: 1}}
  - {name: b, type: noop, with: {v: 2}}
  - {name: c, type: python, with: {function: "tests.steps:fail_until", args: {succeed_on: 2}}}
  - {name: d, type: noop}
"""

GATED = """
name: gated
inputs:
  type: object
  properties: {n: {type: integer}}
steps:
  - {name: gate, type: approval}
  - {name: a, type: noop}
  - {name: d, type: noop}
"""


@pytest.fixture(autouse=True)
def _allow_test_steps(settings):
    settings.FLOWMEND_PYTHON_MODULES = ["examples", "tests"]


@pytest.fixture
def operator(make_user):
    return make_user("olga-operator", "operator")


@pytest.fixture
def op_client(operator) -> Client:
    client = Client()
    client.force_login(operator)
    return client


@pytest.fixture
def viewer_client(make_user) -> Client:
    client = Client()
    client.force_login(make_user("vic-viewer", "viewer"))
    return client


@pytest.fixture
def admin_client_(make_user) -> Client:
    client = Client()
    client.force_login(make_user("sue-super", None, is_staff=True, is_superuser=True))
    return client


def failed_run() -> Run:
    services.save_workflow(CHAIN)
    run = wait_for_run(services.start_run("recoverable").pk)
    assert run.status == "failed"
    return run


def snapshot(run_id) -> tuple:
    run = Run.objects.get(pk=run_id)
    return (
        run.status,
        run.state_version,
        run.event_seq,
        run.workflow_version,
        Checkpoint.objects.filter(run_id=run_id).count(),
        StepAttempt.objects.filter(run_id=run_id).count(),
    )


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# --------------------------------------------------------------------------- run page


def test_run_page_shows_recovery_controls(worker, op_client):
    run = failed_run()
    services.save_workflow(CHAIN.replace("succeed_on: 2", "succeed_on: 1"))
    page = op_client.get(f"/runs/{run.pk}/")
    assert page.status_code == 200
    html = page.content.decode()
    for cp in run.checkpoints.all():  # a row per checkpoint: restore + downloads
        assert f'name="checkpoint" value="{cp.pk}"' in html
        assert f"/api/v1/runs/{run.pk}/checkpoints/{cp.pk}/export?format=json" in html
        assert f"/api/v1/runs/{run.pk}/checkpoints/{cp.pk}/export?format=yaml" in html
    assert "Take checkpoint" in html and "Restart with this input" in html
    assert f"/runs/{run.pk}/resume-from/c/" in html and "Resume from here" in html
    assert "Migrate to v2" in html
    assert f"/api/v1/runs/{run.pk}/state/export?format=yaml" in html
    assert "State history" in html and "run.failed" in html
    # the one vocabulary, one line each
    for line in (
        "run this failed step again",
        "mark the step done with an output",
        "re-run this step and everything after it; keep the results before it",
        "go back to this checkpoint",
        "a new run from scratch",
    ):
        assert line in html
    assert json.dumps(run.input, indent=2) in html  # the restart textarea


def test_viewer_sees_no_recovery_buttons_and_is_refused(worker, viewer_client):
    run = failed_run()
    html = viewer_client.get(f"/runs/{run.pk}/").content.decode()
    assert "Take checkpoint</button>" not in html and "Restart with this input" not in html
    assert "Resume from here</a>" not in html
    assert f"/api/v1/runs/{run.pk}/state/export?format=json" in html  # reading is fine
    before = snapshot(run.pk)
    response = viewer_client.post(f"/runs/{run.pk}/recovery/checkpoint/", follow=True)
    assert any("may not take checkpoints" in m for m in messages_of(response))
    preview = viewer_client.get(f"/runs/{run.pk}/resume-from/c/")
    assert preview.status_code == 200 and b"Resume from c</button>" not in preview.content
    response = viewer_client.post(f"/runs/{run.pk}/resume-from/c/", follow=True)
    assert any("may not resume runs from a step" in m for m in messages_of(response))
    assert snapshot(run.pk) == before


def test_resume_from_preview_then_confirm(worker, op_client):
    run = failed_run()
    before = snapshot(run.pk)
    preview = op_client.get(f"/runs/{run.pk}/resume-from/c/")
    assert preview.status_code == 200
    html = preview.content.decode()
    assert "These 2 steps run again" in html and "These 2 results are kept" in html
    assert 'class="plain run-again"><li class="mono">c</li><li class="mono">d</li>' in html
    assert 'class="plain kept"><li class="mono">a</li><li class="mono">b</li>' in html
    assert "Resume from c</button>" in html
    assert snapshot(run.pk) == before  # a GET never acts

    response = op_client.post(f"/runs/{run.pk}/resume-from/c/", follow=True)
    assert any("Resuming from step c" in m for m in messages_of(response))
    run = wait_for_run(run.pk)
    assert run.status == "succeeded"
    assert StepAttempt.objects.filter(run=run, step="a").count() == 1
    assert RunEvent.objects.get(run=run, type="run.resumed_from").actor == "olga-operator"


def test_resume_from_preview_refusals(worker, op_client):
    run = failed_run()
    missing = op_client.get(f"/runs/{run.pk}/resume-from/nope/")
    assert missing.status_code == 404 and b"does not exist" in missing.content
    assert op_client.get("/runs/not-a-run/resume-from/c/").status_code == 404
    before = snapshot(run.pk)
    response = op_client.post(f"/runs/{run.pk}/resume-from/nope/", follow=True)
    assert any("Could not resume from step nope" in m for m in messages_of(response))
    assert snapshot(run.pk) == before


def test_take_checkpoint_and_restore_from_the_page(worker, op_client):
    run = failed_run()
    response = op_client.post(f"/runs/{run.pk}/recovery/checkpoint/", follow=True)
    assert any(m.startswith("Took checkpoint") for m in messages_of(response))
    manual = Checkpoint.objects.get(run=run, kind="manual")
    assert manual.created_by == "olga-operator"
    assert f'name="checkpoint" value="{manual.pk}"' in response.content.decode()

    first = run.checkpoints.get(step="a")
    response = op_client.post(
        f"/runs/{run.pk}/recovery/restore/", {"checkpoint": first.pk}, follow=True
    )
    assert any("Restored checkpoint" in m for m in messages_of(response))
    assert wait_for_run(run.pk).status == "succeeded"
    assert RunEvent.objects.get(run=run, type="run.restored").actor == "olga-operator"


def test_restore_refusals_show_why_and_change_nothing(worker, op_client):
    run = failed_run()
    other = failed_run()
    before = snapshot(run.pk)
    response = op_client.post(
        f"/runs/{run.pk}/recovery/restore/",
        {"checkpoint": other.checkpoints.first().pk},
        follow=True,
    )
    assert any("belongs to run" in m for m in messages_of(response))
    mine = run.checkpoints.first()
    Checkpoint.objects.filter(pk=mine.pk).update(checksum="0" * 64)
    response = op_client.post(
        f"/runs/{run.pk}/recovery/restore/", {"checkpoint": mine.pk}, follow=True
    )
    assert any("corrupt" in m for m in messages_of(response))
    assert "corrupt</span>" in response.content.decode()  # the table says so
    assert snapshot(run.pk) == before
    assert op_client.get(f"/runs/{run.pk}/recovery/restore/").status_code == 405


def test_breakpoint_form(worker, op_client):
    services.save_workflow(GATED)
    run = wait_for_run(services.start_run("gated").pk, {"awaiting_intervention"})
    html = op_client.get(f"/runs/{run.pk}/").content.decode()
    assert '<option value="d">d</option>' in html and "Pause before step" in html
    response = op_client.post(f"/runs/{run.pk}/recovery/breakpoint/", {"step": "d"}, follow=True)
    assert any("pauses before step d" in m for m in messages_of(response))
    response = op_client.post(f"/runs/{run.pk}/recovery/breakpoint/", {"step": "zzz"}, follow=True)
    assert any("does not exist" in m for m in messages_of(response))
    services.decide(run.interventions.get().pk, "approve")
    run = wait_for_run(run.pk, {"paused"})
    assert run.state["steps"]["d"]["status"] == "pending"
    op_client.post(f"/runs/{run.pk}/resume/")
    assert wait_for_run(run.pk).status == "succeeded"


def test_restart_with_edited_input_from_the_page(worker, op_client):
    services.save_workflow(GATED)
    run = wait_for_run(services.start_run("gated", input={"n": 1}).pk, {"awaiting_intervention"})
    response = op_client.post(f"/runs/{run.pk}/recovery/restart/", {"input": '{"n": 5}'})
    new = Run.objects.get(restarted_from=run)
    assert response.status_code == 302 and response["Location"] == f"/runs/{new.pk}/"
    assert new.input == {"n": 5}
    event = RunEvent.objects.get(run=run, type="run.restarted")
    assert event.actor == "olga-operator" and event.data["new_run"] == str(new.pk)

    before = Run.objects.count()
    response = op_client.post(f"/runs/{run.pk}/recovery/restart/", {"input": "{nope"}, follow=True)
    assert any("not valid JSON" in m for m in messages_of(response))
    response = op_client.post(
        f"/runs/{run.pk}/recovery/restart/", {"input": '{"n": "x"}'}, follow=True
    )
    assert any("inputs schema" in m and "input.n" in m for m in messages_of(response))
    assert Run.objects.count() == before
    for r in Run.objects.exclude(status__in=["cancelled", "succeeded", "failed"]):
        services.cancel(r.pk)


def test_migrate_button(worker, op_client):
    run = failed_run()
    assert "Migrate to v" not in op_client.get(f"/runs/{run.pk}/").content.decode()
    services.save_workflow(CHAIN.replace("succeed_on: 2", "succeed_on: 1"))
    response = op_client.post(f"/runs/{run.pk}/recovery/migrate/", {"version": "2"}, follow=True)
    assert any("Migrated the run to v2" in m for m in messages_of(response))
    assert Run.objects.get(pk=run.pk).workflow_version == 2
    response = op_client.post(f"/runs/{run.pk}/recovery/migrate/", {"version": "2"}, follow=True)
    assert any("already on version 2" in m for m in messages_of(response))


# --------------------------------------------------------------------------- admin


def _admin_action(client: Client, model: str, action: str, pks: list) -> list[str]:
    response = client.post(
        f"/admin/workflows/{model}/",
        {"action": action, "_selected_action": [str(pk) for pk in pks]},
        follow=True,
    )
    assert response.status_code == 200
    return messages_of(response)


def test_admin_take_checkpoint_and_restore_newest(worker, admin_client_):
    run = failed_run()
    got = _admin_action(admin_client_, "run", "checkpoint_runs", [run.pk])
    assert any("Took a checkpoint of 1 run" in m for m in got)
    manual = Checkpoint.objects.get(run=run, kind="manual")
    assert manual.created_by == "sue-super"
    Checkpoint.objects.filter(pk=manual.pk).update(checksum="0" * 64)  # newest is corrupt
    got = _admin_action(admin_client_, "run", "restore_newest_checkpoint", [run.pk])
    assert any("Restored 1 run" in m for m in got)
    event = RunEvent.objects.get(run=run, type="run.restored")
    assert event.actor == "sue-super"
    assert event.data["checkpoint"] == str(run.checkpoints.get(step="b").pk)
    assert wait_for_run(run.pk).status == "succeeded"


def test_admin_resume_from_first_failed_and_refusal(worker, admin_client_):
    run = failed_run()
    got = _admin_action(admin_client_, "run", "resume_from_first_failed", [run.pk])
    assert any("Resumed from the first failed step 1 run" in m for m in got)
    run = wait_for_run(run.pk)
    assert run.status == "succeeded"
    assert RunEvent.objects.get(run=run, type="run.resumed_from").step == "c"
    got = _admin_action(admin_client_, "run", "resume_from_first_failed", [run.pk])
    assert any("no failed step" in m for m in got)


def test_admin_migrate_to_latest(worker, admin_client_):
    run = failed_run()
    got = _admin_action(admin_client_, "run", "migrate_to_latest", [run.pk])
    assert any("already on version 1" in m for m in got)
    services.save_workflow(CHAIN.replace("name: a,", "name: a2,"))
    got = _admin_action(admin_client_, "run", "migrate_to_latest", [run.pk])
    assert any("do not exist in version 2: a" in m for m in got)
    services.save_workflow(CHAIN.replace("succeed_on: 2", "succeed_on: 1"))
    got = _admin_action(admin_client_, "run", "migrate_to_latest", [run.pk])
    assert any("Migrated 1 run" in m for m in got)
    assert Run.objects.get(pk=run.pk).workflow_version == 3


def test_admin_restore_this_checkpoint(worker, admin_client_):
    run = failed_run()
    other = failed_run()
    first = run.checkpoints.get(step="a")
    got = _admin_action(admin_client_, "checkpoint", "restore_checkpoint", [first.pk])
    assert any("Restored 1 checkpoint" in m for m in got)
    assert wait_for_run(run.pk).status == "succeeded"
    bad = other.checkpoints.first()
    Checkpoint.objects.filter(pk=bad.pk).update(data=b"garbage")
    before = snapshot(other.pk)
    got = _admin_action(admin_client_, "checkpoint", "restore_checkpoint", [bad.pk])
    assert any("corrupt" in m for m in got)
    assert snapshot(other.pk) == before
