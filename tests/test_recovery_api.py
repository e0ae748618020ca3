"""The recovery endpoints of the API (resume-from with preview, breakpoints, manual
checkpoints, checkpoint detail and exports, state export, history, migrate, restart with
edited input), executed by real workers on PostgreSQL + Redis.

Every refusal is a 4xx in the API's error format, and nothing changes."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.runtime import wait_for_run
from workflows import services, store
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
steps:
  - {name: gate, type: approval}
  - {name: a, type: noop}
  - {name: d, type: noop}
"""

SLEEPY = """
name: sleepy
steps:
  - {name: a, type: noop}
  - {name: nap, type: sleep, with: {duration: 60s}}
  - {name: z, type: noop}
"""

EDITABLE = """
name: editable
inputs:
  type: object
  required: [n]
  properties: {n: {type: integer}}
steps:
  - {name: show, type: noop, with: {n: "{{ inputs.n }}"}}
"""


@pytest.fixture(autouse=True)
def _allow_test_steps(settings):
    settings.FLOWMEND_PYTHON_MODULES = ["examples", "tests"]


@pytest.fixture
def op(api_client):
    return api_client("operator")


@pytest.fixture
def viewer(api_client):
    return api_client("viewer")


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
        Run.objects.filter(restarted_from_id=run_id).count(),
    )


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["errors"], list)
    return body


# --------------------------------------------------------------------------- resume-from


def test_resume_from_preview_get_and_dry_run_change_nothing(worker, op, viewer):
    run = failed_run()
    before = snapshot(run.pk)
    expected = {"run_again": ["c", "d"], "kept": ["a", "b"]}
    url = f"/api/v1/runs/{run.pk}/steps/c/resume-from"
    got = viewer.get(url)
    assert got.status_code == 200 and got.json() == expected
    dry = op.post_json(url, {"dry_run": True})
    assert dry.status_code == 200 and dry.json() == expected
    assert viewer.post_json(url, {"dry_run": True}).json() == expected  # a read
    assert snapshot(run.pk) == before


def test_resume_from_reruns_downstream_and_records_who(worker, op):
    run = failed_run()
    response = op.post_json(f"/api/v1/runs/{run.pk}/steps/c/resume-from")
    assert response.status_code == 200, response.content
    assert response.json()["id"] == str(run.pk)
    run = wait_for_run(run.pk)
    assert run.status == "succeeded"
    assert StepAttempt.objects.filter(run=run, step="a").count() == 1  # kept
    assert StepAttempt.objects.filter(run=run, step="c").count() == 2
    event = RunEvent.objects.get(run=run, type="run.resumed_from")
    assert event.step == "c" and event.actor == op.user.username


def test_resume_from_refusals_change_nothing(worker, op, viewer):
    run = failed_run()
    before = snapshot(run.pk)
    body = assert_problem(op.post_json(f"/api/v1/runs/{run.pk}/steps/nope/resume-from"), 404)
    assert "nope" in body["error"]
    assert_problem(op.get(f"/api/v1/runs/{run.pk}/steps/nope/resume-from"), 404)
    body = assert_problem(viewer.post_json(f"/api/v1/runs/{run.pk}/steps/c/resume-from"), 403)
    assert "resume runs from a step" in body["error"]
    assert_problem(op.post_json(f"/api/v1/runs/{run.pk}/steps/c/resume-from", {"bogus": 1}), 400)
    assert snapshot(run.pk) == before

    services.save_workflow(SLEEPY)
    sleeping = wait_for_run(services.start_run("sleepy").pk, {"waiting"})
    before = snapshot(sleeping.pk)
    body = assert_problem(op.post_json(f"/api/v1/runs/{sleeping.pk}/steps/a/resume-from"), 409)
    assert "pause it first" in body["error"]
    assert snapshot(sleeping.pk) == before
    services.cancel(sleeping.pk)


