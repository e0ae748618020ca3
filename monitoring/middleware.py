"""A page, not a blank browser error, when a button's address is opened directly."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


class ActionPageMiddleware:
    """GET on an action URL (e.g. from a copied link) answers 405 with a way back.

    Django's ``require_POST`` answers 405 with an empty body, which browsers show as
    "This page isn't working". The API keeps its JSON answers.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            response.status_code == 405
            and not response.content
            and not request.path.startswith("/api/")
            and request.method in ("GET", "HEAD")
        ):
            back = request.path.rstrip("/").rsplit("/", 1)[0] + "/"
            page = render(
                request,
                "404.html",
                {
                    "message": "This address is an action: it only works from its button, "
                    "so opening it changed nothing.",
                    "back_url": back,
                    "back_label": "Back",
                },
                status=405,
            )
            page["Allow"] = response.get("Allow", "POST")
            return page
        return response
