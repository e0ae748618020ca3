"""Shared fixtures: a cast of users with roles, API clients with their tokens, workflows.

- ``admin_user``, ``operator_user``, ``viewer_user``: users with that role (Django groups).
- ``make_user(username, role)``: any other user (``role=None``: no role at all).
- ``token_for(user)``: a fresh raw API token.
- ``api_client(role_or_user="operator")``: a Django test ``Client`` that sends
  ``Authorization: Bearer <token>`` on every request; ``api_client(None)`` sends none.
  Its ``.user`` is the user behind it; ``.post_json(path, data)`` posts JSON.
- ``saved_workflow(text_or_dict, user=None)``: saves through ``services.save_workflow`` and
  returns the ``WorkflowDefinition`` (text is dedented; a dict is sent as JSON).
- ``SIMPLE_WORKFLOW``: a two-step noop workflow named ``simple`` with an inputs schema.

All of them need the database; they take the plain ``db`` fixture, so they also work in
tests that ask for ``transactional_db`` (request that one first).

The runtime fixtures ``worker`` (real Dramatiq worker threads on the configured broker)
and ``sweeper_thread`` come from ``tests/runtime.py`` and are available everywhere.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from tests.runtime import sweeper_thread, worker  # noqa: F401  (shared fixtures)
from workflows import auth, services
from workflows.models import ApiToken, WorkflowDefinition

# Python steps used by the tests live in tests/steps.py (worker processes get this too,
# through tests.runtime.worker_env).
if "tests" not in settings.FLOWMEND_PYTHON_MODULES:
    settings.FLOWMEND_PYTHON_MODULES = [*settings.FLOWMEND_PYTHON_MODULES, "tests"]
settings.FLOWMEND_OVERVIEW_CACHE_SECONDS = 0  # tests look at the figures right after a change

SIMPLE_WORKFLOW = """\
name: simple
description: Two steps that do nothing.
inputs:
  type: object
  required: [order_id]
  properties:
    order_id: {type: string}
steps:
  - name: first
    type: noop
    with: {order: "{{ inputs.order_id }}"}
  - name: second
    type: noop
"""


class ApiClient(Client):
    """A test client that authenticates with a bearer token."""

    user: Any = None
    token: str | None = None

    def post_json(self, path: str, data: Any = None, **extra: Any) -> Any:
        body = "" if data is None else json.dumps(data)
        return self.post(path, body, content_type="application/json", **extra)


@pytest.fixture
def make_user(db: None) -> Callable[..., Any]:
    User = get_user_model()

    def make(username: str, role: str | None = "operator", **fields: Any) -> Any:
        user, _ = User.objects.get_or_create(username=username, defaults=fields)
        if role is not None:
            auth.set_role(user, role)
        return user

    return make


@pytest.fixture
def admin_user(make_user: Callable[..., Any]) -> Any:
    return make_user("ada-admin", "admin")


@pytest.fixture
def operator_user(make_user: Callable[..., Any]) -> Any:
    return make_user("otto-operator", "operator")


@pytest.fixture
def viewer_user(make_user: Callable[..., Any]) -> Any:
    return make_user("vera-viewer", "viewer")


@pytest.fixture
def token_for(db: None) -> Callable[[Any], str]:
    def issue(user: Any) -> str:
        return ApiToken.issue(user)[1]

    return issue


@pytest.fixture
def api_client(
    make_user: Callable[..., Any], token_for: Callable[[Any], str]
) -> Callable[..., ApiClient]:
    users = {"admin": "ada-admin", "operator": "otto-operator", "viewer": "vera-viewer"}

    def make(who: Any = "operator") -> ApiClient:
        if who is None:
            return ApiClient()
        user = make_user(users[who], who) if isinstance(who, str) else who
        token = token_for(user)
        client = ApiClient(headers={"authorization": f"Bearer {token}"})
        client.user = user
        client.token = token
        return client

    return make


@pytest.fixture
def saved_workflow(db: None) -> Callable[..., WorkflowDefinition]:
    def save(
        source: str | dict[str, Any] = SIMPLE_WORKFLOW, user: Any = None
    ) -> WorkflowDefinition:
        if isinstance(source, dict):
            definition, _ = services.save_workflow(json.dumps(source), "application/json", user)
        else:
            definition, _ = services.save_workflow(
                textwrap.dedent(source), "application/yaml", user
            )
        return definition

    return save
