"""The runs list (filters, cursor, bulk actions), refusals and 404s, on real PostgreSQL.

The plain ``db`` fixture: ``on_commit`` hooks never fire, so no worker picks anything up
and runs stay where ``services`` left them.
"""

from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from workflows import auth, services
from workflows.models import ErrorRecord, Run, RunEvent

pytestmark = pytest.mark.django_db

WORKFLOW = """
name: list-test
steps:
  - name: only
    type: noop
"""
OTHER = """
name: other-flow
steps:
  - name: only
    type: noop
"""


def _client(username: str, role: str | None) -> Client:
    user = User.objects.create_user(username, password="pw")
    if role:
        auth.set_role(user, role)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def operator() -> Client:
    return _client("olivia", "operator")


@pytest.fixture
def viewer() -> Client:
    return _client("victor", "viewer")


@pytest.fixture
def runs() -> list[Run]:
    services.save_workflow(WORKFLOW)
    services.save_workflow(OTHER)
    made = [services.start_run("list-test") for _ in range(5)]
    made += [services.start_run("other-flow") for _ in range(2)]
    return made


def _ids(response) -> list[str]:
    return re.findall(r'id="run-row-([0-9a-f-]{36})"', response.content.decode())


# --------------------------------------------------------------------------- filters


def test_filter_by_workflow_and_status(operator: Client, runs: list[Run]) -> None:
    services.cancel(runs[0].pk)
    page = operator.get("/runs/?workflow=list-test")
    assert set(_ids(page)) == {str(r.pk) for r in runs[:5]}
    page = operator.get("/runs/?status=cancelled&status=running&workflow=list-test")
    assert set(_ids(page)) == {str(r.pk) for r in runs[:5]}
    page = operator.get("/runs/?status=cancelled")
    assert _ids(page) == [str(runs[0].pk)]


def test_filter_by_time_range(operator: Client, runs: list[Run]) -> None:
    old = runs[0]
    Run.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=3))
    assert _ids(operator.get("/runs/?from=1d")).count(str(old.pk)) == 0
    day = (timezone.now() - timedelta(days=2)).date().isoformat()
    assert _ids(operator.get(f"/runs/?to={day}")) == [str(old.pk)]
    assert str(old.pk) in _ids(operator.get("/runs/?from=2020-01-01T00:00"))


def test_text_search_on_id_workflow_and_error(operator: Client, runs: list[Run]) -> None:
    target = runs[1]
    assert _ids(operator.get(f"/runs/?q={str(target.pk)[:8]}")) == [str(target.pk)]
    assert len(_ids(operator.get("/runs/?q=other-fl"))) == 2
    Run.objects.filter(pk=target.pk).update(
        error={"type": "ConnectionError", "message": "gateway refused the card"}
    )
    assert _ids(operator.get("/runs/?q=refused the card")) == [str(target.pk)]


def test_error_group_and_step_filters(operator: Client, runs: list[Run]) -> None:
    ErrorRecord.objects.create(
        run=runs[2], step="only", type="E", message="m", fingerprint="ab" * 32,
        workflow_name="list-test",
    )  # fmt: skip
    assert _ids(operator.get("/runs/?fingerprint=" + "ab" * 32)) == [str(runs[2].pk)]
    assert _ids(operator.get("/runs/?step=only")) == [str(runs[2].pk)]


def test_malformed_filters_are_ignored_with_a_note(operator: Client, runs: list[Run]) -> None:
    page = operator.get(
        "/runs/?status=bogus&workflow=Not%20A%20Name!&from=yesterday-ish&to=31/12/2020"
        "&after=garbage&fingerprint=zz%3B"
    )
    assert page.status_code == 200
    text = html.unescape(page.content.decode())
    for note in ("Ignored status filter", "Ignored workflow filter", "Ignored 'from' time",
                 "Ignored 'to' time", "Ignored a page cursor", "Ignored fingerprint filter"):  # fmt: skip
        assert note in text, note
    assert len(_ids(page)) == len(runs)  # the valid rest still applies: here, nothing


# --------------------------------------------------------------------------- cursor


