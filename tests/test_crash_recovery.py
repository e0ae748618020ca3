"""Kill every process at random points with SIGKILL; every run still finishes, once."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import pytest
from django.contrib.auth import get_user_model

from tests.runtime import ROOT, kill_process_group, start_worker_process, wait_for_run, worker_env
from workflows import services
from workflows.models import ApiToken, RunEvent, StepAttempt

pytestmark = pytest.mark.django_db(transaction=True)

WORKFLOW = """
name: survivor
steps:
  - {name: prepare, type: noop}
  - name: work
    type: python
    with: {function: "tests.steps:slow", args: {seconds: 0.3}}
  - {name: nap, type: sleep, with: {duration: 200ms}}
  - name: fan
    type: foreach
    foreach: "[1, 2, 3]"
    steps:
      - {name: item, type: python, with: {function: "tests.steps:slow", args: {seconds: 0.2}}}
  - name: flaky
    type: python
    with: {function: "tests.steps:fail_until", args: {succeed_on: 2}}
    on-failure: {retry: {max-attempts: 2, delay: 100ms}}
  - {name: finish, type: noop}
"""


def start_process(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=worker_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def start_web(port: int) -> subprocess.Popen[bytes]:
    return start_process(
        ["-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "flowmend.asgi:application"]
    )


def start_sweeper() -> subprocess.Popen[bytes]:
    return start_process(["manage.py", "sweeper", "--interval", "0.2"])


def post_run(port: int, token: str) -> str | None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/runs",
        data=json.dumps({"workflow": "survivor"}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())["id"]
    except OSError:
        return None  # the web process was down: the client retries


@pytest.fixture
def crash_settings(settings):
    settings.FLOWMEND_PYTHON_MODULES = ["examples", "tests"]
    settings.FLOWMEND_LEASE_SECONDS = 1.5


def test_kill_everything_at_random_points(crash_settings):
    rng = random.Random(20261122)
    services.save_workflow(WORKFLOW)
    user = get_user_model().objects.create_superuser("chaos", "c@example.com", "pw")
    _, token = ApiToken.issue(user)
    port = 18000 + rng.randrange(1000)
    procs = {"web": start_web(port), "worker": start_worker_process(), "sweeper": start_sweeper()}
    starters = {
        "web": lambda: start_web(port),
        "worker": start_worker_process,
        "sweeper": start_sweeper,
    }
    run_ids: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while len(run_ids) < 12 and time.monotonic() < deadline:
            run_id = post_run(port, token)
            if run_id:
                run_ids.append(run_id)
            else:
                time.sleep(0.3)
        assert len(run_ids) == 12, "the web process never came up"
        for _ in range(6):  # six rounds of random SIGKILLs while runs are in flight
            time.sleep(rng.uniform(0.2, 1.2))
            victims = rng.sample(sorted(procs), rng.randint(1, 3))
            for name in victims:
                kill_process_group(procs[name])
            time.sleep(rng.uniform(0.0, 0.5))
            for name in victims:
                procs[name] = starters[name]()
        runs = [wait_for_run(run_id, timeout=90) for run_id in run_ids]
    finally:
        for proc in procs.values():
            kill_process_group(proc)

    assert [r.status for r in runs] == ["succeeded"] * len(runs)
    for run in runs:
        done = Counter(
            RunEvent.objects.filter(run=run, type="step.succeeded").values_list("step", flat=True)
        )
        assert done and max(done.values()) == 1, f"a step completion was recorded twice: {done}"
        assert set(done) >= {
            "prepare",
            "work",
            "nap",
            "item[0]",
            "item[1]",
            "item[2]",
            "flaky",
            "finish",
        }
        succeeded = Counter(
            StepAttempt.objects.filter(run=run, status="succeeded").values_list("step", flat=True)
        )
        assert max(succeeded.values()) == 1
