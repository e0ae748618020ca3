"""The operator console, rendered by Django against real PostgreSQL.

With the plain ``db`` fixture ``transaction.on_commit`` hooks never fire, so no worker
picks anything up: runs stay where ``services`` left them, which is what these tests want.
"""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import reverse

from interventions.models import Intervention
from workflows import services
from workflows.models import ErrorRecord, Run

pytestmark = pytest.mark.django_db

WORKFLOW = """
name: page-test
description: Two steps for the page tests.
inputs:
  type: object
  properties:
    n: {type: integer}
steps:
  - name: first
    type: noop
    with: {n: "{{ inputs.n }}"}
  - name: second
    type: noop
"""


def _user(username: str, group: str | None = None, **extra: object) -> User:
    user = User.objects.create_user(username, password="pw-" + username, **extra)
    if group:
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


@pytest.fixture
def operator() -> User:
    return _user("olivia", "operator")


@pytest.fixture
def viewer() -> User:
    return _user("victor", "viewer")


@pytest.fixture
def superuser() -> User:
    return _user("sam-super", None, is_staff=True, is_superuser=True)


@pytest.fixture
def su_client(superuser: User) -> Client:
    client = Client()
    client.force_login(superuser)
    return client


@pytest.fixture
def op_client(operator: User) -> Client:
    client = Client()
    client.force_login(operator)
    return client


@pytest.fixture
def viewer_client(viewer: User) -> Client:
    client = Client()
    client.force_login(viewer)
    return client


@pytest.fixture
def workflow() -> str:
    definition, _ = services.save_workflow(WORKFLOW)
    return definition.name


@pytest.fixture
def run(workflow: str) -> Run:
    return services.start_run(workflow, input={"n": 3})


@pytest.fixture
def intervention(run: Run) -> Intervention:
    return Intervention.objects.create(
        run=run,
        step="first",
        kind="escalation",
        reason="first failed 3 times: ConnectionError",
        options=["retry", "skip", "abort"],
    )


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


