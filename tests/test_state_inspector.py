"""The state inspector page: current state, a checkpoint, the diff of two."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from tests.runtime import wait_for_run
from workflows import services

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def client_in(client):
    user = get_user_model().objects.create_superuser("inspector", "i@example.com", "pw")
    client.force_login(user)
    return client


def test_state_checkpoint_and_diff(worker, client_in):
    services.save_workflow(
        "name: inspected\nsteps:\n  - {name: a, type: noop, with: {v: 1}}\n"
        "  - {name: b, type: noop, with: {v: 2}}\n"
    )
    run = wait_for_run(services.start_run("inspected").pk)
    first, second = run.checkpoints.order_by("created_at", "pk")

    page = client_in.get(f"/runs/{run.pk}/state/")
    assert page.status_code == 200
    assert b"current state" in page.content and b"&quot;succeeded&quot;" in page.content

    page = client_in.get(f"/runs/{run.pk}/state/?a={first.pk}&b={second.pk}")
    assert page.status_code == 200
    text = page.content.decode()
    assert "steps.b.status" in text and "changed" in text
    assert "steps.a.status" not in text  # a was done in both

    page = client_in.get(f"/runs/{run.pk}/state/?a=999999")
    assert page.status_code == 400 and b"no checkpoint 999999" in page.content

    assert client_in.get("/runs/00000000-0000-0000-0000-000000000000/state/").status_code == 404


def test_foreach_step_ids_are_valid_css_selectors(worker, client_in):
    """htmx looks fragments up by id: `#skip-ship[0]` is not a valid selector."""
    import re

    services.save_workflow(
        "name: fan\nsteps:\n  - name: each\n    type: foreach\n    foreach: '[1, 2]'\n"
        "    steps: [{name: ship, type: python, with: {function: 'tests.steps:always_fail'}}]\n"
    )
    run = wait_for_run(services.start_run("fan").pk)
    page = client_in.get(f"/runs/{run.pk}/").content.decode()
    ids = re.findall(r'id="([^"]+)"', page)
    assert "step-ship-0-" in ids
    assert not [i for i in ids if "[" in i or "]" in i]
