"""The JSON API (CONTRACT §3) and the probes, against PostgreSQL. No workers run here:
runs are started and steered through the engine, not executed."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from django.test import Client
from django.utils import timezone

from interventions.models import Intervention
from tests.conftest import SIMPLE_WORKFLOW
from workflows import services
from workflows.models import ApiToken, Checkpoint, ErrorRecord, Run, RunEvent, StepAttempt

pytestmark = pytest.mark.django_db

APPROVAL_WORKFLOW = """\
name: needs-approval
steps:
  - name: review
    type: approval
    with: {prompt: "Ship it?"}
  - name: ship
    type: noop
"""


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["errors"], list)
    for e in body["errors"]:
        assert set(e) == {"path", "message"}
    return body


def start(client, workflow: str = "simple", **body) -> str:
    body.setdefault("input", {"order_id": "o-1"})
    response = client.post_json("/api/v1/runs", {"workflow": workflow, **body})
    assert response.status_code == 201, response.content
    return response.json()["id"]


# --------------------------------------------------------------------------- auth


def test_no_token_is_401():
    response = Client().get("/api/v1/runs")
    assert response.status_code == 401
    assert response.json()["error"] == "authentication required"


def test_bad_token_is_401(api_client):
    for header in ("Bearer fm_not-a-token", "Bearer ", "Token abc"):
        response = Client(headers={"authorization": header}).get("/api/v1/runs")
        assert response.status_code == 401, header
        assert response.json()["error"] == "authentication required"


def test_token_of_inactive_user_is_401(api_client, make_user):
    user = make_user("gone", "operator", is_active=False)
    client = api_client(user)
    assert client.get("/api/v1/runs").status_code == 401


def test_token_marks_last_use(api_client):
    client = api_client("viewer")
    assert client.get("/api/v1/runs").status_code == 200
    assert ApiToken.objects.get(user=client.user).last_used_at is not None


def test_user_without_role_is_403(api_client, make_user):
    client = api_client(make_user("nobody", None))
    body = assert_problem(client.get("/api/v1/runs"), 403)
    assert "no role" in body["error"]


def test_viewer_reads_but_cannot_start_or_save(api_client, saved_workflow):
    saved_workflow()
    viewer = api_client("viewer")
    assert viewer.get("/api/v1/runs").status_code == 200
    assert viewer.get("/api/v1/workflows/simple").status_code == 200
    body = assert_problem(
        viewer.post_json("/api/v1/runs", {"workflow": "simple", "input": {"order_id": "x"}}), 403
    )
    assert "viewer" in body["error"] and "operator" in body["error"]
    assert_problem(
        viewer.post("/api/v1/workflows", SIMPLE_WORKFLOW, content_type="application/yaml"), 403
    )


def test_operator_cannot_save_workflows_or_inject_faults(api_client, saved_workflow):
    saved_workflow()
    operator = api_client("operator")
    assert_problem(
        operator.post("/api/v1/workflows", SIMPLE_WORKFLOW, content_type="application/yaml"), 403
    )
    body = assert_problem(
        operator.post_json(
            "/api/v1/runs",
            {
                "workflow": "simple",
                "input": {"order_id": "x"},
                "faults": [{"step": "first", "attempts": [1], "error": "TimeoutError"}],
            },
        ),
        403,
    )
    assert body["error"] == "injecting faults needs the admin role (debugging permission)"
    assert not Run.objects.exists()


def test_admin_may_inject_faults(api_client, saved_workflow):
    saved_workflow()
    run_id = start(
        api_client("admin"),
        faults=[{"step": "first", "attempts": [1], "error": "TimeoutError", "message": "boom"}],
    )
    assert Run.objects.get(pk=run_id).faults[0]["step"] == "first"


def test_superuser_is_admin(api_client, make_user):
    root = make_user("root", None, is_superuser=True)
    response = api_client(root).post(
        "/api/v1/workflows", SIMPLE_WORKFLOW, content_type="application/yaml"
    )
    assert response.status_code == 201


def test_session_auth_reads(operator_user):
    client = Client()
    client.force_login(operator_user)
    assert client.get("/api/v1/runs").status_code == 200


def test_session_auth_needs_csrf_for_writes(operator_user, saved_workflow):
    saved_workflow()
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator_user)
    response = client.post(
        "/api/v1/runs", json.dumps({"workflow": "simple"}), content_type="application/json"
    )
    assert_problem(response, 403)


# --------------------------------------------------------------------------- workflows


def test_save_workflow_created_unchanged_and_new_version(api_client):
    admin = api_client("admin")
    first = admin.post("/api/v1/workflows", SIMPLE_WORKFLOW, content_type="application/yaml")
    assert first.status_code == 201, first.content
    body = first.json()
    assert body["name"] == "simple" and body["version"] == 1 and len(body["checksum"]) == 64

    again = admin.post("/api/v1/workflows", SIMPLE_WORKFLOW, content_type="application/yaml")
    assert again.status_code == 200
    assert again.json()["version"] == 1 and again.json()["checksum"] == body["checksum"]

    changed = SIMPLE_WORKFLOW.replace("Two steps that do nothing.", "Changed.")
    third = admin.post("/api/v1/workflows", changed, content_type="application/yaml")
    assert third.status_code == 201 and third.json()["version"] == 2

    detail = admin.get("/api/v1/workflows/simple").json()
    assert detail["name"] == "simple" and detail["latest_version"] == 2
    assert [v["version"] for v in detail["versions"]] == [2, 1]
    listing = admin.get("/api/v1/workflows").json()["items"]
    assert [(w["name"], w["latest_version"]) for w in listing] == [("simple", 2)]


def test_save_workflow_as_json(api_client):
    data = {"name": "jsonflow", "steps": [{"name": "only", "type": "noop"}]}
    response = api_client("admin").post(
        "/api/v1/workflows", json.dumps(data), content_type="application/json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["name"] == "jsonflow"


def test_invalid_workflow_lists_errors_with_paths(api_client):
    text = """\