# --------------------------------------------------------------------------- access


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/runs/",
        f"/runs/{uuid.uuid4()}/",
        "/interventions/",
        "/interventions/1/",
        "/errors/",
        "/workflows/",
        "/workflows/page-test/",
    ],
)
def test_pages_redirect_to_login_with_next(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"] == f"/login/?next={path}"


def test_login_page_and_login_follow_next(client: Client, operator: User) -> None:
    page = client.get("/login/?next=/runs/")
    assert page.status_code == 200
    assert b'name="next" value="/runs/"' in page.content
    response = client.post(
        "/login/", {"username": "olivia", "password": "pw-olivia", "next": "/runs/"}
    )
    assert response.status_code == 302
    assert response["Location"] == "/runs/"


def test_logout_is_a_post(op_client: Client) -> None:
    response = op_client.post("/logout/")
    assert response.status_code == 302
    assert op_client.get("/").status_code == 302


# --------------------------------------------------------------------------- pages render


def test_every_page_renders(op_client: Client, run: Run, intervention: Intervention) -> None:
    ErrorRecord.objects.create(
        run=run,
        step="first",
        attempt=1,
        type="ConnectionError",
        message="refused",
        fingerprint="f" * 64,
        workflow_name=run.workflow_name,
    )
    pages = {
        "/": [b"Overview", b"open interventions", b"page-test"],
        "/runs/": [b"page-test", str(run.pk)[:8].encode()],
        f"/runs/{run.pk}/": [b"first", b"Event log", b"run.started", b'id="run-live"', b"every 2s"],
        "/interventions/": [b"first failed 3 times", b'value="retry"'],
        f"/interventions/{intervention.pk}/": [b"first failed 3 times", b'value="abort"'],
        "/errors/": [b"ConnectionError", b"refused"],
        "/workflows/": [b"page-test", b"v1"],
        "/workflows/page-test/": [
            b"Two steps for the page tests",
            b"Start run",
            b"name: page-test",
        ],
    }
    for path, needles in pages.items():
        response = op_client.get(path)
        assert response.status_code == 200, path
        for needle in needles:
            assert needle in response.content, (path, needle)
        assert b"django_htmx/htmx-2.min.js" in response.content
        assert b"X-CSRFToken" in response.content


def test_htmx_request_gets_the_steps_fragment(op_client: Client, run: Run) -> None:
    response = op_client.get(f"/runs/{run.pk}/", headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert b'id="run-live"' in response.content
    assert b"<html" not in response.content
    assert b"Event log" not in response.content


def test_terminal_run_does_not_poll(op_client: Client, run: Run) -> None:
    services.cancel(run.pk)
    page = op_client.get(f"/runs/{run.pk}/")
    assert b"every 2s" not in page.content
    assert b"cancelled" in page.content
    fragment = op_client.get(f"/runs/{run.pk}/", headers={"HX-Request": "true"})
    assert fragment.headers.get("HX-Refresh") == "true"


def test_run_filters(op_client: Client, run: Run) -> None:
    running = op_client.get(f"/runs/?status={run.status}&workflow=page-test")
    assert str(run.pk)[:8].encode() in running.content
    other = op_client.get("/runs/?status=succeeded")
    assert str(run.pk)[:8].encode() not in other.content
    bad = op_client.get("/runs/?status=bogus&workflow=Not%20A%20Name!&limit=x")
    assert bad.status_code == 200
    assert b"Ignored status filter" in bad.content
    assert b"Ignored workflow filter" in bad.content
    assert str(run.pk)[:8].encode() in bad.content


def test_malformed_filters_elsewhere_never_500(op_client: Client, workflow: str) -> None:
    assert b"Ignored" in op_client.get("/interventions/?status=nope").content
    assert b"Ignored" in op_client.get("/errors/?class=DROP%20TABLE").content
    assert b"Ignored version" in op_client.get("/workflows/page-test/?version=abc").content


@pytest.mark.parametrize(
    ("path", "back"),
    [
        (f"/runs/{uuid.uuid4()}/", "/runs/"),
        ("/runs/not-a-uuid/", "/runs/"),
        ("/workflows/no-such-workflow/", "/workflows/"),
        ("/interventions/999999/", "/interventions/"),
    ],
)
def test_unknown_things_get_a_404_page_linking_back(
    op_client: Client, path: str, back: str
) -> None:
    response = op_client.get(path)
    assert response.status_code == 404
    assert f'href="{back}"'.encode() in response.content
    assert b"Not found" in response.content


# --------------------------------------------------------------------------- actions


def test_pause_then_resume(op_client: Client, run: Run) -> None:
    response = op_client.post(f"/runs/{run.pk}/pause/", follow=True)
    assert response.redirect_chain[-1][0] == f"/runs/{run.pk}/"
    assert "Paused the run." in _messages(response)
    run.refresh_from_db()
    assert run.state["paused"] is True
    assert b'action="/runs/%s/resume/"' % str(run.pk).encode() in response.content

    response = op_client.post(f"/runs/{run.pk}/resume/", follow=True)
    assert "Resumed the run." in _messages(response)
    run.refresh_from_db()
    assert not run.state.get("paused")
    assert run.status != "paused"


def test_refusal_is_shown(op_client: Client, run: Run) -> None:
    response = op_client.post(f"/runs/{run.pk}/resume/", follow=True)
    (message,) = _messages(response)
    assert message.startswith("Could not resume the run: ")
    assert "not paused" in message
    assert b"Could not resume the run" in response.content


def test_actions_need_post_and_csrf(run: Run, operator: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    assert client.get(f"/runs/{run.pk}/pause/").status_code == 405
    assert client.post(f"/runs/{run.pk}/pause/").status_code == 403
    run.refresh_from_db()
    assert not run.state.get("paused")


def test_cancel_and_restart(op_client: Client, run: Run) -> None:
    op_client.post(f"/runs/{run.pk}/cancel/")
    run.refresh_from_db()
    assert run.status == "cancelled"
    response = op_client.post(f"/runs/{run.pk}/restart/")
    new = Run.objects.get(restarted_from=run)
    assert response["Location"] == f"/runs/{new.pk}/"


def test_step_actions_report_refusals(op_client: Client, run: Run) -> None:
    response = op_client.post(
        f"/runs/{run.pk}/steps/", {"step": "first", "action": "retry"}, follow=True
    )
    (message,) = _messages(response)
    assert message.startswith("Could not retry step first: ")
    response = op_client.post(
        f"/runs/{run.pk}/steps/", {"step": "nope", "action": "skip"}, follow=True
    )
    assert "does not exist" in _messages(response)[0]


def test_unknown_run_action_is_404(op_client: Client) -> None:
    assert op_client.post(f"/runs/{uuid.uuid4()}/pause/").status_code == 404


def test_viewer_may_look_but_not_act(viewer_client: Client, run: Run) -> None:
    page = viewer_client.get(f"/runs/{run.pk}/")
    assert page.status_code == 200
    assert b"/pause/" not in page.content
    response = viewer_client.post(f"/runs/{run.pk}/pause/", follow=True)
    assert "may not pause runs" in _messages(response)[0]
    run.refresh_from_db()
    assert not run.state.get("paused")


def test_user_without_role_is_refused_pages(run: Run) -> None:
    client = Client()
    client.force_login(_user("nora"))
    response = client.get("/runs/")
    assert response.status_code == 403
    assert b"no role" in response.content


def test_start_run_from_workflow_page(op_client: Client, workflow: str) -> None:
    response = op_client.post(
        f"/workflows/{workflow}/start/", {"input": '{"n": 7}', "version": "1"}
    )
    run = Run.objects.get()
    assert response["Location"] == f"/runs/{run.pk}/"
    assert run.input == {"n": 7}

    bad_json = op_client.post(f"/workflows/{workflow}/start/", {"input": "{nope"})
    assert bad_json.status_code == 400
    assert b"not valid JSON" in bad_json.content
    assert b"{nope" in bad_json.content

    bad_input = op_client.post(f"/workflows/{workflow}/start/", {"input": '{"n": "x"}'})
    assert bad_input.status_code == 400
    assert b"input.n" in bad_input.content
    assert Run.objects.count() == 1


def test_decide_intervention_refusal_is_shown(
    op_client: Client, intervention: Intervention
) -> None:
    response = op_client.post(
        f"/interventions/{intervention.pk}/decide/", {"action": "approve"}, follow=True
    )
    assert "is not an option here" in _messages(response)[0]


def test_approval_decided_from_the_page(op_client: Client) -> None:
    with open("examples/approval-gate.yaml") as f:
        services.save_workflow(f.read())
    run = services.start_run("approval-gate", input={"amount": 5000})
    intervention = Intervention.objects.filter(run=run, status="open").first()
    if intervention is None:
        pytest.skip("the approval opens only after a worker ran the flow step")
    listing = op_client.get("/interventions/")
    assert b"approve" in listing.content
    response = op_client.post(
        f"/interventions/{intervention.pk}/decide/",
        {"action": "approve", "comment": "fine", "next": "/interventions/"},
    )
    assert response["Location"] == "/interventions/"
    intervention.refresh_from_db()
    assert intervention.status == "decided"
    assert intervention.action == "approve"


# --------------------------------------------------------------------------- admin


@pytest.mark.parametrize(
    "model",
    [
        "workflows_workflowdefinition",
        "workflows_run",
        "workflows_stepattempt",
        "workflows_runevent",
        "workflows_checkpoint",
        "workflows_errorrecord",
        "workflows_apitoken",
        "interventions_intervention",
    ],
)
def test_admin_changelists_render(
    su_client: Client, intervention: Intervention, model: str
) -> None:
    response = su_client.get(reverse(f"admin:{model}_changelist"))
    assert response.status_code == 200


def test_admin_run_change_page(su_client: Client, run: Run) -> None:
    assert su_client.get(reverse("admin:workflows_run_change", args=[run.pk])).status_code == 200


def test_admin_pause_action(su_client: Client, run: Run) -> None:
    done = services.cancel(services.start_run(run.workflow_name, input={"n": 1}).pk)
    url = reverse("admin:workflows_run_changelist")
    response = su_client.post(
        url, {"action": "pause_runs", "_selected_action": [str(run.pk), str(done.pk)]}, follow=True
    )
    texts = _messages(response)
    assert "Paused 1 run(s)." in texts
    assert any(t.startswith("Refused 1 run(s):") for t in texts)
    run.refresh_from_db()
    assert run.state["paused"] is True
