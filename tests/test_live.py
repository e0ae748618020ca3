"""Live push: the store's listener -> the channel layer (real Redis) -> consumers -> fragments.

Consumers are driven with ``WebsocketCommunicator`` through the whole ASGI application
(origin check, session auth, routing), against real PostgreSQL: ``transactional_db``, so
``on_commit`` hooks fire and the consumers' threads see committed rows.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from flowmend.asgi import application
from monitoring import live
from workflows import auth, services, store
from workflows.models import Run

pytestmark = pytest.mark.django_db(transaction=True)

WORKFLOW = """
name: live-test
steps:
  - name: first
    type: noop
  - name: second
    type: noop
"""


@pytest.fixture(autouse=True)
def _clean_redis() -> None:
    """Start each test with an empty channel-layer database (REDIS_URL's db only)."""
    redis.Redis.from_url(settings.REDIS_URL).flushdb()


@pytest.fixture(autouse=True)
def _short_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Consumers query from a thread pool; close those connections after each call."""
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 0)


@pytest.fixture
def run() -> Run:
    services.save_workflow(WORKFLOW)
    return services.start_run("live-test")


def _user(username: str, role: str | None) -> User:
    user = User.objects.create_user(username, password="pw-" + username)
    if role:
        auth.set_role(user, role)
    return user


def _headers(user: User | None, origin: str = "http://localhost") -> list[tuple[bytes, bytes]]:
    headers = [(b"origin", origin.encode()), (b"host", b"localhost")]
    if user is not None:
        client = Client()
        client.force_login(user)
        session = client.cookies[settings.SESSION_COOKIE_NAME].value
        cookie = f"{settings.SESSION_COOKIE_NAME}={session}; csrftoken={'x' * 32}"
        headers.append((b"cookie", cookie.encode()))
    return headers


def _sync(body: Callable[[], Awaitable[Any]]) -> Any:
    return async_to_sync(body)()


async def _drain(comm: WebsocketCommunicator, seconds: float) -> list[str]:
    """Every text frame that arrives within ``seconds``."""
    frames: list[str] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if await comm.receive_nothing(timeout=min(left, 0.05), interval=0.01):
            continue
        frames.append(await comm.receive_from())
    return frames


async def _wait_for(comm: WebsocketCommunicator, needle: str, seconds: float = 5) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frame = await comm.receive_from(timeout=max(deadline - time.monotonic(), 0.01))
        if needle in frame:
            return frame
    raise AssertionError(f"no frame with {needle!r} within {seconds}s")


# --------------------------------------------------------------------------- access


def test_listener_is_registered() -> None:
    assert live.run_changed in store.run_changed_listeners


def test_channel_layer_is_redis() -> None:
    assert type(get_channel_layer()).__name__ == "RedisChannelLayer"


@pytest.mark.parametrize("who", ["anonymous", "no-role"])
def test_socket_refused_without_read_role(run: Run, who: str) -> None:
    headers = _headers(None if who == "anonymous" else _user("nora", None))

    async def body() -> None:
        comm = WebsocketCommunicator(application, f"/ws/runs/{run.pk}/", headers)
        connected, _ = await comm.connect()
        assert not connected
        await comm.disconnect()

    _sync(body)


def test_socket_refused_from_a_foreign_origin(run: Run) -> None:
    headers = _headers(_user("vera", "viewer"), origin="https://evil.example")

    async def body() -> None:
        comm = WebsocketCommunicator(application, f"/ws/runs/{run.pk}/", headers)
        connected, _ = await comm.connect()
        assert not connected
        await comm.disconnect()

    _sync(body)


# --------------------------------------------------------------------------- run page


def test_viewer_gets_fragments_then_changes(run: Run) -> None:
    headers = _headers(_user("vera", "viewer"))

    async def body() -> None:
        comm = WebsocketCommunicator(application, f"/ws/runs/{run.pk}/?after=0", headers)
        connected, _ = await comm.connect()
        assert connected
        first = "".join(await _drain(comm, 1.5))
        # on (re)connect: the page's fragments and every event after the page's seq
        assert 'id="run-live" hx-swap-oob="true"' in first
        assert 'id="run-facts" hx-swap-oob="true"' in first
        assert '<tbody id="event-rows-live" hx-swap-oob="true">' in first
        assert 'id="event-1"' in first
        assert "Pause</button>" not in first  # a viewer sees no operator buttons

        await _sync_to_thread(lambda: services.pause(run.pk))
        await _wait_for(comm, "status-paused")
        frame = await _wait_for(comm, "run.paused")
        # new events are appended, in a frame of their own (rows parse apart from divs)
        assert frame.startswith(
            '<tbody id="event-rows-live" hx-swap-oob="beforeend:#event-rows-live">'
        )
        await comm.disconnect()

    _sync(body)


def test_operator_fragments_carry_the_pages_csrf_token(run: Run) -> None:
    headers = _headers(_user("otto", "operator"))

    async def body() -> None:
        comm = WebsocketCommunicator(application, f"/ws/runs/{run.pk}/", headers)
        assert (await comm.connect())[0]
        first = await comm.receive_from(timeout=5)
        assert "Pause</button>" in first
        assert 'name="csrfmiddlewaretoken"' in first
        await comm.disconnect()

    _sync(body)


def test_bursts_are_coalesced(run: Run) -> None:
    headers = _headers(_user("vera", "viewer"))
    fresh = Run.objects.get(pk=run.pk)

    async def body() -> None:
        comm = WebsocketCommunicator(application, f"/ws/runs/{run.pk}/", headers)
        assert (await comm.connect())[0]
        await comm.receive_from(timeout=5)
        started = time.monotonic()
        paused = await database_sync_to_async(services.pause)(fresh.pk)  # a real change
        for _ in range(200):  # then 200 changes announced within ~0.2 s
            live.run_changed(paused, paused.state_version)
        frames = await _drain(comm, 1.0 - (time.monotonic() - started))
        assert 1 <= len(frames) <= 5, len(frames)
        await comm.disconnect()

    _sync(body)


def test_publisher_sends_one_message_per_run_per_flush(run: Run) -> None:
    layer = get_channel_layer()

    async def body() -> None:
        channel = await layer.new_channel()
        await layer.group_add(live.run_group(run.pk), channel)
        await layer.group_add(live.DASHBOARD_GROUP, channel)
        for seq in range(200):
            live.publisher.note(str(run.pk), seq)
        got = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                got.append(await _receive(layer, channel, deadline - time.monotonic()))
            except TimeoutError:
                break
        assert {"type": "run.changed", "run_id": str(run.pk), "seq": 199} in got
        assert sum(m["type"] == "run.changed" for m in got) == 1
        assert sum(m["type"] == "dashboard.changed" for m in got) == 1

    _sync(body)


# --------------------------------------------------------------------------- dashboard


def test_runs_list_rows_update(run: Run) -> None:
    headers = _headers(_user("vera", "viewer"))

    async def body() -> None:
        path = "/ws/dashboard/?page=runs&workflow=live-test"
        comm = WebsocketCommunicator(application, path, headers)
        assert (await comm.connect())[0]
        first = await comm.receive_from(timeout=5)
        assert f'id="run-row-{run.pk}" hx-swap-oob="true"' in first
        await _sync_to_thread(lambda: services.cancel(run.pk))
        frame = await _wait_for(comm, "status-cancelled")
        assert f'id="run-row-{run.pk}"' in frame
        await comm.disconnect()

    _sync(body)


def test_overview_updates(run: Run) -> None:
    headers = _headers(_user("vera", "viewer"))

    async def body() -> None:
        comm = WebsocketCommunicator(application, "/ws/dashboard/?page=overview", headers)
        assert (await comm.connect())[0]
        first = await comm.receive_from(timeout=5)
        assert 'id="overview-live" hx-swap-oob="true"' in first
        await _sync_to_thread(lambda: services.cancel(run.pk))
        await _wait_for(comm, "status-cancelled")
        await comm.disconnect()

    _sync(body)


# --------------------------------------------------------------------------- helpers


async def _sync_to_thread(fn: Callable[[], Any]) -> Any:
    from channels.db import database_sync_to_async

    return await database_sync_to_async(fn)()


async def _receive(layer: Any, channel: str, timeout: float) -> dict[str, Any]:
    import asyncio

    return await asyncio.wait_for(layer.receive(channel), max(timeout, 0.01))


def test_embedded_mode_in_memory_layer(run: Run, settings: Any) -> None:
    """Without REDIS_URL the layer is in memory: the flusher sends on the consumers' loop."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    headers = _headers(_user("vera", "viewer"))

    async def body() -> None:
        assert type(get_channel_layer()).__name__ == "InMemoryChannelLayer"
        comm = WebsocketCommunicator(application, f"/ws/runs/{run.pk}/", headers)
        assert (await comm.connect())[0]
        await comm.receive_from(timeout=5)
        await _sync_to_thread(lambda: services.pause(run.pk))
        await _wait_for(comm, "status-paused")
        await comm.disconnect()

    _sync(body)