def test_resuming_a_succeeded_run_is_refused(worker, op):
    services.save_workflow(EDITABLE)
    run = wait_for_run(services.start_run("editable", input={"n": 1}).pk)
    assert run.status == "succeeded"
    before = snapshot(run.pk)
    body = assert_problem(op.post_json(f"/api/v1/runs/{run.pk}/resume"), 409)
    assert "succeeded" in body["error"]
    assert snapshot(run.pk) == before


# --------------------------------------------------------------------------- breakpoints


def test_breakpoint_via_api_pauses_before_the_step(worker, op, viewer):
    services.save_workflow(GATED)
    run = wait_for_run(services.start_run("gated").pk, {"awaiting_intervention"})
    url = f"/api/v1/runs/{run.pk}/breakpoints"
    before = snapshot(run.pk)
    assert_problem(op.post_json(url, {"step": "missing"}), 404)
    assert_problem(op.post_json(url, {}), 400)
    assert_problem(viewer.post_json(url, {"step": "d"}), 403)
    assert snapshot(run.pk) == before

    assert op.post_json(url, {"step": "a"}).status_code == 200
    assert op.post_json(url, {"step": "d"}).status_code == 200
    assert op.post_json(url, {"step": "a", "enabled": False}).status_code == 200
    assert viewer.get(url).json() == {"items": ["d"]}
    event = RunEvent.objects.filter(run=run, type="run.breakpoint_set").last()
    assert event.step == "d" and event.actor == op.user.username

    services.decide(run.interventions.get().pk, "approve")
    run = wait_for_run(run.pk, {"paused"})
    assert run.state["steps"]["a"]["status"] == "succeeded"
    assert run.state["steps"]["d"]["status"] == "pending"
    assert op.post_json(f"/api/v1/runs/{run.pk}/resume").status_code == 200
    run = wait_for_run(run.pk)
    assert run.status == "succeeded"
    before = snapshot(run.pk)
    assert_problem(op.post_json(url, {"step": "d"}), 409)  # a finished run takes none
    assert snapshot(run.pk) == before


# --------------------------------------------------------------------------- checkpoints


def test_manual_checkpoint_detail_and_exports(worker, op, viewer):
    run = failed_run()
    response = op.post_json(f"/api/v1/runs/{run.pk}/checkpoints")
    assert response.status_code == 201, response.content
    cp = response.json()
    assert cp["kind"] == "manual" and cp["valid"] is True and cp["created_by"] == op.user.username
    checkpoint = Checkpoint.objects.get(pk=cp["id"])
    state = store.load_checkpoint(checkpoint)
    assert RunEvent.objects.filter(run=run, type="checkpoint.requested", actor=op.user.username)

    detail = viewer.get(f"/api/v1/runs/{run.pk}/checkpoints/{cp['id']}")
    assert detail.status_code == 200
    body = detail.json()
    assert body["id"] == cp["id"] and body["state"] == state
    assert body["checksum"] == checkpoint.checksum and "workflow_version" in body

    base = f"/api/v1/runs/{run.pk}/checkpoints/{cp['id']}/export"
    as_json = viewer.get(base)  # json by default
    assert as_json.status_code == 200
    assert as_json["Content-Type"].startswith("application/json")
    assert as_json["Content-Disposition"].startswith("attachment;")
    assert json.loads(as_json.content) == state
    as_yaml = viewer.get(base + "?format=yaml")
    assert as_yaml.status_code == 200 and "attachment" in as_yaml["Content-Disposition"]
    assert as_yaml["Content-Disposition"].endswith('.yaml"')
    assert yaml.safe_load(as_yaml.content) == state
    body = assert_problem(viewer.get(base + "?format=xml"), 400)
    assert body["errors"][0]["path"] == "format"

    # every automatic checkpoint exports too
    for other in run.checkpoints.exclude(pk=cp["id"]):
        got = viewer.get(f"/api/v1/runs/{run.pk}/checkpoints/{other.pk}/export?format=yaml")
        assert yaml.safe_load(got.content) == store.load_checkpoint(other)

    assert_problem(viewer.post_json(f"/api/v1/runs/{run.pk}/checkpoints"), 403)
    assert_problem(viewer.get(f"/api/v1/runs/{run.pk}/checkpoints/999999"), 404)
    assert_problem(viewer.get(f"/api/v1/runs/{run.pk}/checkpoints/abc"), 404)