def test_cursor_pagination_walks_every_run_once(operator: Client, runs: list[Run]) -> None:
    now = timezone.now()
    extra = [services.start_run("list-test") for _ in range(60)]
    same_time = [r.pk for r in extra[:10]]
    Run.objects.filter(pk__in=same_time).update(created_at=now)  # ties broken by id
    seen: list[str] = []
    url = "/runs/"
    pages = 0
    while url:
        page = operator.get(url)
        assert page.status_code == 200
        seen += _ids(page)
        more = re.search(r'href="(\?[^"]*after=[^"]+)">Older', page.content.decode())
        url = "/runs/" + more.group(1).replace("&amp;", "&") if more else ""
        pages += 1
    assert pages == 2
    assert len(seen) == len(set(seen)) == len(runs) + len(extra)


def test_cursor_keeps_the_filter(operator: Client, runs: list[Run]) -> None:
    for _ in range(55):
        services.start_run("other-flow")
    first = operator.get("/runs/?workflow=other-flow")
    assert len(_ids(first)) == 50
    link = re.search(r'href="\?([^"]*after=[^"]+)">Older', first.content.decode()).group(1)
    assert "workflow=other-flow" in link
    second = operator.get("/runs/?" + link.replace("&amp;", "&"))
    assert len(_ids(second)) == 7
    assert "Newest" in second.content.decode()


# --------------------------------------------------------------------------- bulk


def test_bulk_by_filter_counts_first_then_acts(operator: Client, runs: list[Run]) -> None:
    services.cancel(runs[0].pk)
    dry = operator.post(
        "/runs/bulk/", {"action": "pause", "scope": "filter", "workflow": "list-test"}
    )
    assert dry.status_code == 200
    text = dry.content.decode()
    assert "This will pause <strong>4</strong> runs" in text
    assert "1 other is left alone: finished or paused" in text
    assert Run.objects.filter(status="paused").count() == 0  # nothing done yet

    done = operator.post(
        "/runs/bulk/",
        {"action": "pause", "scope": "filter", "workflow": "list-test", "confirm": "yes"},
        follow=True,
    )
    assert done.redirect_chain[-1][0] == "/runs/?workflow=list-test"
    assert "Paused 4 runs." in done.content.decode()
    paused = Run.objects.filter(workflow_name="list-test", status="paused")
    assert paused.count() == 4
    # audited: each run has its own event with the actor
    assert RunEvent.objects.filter(type="run.paused", actor="olivia").count() == 4


def test_bulk_by_selection(operator: Client, runs: list[Run]) -> None:
    picked = [str(runs[5].pk), str(runs[6].pk)]
    dry = operator.post("/runs/bulk/", {"action": "cancel", "scope": "selected", "run": picked})
    assert "This will cancel <strong>2</strong> runs" in dry.content.decode()
    operator.post(
        "/runs/bulk/",
        {"action": "cancel", "scope": "selected", "run": picked, "confirm": "yes"},
    )
    assert set(Run.objects.filter(status="cancelled").values_list("pk", flat=True)) == {
        runs[5].pk,
        runs[6].pk,
    }


def test_bulk_collects_refusals(operator: Client, runs: list[Run]) -> None:
    run = runs[0]
    services.cancel(run.pk)
    Run.objects.filter(pk=run.pk).update(status="failed")  # looks failed, has no failed step
    done = operator.post(
        "/runs/bulk/",
        {"action": "retry", "scope": "selected", "run": [str(run.pk)], "confirm": "yes"},
        follow=True,
    )
    text = done.content.decode()
    assert "Retried 0 runs." in text
    assert f"Refused for 1: {str(run.pk)[:8]}: no failed step to retry" in text


def test_bulk_bad_input_is_explained(operator: Client, runs: list[Run]) -> None:
    nothing = operator.post("/runs/bulk/", {"action": "pause", "scope": "selected"}, follow=True)
    assert "Select some runs first" in nothing.content.decode()
    unknown = operator.post("/runs/bulk/", {"action": "explode", "scope": "filter"}, follow=True)
    assert "Choose pause, resume, cancel or retry." in unknown.content.decode()
    bad_id = operator.post(
        "/runs/bulk/", {"action": "pause", "scope": "selected", "run": ["nope", str(runs[0].pk)]}
    )
    assert "Ignored 'nope': not a run id." in html.unescape(bad_id.content.decode())


# --------------------------------------------------------------------------- access


