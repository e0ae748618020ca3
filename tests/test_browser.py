"""The console in real Chromium: log in, start a run that fails then recovers, watch it live.

The web server is a real daphne (``manage.py runserver`` from daphne, static files on)
and a real Dramatiq worker process, both on the test database, with the channel layer on
Redis. Screenshots land in ``test-artifacts/`` (git-ignored) for people to look at.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection, connections
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.runtime import ROOT, kill_process_group, start_worker_process, wait_for_run, worker_env
from workflows import services
from workflows.models import Run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
PASSWORD = "correct-horse-battery"  # noqa: S105

FLAKY = """
name: browser-flaky
description: A call that fails once, waits 1.5 s and succeeds on the retry.
steps:
  - name: prepare
    type: noop
  - name: call
    type: python
    with: {function: "tests.steps:fail_until", args: {succeed_on: 2}}
    on-failure:
      retry: {max-attempts: 2, delay: 1500ms}
  - name: report
    type: python
    with: {function: "tests.steps:slow", args: {seconds: 1}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(port: int, proc: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the web server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the web server did not start")


@pytest.fixture
def server(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """daphne + a worker process on the test database; yields the base URL."""
    # Playwright's sync API keeps an event loop in this thread; the test's own ORM calls
    # are ordinary blocking ones.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    ARTIFACTS.mkdir(exist_ok=True)
    port = _free_port()
    env = worker_env()
    env.update(DEBUG="0", ALLOWED_HOSTS="127.0.0.1,localhost", LOG_LEVEL="WARNING")
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    log = (ARTIFACTS / "browser-server.log").open("wb")
    web = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload", "--insecure"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = start_worker_process(threads=2)
    try:
        _wait_until_up(port, web)
        yield f"http://127.0.0.1:{port}"
    finally:
        kill_process_group(web)
        kill_process_group(worker)
        log.close()
        _wait_for_other_sessions_to_end()


def _wait_for_other_sessions_to_end(seconds: float = 10) -> None:
    """Killed processes' database sessions linger a moment; the test database is dropped
    at the end of the session only when nobody else is connected."""
    sql = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    deadline = time.monotonic() + seconds
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(sql)
            if cursor.fetchone()[0] == 0:
                return
            time.sleep(0.1)


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
        # ORM calls made while Playwright runs use a connection of their own context
        connections.close_all()


@pytest.fixture
def superuser() -> User:
    services.save_workflow(FLAKY)
    return User.objects.create_superuser("root", "root@localhost", PASSWORD)


def _log_in(page: Page, base: str) -> None:
    page.goto(f"{base}/runs/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/runs/"))
    page.fill("input[name=username]", "root")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{base}/runs/")


def _shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _navigations(page: Page) -> int:
    return page.evaluate("performance.getEntriesByType('navigation').length")


def test_watch_a_run_fail_and_recover_without_reloading(
    server: str, browser: Browser, superuser: User
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    _log_in(page, server)

    page.goto(f"{server}/workflows/browser-flaky/")
    page.click("text=Start run of v1")
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}/$"))
    run_id = page.url.rstrip("/").rsplit("/", 1)[1]
    page.evaluate("window.marker = 'still here'")
    badge = page.locator("#run-live .run-status .badge.big")

    # the socket opens, then the retry shows up live
    expect(page.locator("#run-page[data-live]")).to_have_count(1)
    expect(page.locator("#run-live .steps .badge.status-retrying")).to_have_count(1)
    expect(badge).not_to_have_text("succeeded")
    _shot(page, "run-mid")

    expect(badge).to_have_text("succeeded", timeout=45_000)
    assert page.evaluate("window.marker") == "still here"
    assert _navigations(page) == 1
    # the event log grew in place, and progress reached 100 %
    assert page.locator("#event-rows-live tr").count() > 0
    expect(page.locator("#event-rows-live")).to_contain_text("run.succeeded")
    expect(page.locator("#run-live .progress-text")).to_contain_text("100%")
    expect(page.locator("#run-facts")).not_to_contain_text("so far")
    _shot(page, "run-after")

    page.set_viewport_size({"width": 390, "height": 844})
    _shot(page, "run-phone")
    page.set_viewport_size({"width": 1280, "height": 900})

    page.goto(f"{server}/")
    expect(page.locator("#overview-page[data-live]")).to_have_count(1)
    _shot(page, "overview")

    # the runs list updates a row in place when its run changes
    second = services.start_run("browser-flaky")
    page.goto(f"{server}/runs/")
    page.evaluate("window.marker = 'list'")
    row = page.locator(f"#run-row-{second.pk}")
    expect(row).to_be_visible()
    expect(row.locator(".badge")).to_have_text("succeeded", timeout=45_000)
    assert page.evaluate("window.marker") == "list"
    _shot(page, "runs-list")
    page.set_viewport_size({"width": 390, "height": 844})
    _shot(page, "runs-list-phone")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{server}/errors/")
    expect(page.locator("table.errors")).to_contain_text("ConnectionError")
    _shot(page, "errors")
    page.goto(f"{server}/workflows/browser-flaky/")
    expect(page.locator("h1")).to_contain_text("browser-flaky")
    _shot(page, "workflow")
    assert Run.objects.get(pk=run_id).status == "succeeded"


def test_without_a_websocket_the_page_still_tells_the_truth(
    server: str, browser: Browser, superuser: User
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    page.route_web_socket(re.compile(r"/ws/"), lambda ws: ws.close(code=1000))
    _log_in(page, server)

    run = services.start_run("browser-flaky")
    page.goto(f"{server}/runs/{run.pk}/")
    expect(page.locator("#run-page[data-live]")).to_have_count(0)
    expect(page.locator("#run-live .live-off")).to_be_visible()
    _shot(page, "run-no-websocket")

    wait_for_run(run.pk, timeout=45)
    page.reload()
    expect(page.locator("#run-live .run-status .badge.big")).to_have_text("succeeded")
    expect(page.locator("#event-rows")).to_contain_text("run.succeeded")
    _shot(page, "run-no-websocket-after-reload")


def test_artifacts_dir_is_ignored_by_git() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "test-artifacts/x.png"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, os.fspath(Path("test-artifacts"))
