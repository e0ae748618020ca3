"""The ASGI application serves the console's static files itself, with DEBUG off."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from flowmend.asgi import application


async def _get(path: str) -> tuple[int, bytes]:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "headers": [(b"host", b"localhost")], "server": ("localhost", 80),
        "client": ("127.0.0.1", 1234),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []
    requests = iter([{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> dict[str, Any]:
        try:
            return next(requests)
        except StopIteration:
            await asyncio.sleep(60)  # the client stays connected until the response is sent
            return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await application(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


@pytest.mark.parametrize("path", ["/static/django_htmx/htmx-2.min.js", "/static/flowmend.css"])
def test_static_files_are_served_without_debug(settings, path):
    settings.DEBUG = False
    status, body = async_to_sync(_get)(path)
    assert status == 200
    assert len(body) > 1000
