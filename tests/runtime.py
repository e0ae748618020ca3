"""Fixtures that run the real thing: Dramatiq workers on the configured broker, the sweeper.

Import them into a test module: ``from tests.runtime import worker, sweeper_thread``.
They need ``transactional_db``: workers run in other threads/processes and only see
committed data.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
from django.conf import settings
from django.db import connection

from workflows import sweeper
from workflows.models import TERMINAL_RUN_STATUSES, Run

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def worker(transactional_db: None) -> Iterator[dramatiq.Worker]:
    broker = dramatiq.get_broker()
    broker.flush_all()
    w = dramatiq.Worker(broker, queues={"flowmend"}, worker_threads=4, worker_timeout=100)
    w.start()
    yield w
    w.stop(timeout=10_000)
    broker.flush_all()


@pytest.fixture
def sweeper_thread(transactional_db: None) -> Iterator[threading.Thread]:
    stop = threading.Event()
    t = threading.Thread(target=sweeper.run_forever, args=(stop, 0.2), daemon=True)
    t.start()
    yield t
    stop.set()
    t.join(5)


def wait_for_run(run_id: object, statuses: set[str] | None = None, timeout: float = 20) -> Run:
    """Poll the database until the run reaches one of ``statuses`` (default: terminal)."""
    wanted = statuses or set(TERMINAL_RUN_STATUSES)
    deadline = time.monotonic() + timeout
    while True:
        run = Run.objects.get(pk=run_id)
        if run.status in wanted:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} is {run.status}, not {sorted(wanted)}: {run.state}")
        time.sleep(0.05)


def worker_env() -> dict[str, str]:
    """Environment for a worker process that uses the test database."""
    db = settings.DATABASES["default"]
    env = dict(os.environ)
    if connection.vendor == "postgresql":
        env["DATABASE_URL"] = (
            f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
        )
    env["FLOWMEND_PYTHON_MODULES"] = ",".join(settings.FLOWMEND_PYTHON_MODULES)
    env["FLOWMEND_LEASE_SECONDS"] = str(settings.FLOWMEND_LEASE_SECONDS)
    env.setdefault("dramatiq_worker_timeout", "100")
    return env


def start_worker_process(threads: int = 2) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dramatiq",
            "flowmend.dramatiq_entry",
            "--processes",
            "1",
            "--threads",
            str(threads),
            "--queues",
            "flowmend",
        ],
        cwd=ROOT,
        env=worker_env(),
        start_new_session=True,
    )


def kill_process_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    proc.wait(10)
