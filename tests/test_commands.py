"""``manage.py apitoken`` and ``manage.py loadworkflows``."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client

from tests.conftest import SIMPLE_WORKFLOW
from workflows import auth
from workflows.models import ApiToken, WorkflowDefinition

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# --------------------------------------------------------------------------- apitoken


def test_apitoken_create_prints_a_working_token_last():
    out, _ = run("apitoken", "newbie", "--create")
    token = out.strip().splitlines()[-1]
    user = get_user_model().objects.get(username="newbie")
    assert auth.role_of(user) == "operator"
    assert not user.has_usable_password()
    assert ApiToken.lookup(token).user == user
    response = Client(headers={"authorization": f"Bearer {token}"}).get("/api/v1/runs")
    assert response.status_code == 200


def test_apitoken_create_with_role():
    out, _ = run("apitoken", "boss", "--create", "--role", "admin")
    assert auth.role_of(get_user_model().objects.get(username="boss")) == "admin"
    assert ApiToken.lookup(out.strip().splitlines()[-1]) is not None


def test_apitoken_existing_user_keeps_or_changes_role(make_user):
    user = make_user("vic", "viewer")
    out1, _ = run("apitoken", "vic")
    assert auth.role_of(get_user_model().objects.get(pk=user.pk)) == "viewer"
    out2, _ = run("apitoken", "vic", "--role", "operator")
    assert auth.role_of(get_user_model().objects.get(pk=user.pk)) == "operator"
    # --create with an existing user creates nothing new and keeps the role
    run("apitoken", "vic", "--create")
    assert auth.role_of(get_user_model().objects.get(pk=user.pk)) == "operator"
    tokens = {out1.strip().splitlines()[-1], out2.strip().splitlines()[-1]}
    assert len(tokens) == 2
    assert ApiToken.objects.filter(user=user).count() == 3


def test_apitoken_unknown_user_fails():
    with pytest.raises(CommandError, match="does not exist"):
        run("apitoken", "ghost")
    assert not get_user_model().objects.filter(username="ghost").exists()


def test_apitoken_bad_role_is_refused():
    with pytest.raises(CommandError):
        run("apitoken", "x", "--create", "--role", "god")


@pytest.mark.django_db(transaction=True)
def test_apitoken_exit_code_in_a_real_process():
    """The command line: a clear message and a non-zero exit code for an unknown user."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTEST_VERSION": "1",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
    }
    if db.get("PASSWORD"):
        env["DATABASE_URL"] = (
            f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        )
    result = subprocess.run(
        [sys.executable, "manage.py", "apitoken", "nobody-here"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "does not exist" in result.stderr
    made = subprocess.run(
        [sys.executable, "manage.py", "apitoken", "cli-user", "--create", "--role", "viewer"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    assert ApiToken.lookup(token).user.username == "cli-user"


# --------------------------------------------------------------------------- loadworkflows


def test_loadworkflows_files_and_directories(tmp_path):
    (tmp_path / "simple.yaml").write_text(SIMPLE_WORKFLOW)
    nested = tmp_path / "more"
    nested.mkdir()
    (nested / "other.json").write_text(
        json.dumps({"name": "other", "steps": [{"name": "a", "type": "noop"}]})
    )
    (nested / "notes.txt").write_text("not a workflow")
    out, _ = run("loadworkflows", str(tmp_path))
    assert out.splitlines() == ["other v1 (created)", "simple v1 (created)"]

    out, _ = run("loadworkflows", str(tmp_path / "simple.yaml"))
    assert out.splitlines() == ["simple v1 (unchanged)"]

    (tmp_path / "simple.yaml").write_text(SIMPLE_WORKFLOW.replace("do nothing", "do less"))
    out, _ = run("loadworkflows", str(tmp_path / "simple.yaml"))
    assert out.splitlines() == ["simple v2 (created)"]
    assert WorkflowDefinition.objects.filter(name="simple").count() == 2


def test_loadworkflows_reports_every_invalid_file_and_fails_after_all(tmp_path):
    (tmp_path / "a-bad.yaml").write_text(
        "name: bad\nsteps:\n  - name: x\n    type: noop\n    on-failure:\n      retry: {max-attempts: 0}\n"
    )
    (tmp_path / "b-good.yml").write_text(SIMPLE_WORKFLOW)
    (tmp_path / "c-broken.yaml").write_text("name: [")
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match="2 of 3"):
        call_command("loadworkflows", str(tmp_path), stdout=out, stderr=err)
    assert out.getvalue().splitlines() == ["simple v1 (created)"]
    errors = err.getvalue()
    assert f"{tmp_path / 'a-bad.yaml'}: steps[0].on-failure.retry.max-attempts:" in errors
    assert str(tmp_path / "c-broken.yaml") in errors
    assert WorkflowDefinition.objects.filter(name="simple").exists()
    assert not WorkflowDefinition.objects.filter(name="bad").exists()


def test_loadworkflows_missing_path_fails(tmp_path):
    with pytest.raises(CommandError):
        run("loadworkflows", str(tmp_path / "nope.yaml"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CommandError):
        run("loadworkflows", str(empty))
