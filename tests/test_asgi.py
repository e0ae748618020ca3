"""The ASGI application serves the console's static files itself, with DEBUG off."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from channels.testing import HttpCommunicator

from flowmend.asgi import application


@pytest.mark.parametrize("path", ["/static/django_htmx/htmx-2.min.js", "/static/flowmend.css"])
def test_static_files_are_served_without_debug(settings, path):
    settings.DEBUG = False

    async def fetch():
        return await HttpCommunicator(application, "GET", path).get_response()

    response = async_to_sync(fetch)()
    assert response["status"] == 200
    assert len(response["body"]) > 1000