def test_state_export_parses_back(worker, viewer):
    run = failed_run()
    url = f"/api/v1/runs/{run.pk}/state/export"
    as_json = viewer.get(url + "?format=json")
    assert as_json.status_code == 200 and "attachment" in as_json["Content-Disposition"]
    assert json.loads(as_json.content) == run.state
    as_yaml = viewer.get(url + "?format=yaml")
    assert as_yaml.status_code == 200 and "attachment" in as_yaml["Content-Disposition"]
    assert yaml.safe_load(as_yaml.content) == run.state
    assert_problem(viewer.get(url + "?format=toml"), 400)
    assert_problem(
        viewer.get("/api/v1/runs/00000000-0000-0000-0000-000000000000/state/export"), 404
    )


def test_checkpoint_of_another_run_is_refused_and_nothing_changes(worker, op):
    run = failed_run()
    other = failed_run()
    theirs = other.checkpoints.first()
    before = snapshot(run.pk)
    body = assert_problem(
        op.post_json(f"/api/v1/runs/{run.pk}/restore", {"checkpoint": theirs.pk}), 400
    )
    assert "belongs to run" in body["error"]
    assert_problem(op.get(f"/api/v1/runs/{run.pk}/checkpoints/{theirs.pk}"), 404)
    assert_problem(op.get(f"/api/v1/runs/{run.pk}/checkpoints/{theirs.pk}/export"), 404)
    assert_problem(op.post_json(f"/api/v1/runs/{run.pk}/restore", {"checkpoint": 10**9}), 404)
    assert snapshot(run.pk) == before


def test_corrupt_checkpoint_is_refused_everywhere_and_nothing_changes(worker, op):
    run = failed_run()
    mine = run.checkpoints.order_by("pk").first()
    Checkpoint.objects.filter(pk=mine.pk).update(data=b"not what was written")
    before = snapshot(run.pk)
    body = assert_problem(
        op.post_json(f"/api/v1/runs/{run.pk}/restore", {"checkpoint": mine.pk}), 409
    )
    assert "corrupt" in body["error"]
    assert (
        "corrupt"
        in assert_problem(op.get(f"/api/v1/runs/{run.pk}/checkpoints/{mine.pk}"), 409)["error"]
    )
    assert_problem(op.get(f"/api/v1/runs/{run.pk}/checkpoints/{mine.pk}/export?format=yaml"), 409)
    assert snapshot(run.pk) == before
    assert Checkpoint.objects.get(pk=mine.pk).valid is False
    listed = op.get(f"/api/v1/runs/{run.pk}/checkpoints").json()["items"]
    assert {c["id"]: c["valid"] for c in listed}[mine.pk] is False


def test_restore_via_api_records_who(worker, op):
    run = failed_run()
    first = run.checkpoints.get(step="a")
    response = op.post_json(f"/api/v1/runs/{run.pk}/restore", {"checkpoint": first.pk})
    assert response.status_code == 200, response.content
    run = wait_for_run(run.pk)
    assert run.status == "succeeded"
    assert RunEvent.objects.get(run=run, type="run.restored").actor == op.user.username


# --------------------------------------------------------------------------- history


def test_history_lists_each_state_version_with_who(worker, op, viewer):
    run = failed_run()
    op.post_json(f"/api/v1/runs/{run.pk}/steps/c/resume-from")
    run = wait_for_run(run.pk)
    response = viewer.get(f"/api/v1/runs/{run.pk}/history")
    assert response.status_code == 200
    items = response.json()["items"]
    versions = [h["version"] for h in items]
    assert versions == sorted(versions) and versions[-1] == run.state_version
    for h in items:
        assert set(h) >= {"version", "from_version", "at", "by", "changes"}
        assert h["from_version"] == h["version"] - 1
    resumed = [h for h in items if any(c.startswith("run.resumed_from") for c in h["changes"])]
    assert resumed and resumed[0]["by"] == op.user.username
    assert_problem(viewer.get("/api/v1/runs/not-a-run/history"), 404)


