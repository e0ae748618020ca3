"""Websocket consumers for the live pages: ``ws/runs/<id>/`` and ``ws/dashboard/``.

Each socket belongs to one page. On a change message from ``monitoring.live`` it marks
itself dirty and renders at most once per ``min_interval``: the page's fragments (Django
``{% partialdef %}`` partials of the page's own template) with ``hx-swap-oob``, sent as
one text frame that htmx's websocket extension swaps in. A fragment is sent only when
its HTML changed since the last frame. Access is checked in ``connect()``; the origin is
checked by ``AllowedHostsOriginValidator`` in ``flowmend.asgi``.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.http import HttpRequest, QueryDict
from django.middleware.csrf import get_token
from django.template.loader import render_to_string
from django.utils import timezone

from monitoring import live
from workflows import auth

CSRF_VALUE = re.compile(r'name="csrfmiddlewaretoken" value="[^"]*"')
EVENT_PUSH_LIMIT = 500
REJECTED = 4403  # an application close code: the browser sees a failed handshake


def _request_for(scope: dict[str, Any]) -> HttpRequest:
    """A request standing in for the page's own, so fragments render as the page does.

    The browser's CSRF cookie is reused so forms in pushed fragments post with a valid
    token.
    """
    request = HttpRequest()
    request.user = scope.get("user")
    request.path = scope.get("path", "/")
    headers = dict(scope.get("headers", []))
    request.META["HTTP_HOST"] = headers.get(b"host", b"localhost").decode("latin-1")
    request.META["SERVER_NAME"] = "localhost"
    request.META["SERVER_PORT"] = "80"
    csrf = scope.get("cookies", {}).get("csrftoken")
    if csrf:
        request.META["CSRF_COOKIE"] = csrf
    return request


_shared_lock = threading.Lock()
_shared: dict[tuple[Any, ...], tuple[float, Any]] = {}


def shared_render(key: tuple[Any, ...], ttl: float | None, render: Any) -> Any:
    """Render once for every socket of this process that shows the same thing.

    ``key`` names what is shown and to whom (the role decides the buttons); with ``ttl``
    None the key itself carries the version (e.g. a run's state version). Measured:
    25 overview sockets each rendering the same overview took a quarter of the render
    thread (bench/live.py).
    """
    now = time.monotonic()
    with _shared_lock:
        hit = _shared.get(key)
        if hit is not None and (ttl is None or now - hit[0] < ttl):
            return hit[1]
    value = render()
    with _shared_lock:
        if len(_shared) > 5000:
            _shared.clear()
        _shared[key] = (now, value)
    return value


def _same(a: str | None, b: str) -> bool:
    """Equal but for the per-render CSRF mask."""
    return a is not None and CSRF_VALUE.sub("", a) == CSRF_VALUE.sub("", b)


class LiveConsumer(AsyncWebsocketConsumer):
    """Authorization, group membership and coalesced rendering for one live page."""

    min_interval = 0.25

    def group_names(self) -> list[str]:
        raise NotImplementedError

    def render_update(self, first: bool) -> list[str]:
        """Sync (runs in a thread): the text frames to send (empty ones are skipped).

        Table rows go in a frame of their own: htmx parses each frame inside a
        ``<template>``, where a ``<tr>`` after a ``<div>`` would be dropped.
        """
        raise NotImplementedError

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not await database_sync_to_async(auth.can)(user, "read"):
            await self.close(code=REJECTED)
            return
        self.query = QueryDict(self.scope.get("query_string", b"").decode("latin-1"))
        self.request = _request_for(self.scope)
        self.role = await database_sync_to_async(auth.role_of)(user)
        self.csrf = f'name="csrfmiddlewaretoken" value="{get_token(self.request)}"'
        self.sent: dict[str, str] = {}
        self.dirty = False
        self.last_render = 0.0
        self.render_task: asyncio.Task[None] | None = None
        self.joined = self.group_names()
        loop = asyncio.get_running_loop()
        live.publisher.home_loop = loop
        for group in self.joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        await self.render_and_send(first=True)

    async def disconnect(self, code: int) -> None:
        if getattr(self, "render_task", None) is not None:
            self.render_task.cancel()
        for group in getattr(self, "joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """The pages send nothing; ignore whatever arrives."""

    async def changed(self) -> None:
        self.dirty = True
        if self.render_task is None or self.render_task.done():
            self.render_task = asyncio.create_task(self._render_soon())

    async def _render_soon(self) -> None:
        loop = asyncio.get_running_loop()
        while self.dirty:
            wait = self.last_render + self.min_interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.dirty = False
            await self.render_and_send(first=False)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Change notices skip Channels' per-message `close_old_connections` hop to the one
        shared sync thread: they only mark the socket dirty (measured: with 50 sockets
        that hop alone kept the consumers from reading the channel layer fast enough)."""
        if message.get("type") in ("run.changed", "dashboard.changed"):
            handler = getattr(self, message["type"].replace(".", "_"))
            await handler(message)
            return
        await super().dispatch(message)

    async def render_and_send(self, first: bool) -> None:
        self.last_render = asyncio.get_running_loop().time()
        frames = await database_sync_to_async(self.render_update)(first)
        for text in frames:
            if text:
                await self.send(text_data=text)

    def fragment(self, key: str, html: str) -> str:
        """``html`` if it differs from what this socket last sent under ``key``."""
        html = CSRF_VALUE.sub(self.csrf, html)  # a shared render carries another's token
        if _same(self.sent.get(key), html):
            return ""
        self.sent[key] = html
        return html


# --------------------------------------------------------------------------- run page

RUN_PARTIALS = ("facts", "steps", "graph", "interventions", "outcome")


class RunConsumer(LiveConsumer):
    """``ws/runs/<id>/?after=SEQ``: the run page's fragments and its new events."""

    def group_names(self) -> list[str]:
        self.run_id = str(self.scope["url_route"]["kwargs"]["run_id"])
        after = self.query.get("after", "")
        self.after_seq = int(after) if after.isdigit() else None
        self.base_seq = self.after_seq
        return [live.run_group(self.run_id)]

    async def run_changed(self, message: dict[str, Any]) -> None:
        await self.changed()

    def render_update(self, first: bool) -> list[str]:
        from monitoring import views
        from workflows import services

        try:
            run = services.get_run(self.run_id)
        except services.NotFound:
            return []

        def render_partials() -> tuple[dict[str, Any], list[tuple[str, str]]]:
            context = views._run_context(self.request, run)
            context.update(
                oob=True,
                interventions=run.interventions.filter(status="open"),
                restarts=run.restarts.all()[:20],
            )
            return context, [(name, self._partial(name, context)) for name in RUN_PARTIALS]

        key = ("run", str(run.pk), run.state_version, run.event_seq, self.role)
        context, rendered = shared_render(key, None, render_partials)
        parts = [self.fragment(name, html) for name, html in rendered]
        return ["".join(parts), self._events(run, context, first)]

    def _partial(self, name: str, context: dict[str, Any]) -> str:
        return render_to_string(f"runs/detail.html#{name}", context, request=self.request)

    def _events(self, run: Any, context: dict[str, Any], first: bool) -> str:
        """On (re)connect: every event after the page's seq; later: only the new ones."""
        if first and self.base_seq is None:
            self.after_seq = run.event_seq  # no seq given: follow from now on
            return ""
        start = self.base_seq if first else self.after_seq
        events = list(run.events.filter(seq__gt=start).order_by("seq")[:EVENT_PUSH_LIMIT])
        if not events and not first:
            return ""
        if events:
            self.after_seq = events[-1].seq
        oob = "true" if first else "beforeend:#event-rows-live"
        return self._partial("events-live", {**context, "live_events": events, "oob": oob})


# --------------------------------------------------------------------------- dashboard


class DashboardConsumer(LiveConsumer):
    """``ws/dashboard/?page=overview`` or ``?page=runs&<the list's filters>``."""

    def group_names(self) -> list[str]:
        self.page = self.query.get("page", "overview")
        self.min_interval = 1.0 if self.page == "overview" else 0.25
        self.changed_ids: set[str] = set()
        self.visible: set[str] | None = None
        return [live.DASHBOARD_GROUP]

    async def dashboard_changed(self, message: dict[str, Any]) -> None:
        self.changed_ids.update(message.get("run_ids", []))
        await self.changed()

    def render_update(self, first: bool) -> list[str]:
        if self.page == "runs":
            return [self._run_rows(first)]
        return [self._overview()]

    def _overview(self) -> str:
        from monitoring import views

        def render() -> str:
            context = {**views.overview_context(), "oob": True}
            return render_to_string("overview.html#live", context, request=self.request)

        html = shared_render(("overview", self.role), self.min_interval, render)
        return self.fragment("overview", html)

    def _run_rows(self, first: bool) -> str:
        """The rows of the page's runs that changed (the page keeps its rows and order)."""
        from monitoring import run_filters
        from workflows.models import Run

        if first:
            runs, _ = run_filters.parse(self.query).page()
            self.visible = {str(r.pk) for r in runs}
            self.changed_ids = set(self.visible)
        ids, self.changed_ids = self.changed_ids & (self.visible or set()), set()
        if not ids:
            return ""
        context = {"oob": True, "selectable": True, "now": timezone.now()}
        parts = []
        for run in Run.objects.filter(pk__in=ids):
            html = shared_render(
                ("row", str(run.pk), run.state_version, run.status, self.role),
                None,
                lambda run=run: render_to_string(
                    "runs/list.html#row", {**context, "run": run}, request=self.request
                ),
            )
            parts.append(self.fragment(str(run.pk), html))
        return "".join(parts)