name: bad
steps:
  - name: a
    type: noop
    on-failure:
      retry: {max-attempts: 0}
  - name: a
    type: noop
    bogus: 1
"""
    body = assert_problem(
        api_client("admin").post("/api/v1/workflows", text, content_type="application/yaml"), 400
    )
    paths = {e["path"] for e in body["errors"]}
    assert "steps[0].on-failure.retry.max-attempts" in paths
    assert "steps[1].bogus" in paths


@pytest.mark.parametrize(
    "text",
    ["name: [unclosed", "", "just a string", "- a\n- list\n"],
    ids=["yaml", "empty", "str", "list"],
)
def test_unparseable_workflow_is_400(api_client, text):
    assert_problem(
        api_client("admin").post("/api/v1/workflows", text, content_type="application/yaml"), 400
    )


def test_malformed_json_workflow_is_400(api_client):
    assert_problem(
        api_client("admin").post("/api/v1/workflows", "{nope", content_type="application/json"),
        400,
    )


def test_unknown_workflow_is_404(api_client):
    assert_problem(api_client("viewer").get("/api/v1/workflows/nope"), 404)


# --------------------------------------------------------------------------- runs


def test_start_run_and_detail_shape(api_client, saved_workflow):
    saved_workflow()
    client = api_client("operator")
    response = client.post_json(
        "/api/v1/runs", {"workflow": "simple", "input": {"order_id": "o-7"}}
    )
    assert response.status_code == 201, response.content
    created = response.json()
    assert set(created) >= {"id", "status"}
    uuid.UUID(created["id"])

    run = client.get(f"/api/v1/runs/{created['id']}").json()
    for key in (
        "id",
        "workflow",
        "version",
        "status",
        "input",
        "output",
        "error",
        "created_at",
        "started_at",
        "finished_at",
        "progress",
        "steps",
    ):
        assert key in run, key
    assert run["workflow"] == "simple" and run["version"] == 1
    assert run["input"] == {"order_id": "o-7"}
    assert set(run["progress"]) >= {"percent", "completed", "running", "pending", "failed"}
    names = [s["name"] for s in run["steps"]]
    assert names == ["first", "second"]
    first = run["steps"][0]
    assert set(first) >= {"name", "kind", "status", "output", "error", "attempts"}
    assert first["kind"] == "action"
    assert first["status"] == "queued"
    assert [a["number"] for a in first["attempts"]] == [1]
    assert set(first["attempts"][0]) >= {"number", "status", "started_at", "finished_at", "error"}
    assert run["steps"][1]["status"] == "pending" and run["steps"][1]["attempts"] == []
    assert Run.objects.get(pk=created["id"]).created_by == client.user


def test_start_pinned_version(api_client, saved_workflow):
    saved_workflow()
    saved_workflow(SIMPLE_WORKFLOW.replace("Two steps that do nothing.", "v2"))
    client = api_client("operator")
    run_id = start(client, version=1)
    assert client.get(f"/api/v1/runs/{run_id}").json()["version"] == 1
    assert_problem(
        client.post_json(
            "/api/v1/runs", {"workflow": "simple", "version": 9, "input": {"order_id": "x"}}
        ),
        404,
    )


def test_start_with_input_not_matching_schema_is_400(api_client, saved_workflow):
    saved_workflow()
    body = assert_problem(
        api_client("operator").post_json(
            "/api/v1/runs", {"workflow": "simple", "input": {"order_id": 5}}
        ),
        400,
    )
    assert body["errors"][0]["path"].startswith("input")
    missing = assert_problem(
        api_client("operator").post_json("/api/v1/runs", {"workflow": "simple", "input": {}}), 400
    )
    assert "order_id" in missing["errors"][0]["message"]


def test_start_unknown_workflow_is_404(api_client):
    assert_problem(api_client("operator").post_json("/api/v1/runs", {"workflow": "ghost"}), 404)


def test_start_body_validation(api_client, saved_workflow):
    saved_workflow()
    client = api_client("operator")
    body = assert_problem(client.post_json("/api/v1/runs", {"input": {}}), 400)
    assert {"path": "workflow", "message": "required"} in body["errors"]
    body = assert_problem(
        client.post_json("/api/v1/runs", {"workflow": "simple", "inputs": {}}), 400
    )
    assert {"path": "inputs", "message": "unknown key"} in body["errors"]
    body = assert_problem(
        client.post_json("/api/v1/runs", {"workflow": "simple", "version": "x"}), 400
    )
    assert body["errors"][0]["path"] == "version"
    assert_problem(client.post_json("/api/v1/runs", [1, 2]), 400)
    assert_problem(client.post("/api/v1/runs", "", content_type="application/json"), 400)


def test_malformed_json_body_is_400(api_client):
    response = api_client("operator").post(
        "/api/v1/runs", '{"workflow": "simple",', content_type="application/json"
    )
    body = assert_problem(response, 400)
    assert "JSON" in body["error"]
    assert body["errors"][0]["path"] == "body"


def test_bad_faults_are_400(api_client, saved_workflow):
    saved_workflow()
    body = assert_problem(
        api_client("admin").post_json(
            "/api/v1/runs",
            {"workflow": "simple", "input": {"order_id": "x"}, "faults": [{"step": "nope"}]},
        ),
        400,
    )
    assert body["errors"][0]["path"] == "faults"


def test_list_runs_pagination_and_filters(api_client, saved_workflow):
    saved_workflow()
    saved_workflow("name: other\nsteps:\n  - {name: x, type: noop}\n")
    client = api_client("operator")
    ids = [start(client) for _ in range(5)]
    other = start(client, "other", input={})
    services.cancel(ids[0])

    seen, cursor = [], None
    while True:
        url = "/api/v1/runs?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url).json()
        assert len(page["items"]) <= 2
        seen.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 6 and set(seen) == {*ids, other}
    created = [Run.objects.get(pk=i).created_at for i in seen]
    assert created == sorted(created, reverse=True)

    item = client.get("/api/v1/runs?limit=1").json()["items"][0]
    assert set(item) >= {"id", "workflow", "version", "status", "created_at"}

    only_other = client.get("/api/v1/runs?workflow=other").json()["items"]
    assert [r["id"] for r in only_other] == [other]
    cancelled = client.get("/api/v1/runs?status=cancelled").json()["items"]
    assert [r["id"] for r in cancelled] == [ids[0]]
    assert len(client.get("/api/v1/runs").json()["items"]) == 6


def test_list_runs_bad_parameters(api_client):
    client = api_client("viewer")
    assert_problem(client.get("/api/v1/runs?status=bogus"), 400)
    assert_problem(client.get("/api/v1/runs?limit=0"), 400)
    assert_problem(client.get("/api/v1/runs?limit=abc"), 400)
    assert_problem(client.get("/api/v1/runs?cursor=!!!"), 400)
    assert client.get("/api/v1/runs?limit=100000").status_code == 200


def test_unknown_and_malformed_run_ids_are_404(api_client):
    client = api_client("operator")
    missing = uuid.uuid4()
    for path in (
        f"/api/v1/runs/{missing}",
        f"/api/v1/runs/{missing}/events",
        f"/api/v1/runs/{missing}/checkpoints",
        f"/api/v1/runs/{missing}/errors",
        "/api/v1/runs/not-a-uuid",
        "/api/v1/runs/not-a-uuid/events",
        "/api/v1/runs/123/checkpoints",
    ):
        assert_problem(client.get(path), 404)
    for verb in ("pause", "resume", "cancel", "restart"):
        assert_problem(client.post(f"/api/v1/runs/{missing}/{verb}"), 404)
        assert_problem(client.post(f"/api/v1/runs/nope/{verb}"), 404)
    assert_problem(client.post(f"/api/v1/runs/{missing}/steps/first/retry"), 404)


def test_events_after(api_client, saved_workflow):
    saved_workflow()
    client = api_client("operator")
    run_id = start(client)
    events = client.get(f"/api/v1/runs/{run_id}/events").json()["events"]
    assert events, "starting a run records events"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert set(events[0]) >= {"seq", "type", "step", "attempt", "at", "data"}
    last = events[-1]["seq"]
    assert client.get(f"/api/v1/runs/{run_id}/events?after={last}").json()["events"] == []
    client.post(f"/api/v1/runs/{run_id}/pause")
    newer = client.get(f"/api/v1/runs/{run_id}/events?after={last}").json()["events"]
    assert newer and all(e["seq"] > last for e in newer)
    assert any(e["type"] == "run.paused" for e in newer)
    assert_problem(client.get(f"/api/v1/runs/{run_id}/events?after=x"), 400)


def test_pause_resume_cancel(api_client, saved_workflow):
    saved_workflow()
    client = api_client("operator")
    run_id = start(client)

    paused = client.post(f"/api/v1/runs/{run_id}/pause")
    assert paused.status_code == 200, paused.content
    assert paused.json()["id"] == run_id and "steps" in paused.json()
    assert paused.json()["status"] == "paused"
    assert_problem(client.post(f"/api/v1/runs/{run_id}/pause"), 409)

    resumed = client.post(f"/api/v1/runs/{run_id}/resume")
    assert resumed.status_code == 200
    assert resumed.json()["status"] != "paused"
    assert_problem(client.post(f"/api/v1/runs/{run_id}/resume"), 409)

    cancelled = client.post(f"/api/v1/runs/{run_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    assert_problem(client.post(f"/api/v1/runs/{run_id}/pause"), 409)


def test_viewer_cannot_steer_runs(api_client, saved_workflow):
    saved_workflow()
    run_id = start(api_client("operator"))
    viewer = api_client("viewer")
    for verb in ("pause", "resume", "cancel", "restart"):
        assert_problem(viewer.post(f"/api/v1/runs/{run_id}/{verb}"), 403)
    assert_problem(viewer.post(f"/api/v1/runs/{run_id}/steps/first/retry"), 403)
    assert_problem(viewer.post_json(f"/api/v1/runs/{run_id}/steps/first/skip", {}), 403)
    assert Run.objects.get(pk=run_id).status != "cancelled"


def test_restart_answers_the_new_run(api_client, saved_workflow):
    saved_workflow()
    client = api_client("operator")
    run_id = start(client)
    response = client.post(f"/api/v1/runs/{run_id}/restart")
    assert response.status_code == 200, response.content
    new = response.json()
    assert new["id"] != run_id
    assert new["restarted_from"] == run_id
    assert new["input"] == {"order_id": "o-1"}


def test_retry_and_skip_steps(api_client, saved_workflow):
    saved_workflow()
    client = api_client("operator")
    run_id = start(client)
    assert_problem(client.post(f"/api/v1/runs/{run_id}/steps/nope/retry"), 404)
    assert_problem(client.post_json(f"/api/v1/runs/{run_id}/steps/nope/skip", {}), 404)
    # `first` is queued: it cannot be skipped (nor retried) now
    assert_problem(client.post_json(f"/api/v1/runs/{run_id}/steps/first/skip", {}), 409)
    assert_problem(client.post(f"/api/v1/runs/{run_id}/steps/first/retry"), 409)
    assert_problem(client.post_json(f"/api/v1/runs/{run_id}/steps/first/skip", {"outptu": 1}), 400)
    skipped = client.post_json(f"/api/v1/runs/{run_id}/steps/second/skip", {"output": {"n": 1}})
    assert skipped.status_code == 200, skipped.content
    second = next(s for s in skipped.json()["steps"] if s["name"] == "second")
    assert second["status"] == "skipped" and second["output"] == {"n": 1}


def test_skip_without_a_body(api_client, saved_workflow):
    saved_workflow()
    client = api_client("operator")
    run_id = start(client)
    response = client.post(f"/api/v1/runs/{run_id}/steps/second/skip")
    assert response.status_code == 200, response.content
    assert response.json()["steps"][1]["status"] == "skipped"


def test_restore_needs_a_checkpoint_of_the_run(api_client, saved_workflow):
    saved_workflow()
    client = api_client("operator")
    run_id = start(client)
    body = assert_problem(client.post_json(f"/api/v1/runs/{run_id}/restore", {}), 400)
    assert body["errors"][0]["path"] == "checkpoint"
    assert_problem(client.post_json(f"/api/v1/runs/{run_id}/restore", {"checkpoint": 999999}), 404)
    assert_problem(client.post_json(f"/api/v1/runs/{uuid.uuid4()}/restore", {"checkpoint": 1}), 404)


def test_restore_from_a_checkpoint(api_client, saved_workflow):
    saved_workflow()
    client = api_client("operator")
    run_id = start(client)
    other_id = start(client)
    assert client.post(f"/api/v1/runs/{run_id}/pause").status_code == 200
    mine = services.take_checkpoint(run_id)
    theirs = services.take_checkpoint(other_id)
    listed = client.get(f"/api/v1/runs/{run_id}/checkpoints").json()["items"]
    assert [c["id"] for c in listed] == [mine.pk]
    body = assert_problem(
        client.post_json(f"/api/v1/runs/{run_id}/restore", {"checkpoint": theirs.pk}), 400
    )
    assert body["errors"][0]["path"] == "checkpoint"
    assert_problem(
        api_client("viewer").post_json(f"/api/v1/runs/{run_id}/restore", {"checkpoint": mine.pk}),
        403,
    )
    restored = client.post_json(f"/api/v1/runs/{run_id}/restore", {"checkpoint": mine.pk})
    assert restored.status_code == 200, restored.content
    assert restored.json()["id"] == run_id
    assert RunEvent.objects.filter(run_id=run_id, type="run.restored").exists()


def test_checkpoints_and_errors_of_a_run(api_client, saved_workflow):
    saved_workflow()
    client = api_client("viewer")
    run_id = start(api_client("operator"))
    run = Run.objects.get(pk=run_id)
    cp = Checkpoint.objects.create(
        run=run, step="first", kind="step_complete", data=b"{}", checksum="a" * 64, size_bytes=2
    )
    ErrorRecord.objects.create(
        run=run,
        step="first",
        attempt=1,
        error_class="timeout",
        type="TimeoutError",
        message="slow",
        fingerprint="fp1",
        workflow_name="simple",
        recovery=[
            {
                "strategy": "retry_step",
                "number": 1,
                "success": False,
                "action": "retried",
                "duration_ms": 3,
            }
        ],
    )
    items = client.get(f"/api/v1/runs/{run_id}/checkpoints").json()["items"]
    assert items == [
        {
            **{k: items[0][k] for k in ("created_at", "state_version", "created_by")},
            "id": cp.pk,
            "step": "first",
            "kind": "step_complete",
            "checksum": "a" * 64,
            "size_bytes": 2,
            "compressed": False,
            "valid": True,
        }
    ]
    errors = client.get(f"/api/v1/runs/{run_id}/errors").json()["items"]
    assert len(errors) == 1
    e = errors[0]
    assert e["class"] == "timeout" and e["type"] == "TimeoutError" and e["attempt"] == 1
    assert set(e) >= {
        "id",
        "step",
        "attempt",
        "class",
        "severity",
        "retryable",
        "type",
        "message",
        "fingerprint",
        "created_at",
        "recovery",
    }
    assert e["recovery"] == [
        {
            "strategy": "retry_step",
            "number": 1,
            "success": False,
            "action": "retried",
            "duration_ms": 3,
        }
    ]


def test_error_groups(api_client, saved_workflow):
    saved_workflow()
    saved_workflow("name: other\nsteps:\n  - {name: x, type: noop}\n")
    operator = api_client("operator")
    a, b = start(operator), start(operator)
    c = start(operator, "other", input={})
    for run_id, fp, cls, wf in (
        (a, "fp-1", "timeout", "simple"),
        (a, "fp-1", "timeout", "simple"),
        (b, "fp-1", "timeout", "simple"),
        (c, "fp-2", "permanent", "other"),
    ):
        ErrorRecord.objects.create(
            run_id=run_id,
            step="first",
            error_class=cls,
            type="E",
            message="m",
            fingerprint=fp,
            workflow_name=wf,
        )
    client = api_client("viewer")
    groups = {g["fingerprint"]: g for g in client.get("/api/v1/errors").json()["items"]}
    assert set(groups) == {"fp-1", "fp-2"}
    g = groups["fp-1"]
    assert g["count"] == 3 and g["class"] == "timeout" and set(g["runs"]) == {a, b}
    assert g["first_seen"] <= g["last_seen"]
    assert set(g) >= {
        "fingerprint",
        "class",
        "type",
        "message",
        "count",
        "first_seen",
        "last_seen",
        "runs",
    }
    assert [
        x["fingerprint"] for x in client.get("/api/v1/errors?class=permanent").json()["items"]
    ] == ["fp-2"]
    assert [
        x["fingerprint"] for x in client.get("/api/v1/errors?workflow=simple").json()["items"]
    ] == ["fp-1"]
    assert [
        x["fingerprint"] for x in client.get("/api/v1/errors?fingerprint=fp-2").json()["items"]
    ] == ["fp-2"]


# --------------------------------------------------------------------------- interventions


def test_approval_intervention_list_detail_and_decide(api_client, saved_workflow):
    saved_workflow(APPROVAL_WORKFLOW)
    operator = api_client("operator")
    run_id = start(operator, "needs-approval", input={})
    assert Run.objects.get(pk=run_id).status == "awaiting_intervention"

    items = api_client("viewer").get("/api/v1/interventions?status=open").json()["items"]
    assert len(items) == 1
    item = items[0]
    assert set(item) >= {
        "id",
        "run",
        "step",
        "reason",
        "status",
        "options",
        "created_at",
        "expires_at",
    }
    assert item["run"] == run_id and item["step"] == "review" and "approve" in item["options"]
    assert (
        operator.get(f"/api/v1/interventions?run={run_id}").json()["items"][0]["id"] == item["id"]
    )
    assert operator.get(f"/api/v1/interventions?run={uuid.uuid4()}").json()["items"] == []
    assert operator.get(f"/api/v1/interventions/{item['id']}").json()["step"] == "review"

    url = f"/api/v1/interventions/{item['id']}/decide"
    assert_problem(api_client("viewer").post_json(url, {"action": "approve"}), 403)
    body = assert_problem(operator.post_json(url, {"action": "explode"}), 400)
    assert body["errors"][0]["path"] == "action"
    body = assert_problem(operator.post_json(url, {}), 400)
    assert {"path": "action", "message": "required"} in body["errors"]

    decided = operator.post_json(url, {"action": "approve", "comment": "lgtm"})
    assert decided.status_code == 200, decided.content
    assert decided.json()["status"] == "decided" and decided.json()["action"] == "approve"
    assert_problem(operator.post_json(url, {"action": "approve"}), 409)
    run = operator.get(f"/api/v1/runs/{run_id}").json()
    review = run["steps"][0]
    assert review["kind"] == "approval" and review["status"] == "succeeded"
    assert run["steps"][1]["status"] == "queued"
    assert operator.get("/api/v1/interventions?status=open").json()["items"] == []


def test_intervention_lookups(api_client):
    client = api_client("operator")
    assert_problem(client.get("/api/v1/interventions/999999"), 404)
    assert_problem(client.get("/api/v1/interventions/abc"), 404)
    assert_problem(
        client.post_json("/api/v1/interventions/999999/decide", {"action": "approve"}), 404
    )
    assert_problem(client.get("/api/v1/interventions?status=bogus"), 400)
    assert_problem(client.get("/api/v1/interventions?run=not-a-uuid"), 400)


# --------------------------------------------------------------------------- docs, probes, metrics


def test_openapi_docs(api_client):
    client = Client()
    assert client.get("/api/v1/docs").status_code == 200
    schema = client.get("/api/v1/openapi.json").json()
    assert "/api/v1/runs/{run_id}" in schema["paths"]


def test_healthz_and_readyz():
    client = Client()
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.content
    assert ready.json()["status"] == "ok"
    assert set(ready.json()["checks"]) == {"database", "broker"}


def test_readyz_reports_an_unreachable_broker(settings):
    settings.BROKER_URL = "redis://127.0.0.1:1/0"
    response = Client().get("/readyz")
    assert response.status_code == 503
    assert response.json()["failed"] == ["broker"]
    assert response.json()["checks"]["database"].startswith("ok")


SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_]+="[^"]*"(,[a-zA-Z_]+="[^"]*")*\})? \S+$'
)


def test_metrics_text_format(api_client, saved_workflow):
    saved_workflow()
    run_id = start(api_client("operator"))
    run = Run.objects.get(pk=run_id)
    now = timezone.now()
    StepAttempt.objects.filter(run=run).update(
        status="succeeded", started_at=now - timezone.timedelta(seconds=2), finished_at=now
    )
    Intervention.objects.create(run=run, step="first", reason="look", options=["retry"])
    response = Client().get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.content.decode()
    assert text.endswith("\n")
    families: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert name not in families, f"duplicate TYPE for {name}"
            families[name] = kind
        elif line.startswith("# HELP "):
            continue
        else:
            assert SAMPLE.match(line), line
            float(line.rsplit(" ", 1)[1].replace("+Inf", "inf"))
    assert families == {
        "flowmend_runs": "gauge",
        "flowmend_steps": "gauge",
        "flowmend_step_duration_seconds": "histogram",
        "flowmend_interventions_open": "gauge",
    }
    assert 'flowmend_runs{status="running"} 1' in text
    assert 'flowmend_runs{status="failed"} 0' in text
    assert 'flowmend_steps{status="succeeded"} 1' in text
    assert 'flowmend_step_duration_seconds_count{workflow="simple"} 1' in text
    assert 'flowmend_step_duration_seconds_bucket{workflow="simple",le="1.0"} 0' in text
    assert 'flowmend_step_duration_seconds_bucket{workflow="simple",le="2.5"} 1' in text
    assert 'flowmend_step_duration_seconds_bucket{workflow="simple",le="+Inf"} 1' in text
    assert 'flowmend_step_duration_seconds_sum{workflow="simple"} 2.0' in text
    assert "flowmend_interventions_open 1" in text


def test_events_are_recorded_for_pause(api_client, saved_workflow):
    saved_workflow()
    client = api_client("operator")
    run_id = start(client)
    client.post(f"/api/v1/runs/{run_id}/pause")
    assert RunEvent.objects.filter(run_id=run_id, type="run.paused").exists()


def test_unknown_endpoint_is_a_json_404(api_client):
    body = assert_problem(Client().get("/api/v1/nothing/here"), 404)
    assert "nothing/here" in body["error"]
    assert api_client("viewer").get("/api/v1/runs").status_code == 200


@pytest.mark.django_db
def test_post_without_credentials_is_401_not_a_csrf_403():
    client = Client(enforce_csrf_checks=True)
    for path in ("/api/v1/runs", "/api/v1/workflows"):
        response = client.post(path, data="{}", content_type="application/json")
        assert response.status_code == 401, (path, response.content)
        assert response.json()["error"] == "authentication required"
    response = client.post(
        "/api/v1/runs", data="{}", content_type="application/json", HTTP_AUTHORIZATION="Basic eDp5"
    )
    assert response.status_code == 401