# --------------------------------------------------------------------------- migrate


def test_migrate_via_api(worker, op, viewer):
    run = failed_run()
    services.save_workflow(CHAIN.replace("succeed_on: 2", "succeed_on: 1"))
    url = f"/api/v1/runs/{run.pk}/migrate"
    before = snapshot(run.pk)
    assert_problem(viewer.post_json(url, {"version": 2}), 403)
    assert_problem(op.post_json(url, {"version": 9}), 404)
    assert_problem(op.post_json(url, {"version": 1}), 409)  # already there
    assert_problem(op.post_json(url, {}), 400)
    assert_problem(op.post_json(url, {"version": "two"}), 400)
    assert snapshot(run.pk) == before

    response = op.post_json(url, {"version": 2})
    assert response.status_code == 200, response.content
    assert response.json()["version"] == 2
    event = RunEvent.objects.get(run=run, type="run.migrated")
    assert event.actor == op.user.username and event.data["from_version"] == 1
    op.post_json(f"/api/v1/runs/{run.pk}/steps/c/retry")
    assert wait_for_run(run.pk).status == "succeeded"


def test_migrate_refusals_list_what_does_not_map(worker, op):
    run = failed_run()
    services.save_workflow(CHAIN.replace("name: a,", "name: a2,").replace("name: b,", "name: b2,"))
    before = snapshot(run.pk)
    body = assert_problem(op.post_json(f"/api/v1/runs/{run.pk}/migrate", {"version": 2}), 409)
    assert "a, b" in body["error"]
    assert {e["path"] for e in body["errors"]} == {"steps.a", "steps.b"}
    assert snapshot(run.pk) == before

    services.save_workflow(EDITABLE)
    done = wait_for_run(services.start_run("editable", input={"n": 1}).pk)
    services.save_workflow(EDITABLE + "  - {name: more, type: noop}\n")
    before = snapshot(done.pk)
    body = assert_problem(op.post_json(f"/api/v1/runs/{done.pk}/migrate", {"version": 2}), 409)
    assert "paused or failed" in body["error"]
    assert snapshot(done.pk) == before


# --------------------------------------------------------------------------- restart


def test_restart_with_edited_input_links_both_runs(worker, op):
    services.save_workflow(EDITABLE)
    old = wait_for_run(services.start_run("editable", input={"n": 1}).pk)
    response = op.post_json(f"/api/v1/runs/{old.pk}/restart", {"input": {"n": 2}})
    assert response.status_code == 200, response.content
    new_id = response.json()["id"]
    assert new_id != str(old.pk) and response.json()["input"] == {"n": 2}
    new = wait_for_run(new_id)
    assert new.status == "succeeded" and new.restarted_from_id == old.pk
    assert new.state["steps"]["show"]["output"] == {"n": 2}
    event = RunEvent.objects.get(run=old, type="run.restarted")
    assert event.actor == op.user.username
    assert event.data == {"new_run": new_id, "input_edited": True}

    same = op.post_json(f"/api/v1/runs/{old.pk}/restart")  # no body: the same input
    assert same.status_code == 200 and same.json()["input"] == {"n": 1}


def test_restart_with_bad_input_is_refused_and_nothing_changes(worker, op, viewer):
    services.save_workflow(EDITABLE)
    old = wait_for_run(services.start_run("editable", input={"n": 1}).pk)
    before = snapshot(old.pk)
    runs = Run.objects.count()
    body = assert_problem(
        op.post_json(f"/api/v1/runs/{old.pk}/restart", {"input": {"n": "x"}}), 400
    )
    assert body["errors"] and body["errors"][0]["path"] == "input.n"
    assert_problem(op.post_json(f"/api/v1/runs/{old.pk}/restart", {"inputs": {}}), 400)
    assert_problem(viewer.post_json(f"/api/v1/runs/{old.pk}/restart"), 403)
    assert snapshot(old.pk) == before and Run.objects.count() == runs