def test_viewer_cannot_pause_and_is_told_why(viewer: Client, runs: list[Run]) -> None:
    page = viewer.get("/runs/")
    assert b'id="bulk-form"' not in page.content
    response = viewer.post(
        "/runs/bulk/",
        {"action": "pause", "scope": "filter", "confirm": "yes"},
        follow=True,
    )
    text = response.content.decode()
    assert "Refused: your role (viewer) may not pause runs; that needs the operator role." in text
    assert Run.objects.filter(status="paused").count() == 0
    single = viewer.post(f"/runs/{runs[0].pk}/pause/", follow=True)
    assert "your role (viewer) may not pause runs" in single.content.decode()


def test_pages_need_login_and_a_role(client: Client, runs: list[Run]) -> None:
    assert client.get("/runs/").status_code == 302
    assert client.post("/runs/bulk/", {"action": "pause"}).status_code == 302
    nobody = _client("nobody", None)
    refused = nobody.get("/runs/")
    assert refused.status_code == 403
    assert b"your account has no role" in refused.content


@pytest.mark.parametrize(
    ("path", "back"),
    [
        ("/runs/00000000-0000-0000-0000-000000000000/", "/runs/"),
        ("/runs/not-a-uuid/", "/runs/"),
        ("/workflows/no-such-flow/", "/workflows/"),
    ],
)
def test_unknown_things_are_404_pages_that_lead_back(
    operator: Client, path: str, back: str
) -> None:
    response = operator.get(path)
    assert response.status_code == 404
    assert f'href="{back}"'.encode() in response.content


# --------------------------------------------------------------------------- live wiring


def test_pages_subscribe_through_the_ws_extension(operator: Client, runs: list[Run]) -> None:
    run_page = operator.get(f"/runs/{runs[0].pk}/").content.decode()
    assert 'hx-ext="ws"' in run_page
    assert f'ws-connect="/ws/runs/{runs[0].pk}/?after=' in run_page
    assert "django_htmx/ext/hx-ws-2.min.js" in run_page
    assert '<tbody id="event-rows-live">' in run_page
    listing = operator.get("/runs/?workflow=list-test").content.decode()
    assert 'ws-connect="/ws/dashboard/?workflow=list-test&amp;page=runs"' in listing
    overview = operator.get("/").content.decode()
    assert 'ws-connect="/ws/dashboard/?page=overview"' in overview


# --------------------------------------------------------------------------- errors, workflows


def test_errors_grouped_by_fingerprint_link_to_their_runs(
    operator: Client, runs: list[Run]
) -> None:
    for run in runs[:3]:
        ErrorRecord.objects.create(
            run=run, step="only", attempt=1, type="ConnectionError", message="refused",
            fingerprint="cd" * 32, workflow_name="list-test", traceback="Traceback: here",
        )  # fmt: skip
    page = operator.get("/errors/").content.decode()
    assert "ConnectionError" in page
    assert f"/runs/?fingerprint={'cd' * 32}" in page
    assert "3 runs" in page
    assert "Traceback: here" in page
    only = operator.get("/errors/?fingerprint=" + "cd" * 32)
    assert only.status_code == 200
    bad = operator.get("/errors/?fingerprint=x&workflow=No%20Such!")
    assert bad.status_code == 200
    assert "Ignored fingerprint filter" in html.unescape(bad.content.decode())


def test_workflow_page_shows_stats_graph_and_version_diff(operator: Client) -> None:
    services.save_workflow(WORKFLOW)
    services.save_workflow(WORKFLOW.replace("type: noop", "type: noop\n    with: {n: 2}"))
    page = operator.get("/workflows/list-test/").content.decode()
    assert "Changes from v1 to v2" in page
    assert 'class="text-diff"' in page
    assert "<svg" in page
    assert "median duration" in page
    assert "Start run of v2" in page
    bad = operator.get("/workflows/list-test/?compare=zz")
    assert "Ignored compare" in html.unescape(bad.content.decode())


def test_opening_an_action_address_shows_a_page_and_changes_nothing(client, django_user_model):
    user = django_user_model.objects.create_superuser("opener", "o@example.com", "pw")
    client.force_login(user)
    response = client.get("/runs/bulk/")
    assert response.status_code == 405
    assert b"only works from its button" in response.content
