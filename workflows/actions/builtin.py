"""noop, http and python. (sleep and approval are run by the engine itself.)"""

from __future__ import annotations

import importlib
from typing import Any

import httpx
from django.conf import settings

from workflows.actions import StepContext, StepFailure, register


@register("noop")
def noop(params: dict[str, Any], context: StepContext) -> Any:
    return params


def _expected(expect: Any) -> list[tuple[int, int]]:
    """`expect`: a status, a list of statuses, or ranges like "200-299"."""
    if expect is None:
        return [(200, 299)]
    items = expect if isinstance(expect, list) else [expect]
    ranges = []
    for item in items:
        text = str(item)
        if "-" in text:
            lo, hi = text.split("-", 1)
            ranges.append((int(lo), int(hi)))
        else:
            ranges.append((int(text), int(text)))
    return ranges


@register("http")
def http(params: dict[str, Any], context: StepContext) -> Any:
    method = str(params.get("method", "GET")).upper()
    headers = {str(k): str(v) for k, v in (params.get("headers") or {}).items()}
    headers.setdefault("Idempotency-Key", context.idempotency_key)
    timeout = params.get("timeout")
    if isinstance(timeout, str):
        from workflows.spec import parse_duration

        timeout = parse_duration(timeout)
    kwargs: dict[str, Any] = {"headers": headers, "timeout": timeout or 30.0}
    if "json" in params:
        kwargs["json"] = params["json"]
    elif "body" in params:
        body = params["body"]
        kwargs["content"] = body if isinstance(body, str | bytes) else str(body)
    try:
        response = httpx.request(method, str(params["url"]), **kwargs)
    except httpx.TimeoutException as exc:  # the names users write in retry-on
        raise StepFailure("TimeoutError", f"{method} {params['url']}: {exc!r}") from exc
    except httpx.TransportError as exc:  # refused, reset, DNS, TLS...
        raise StepFailure("ConnectionError", f"{method} {params['url']}: {exc!r}") from exc
    ranges = _expected(params.get("expect"))
    if not any(lo <= response.status_code <= hi for lo, hi in ranges):
        raise StepFailure(
            "HTTPStatusError",
            f"{method} {params['url']} answered {response.status_code}: {response.text[:200]}",
            status=response.status_code,
        )
    out: dict[str, Any] = {"status": response.status_code, "headers": dict(response.headers)}
    try:
        out["json"] = response.json()
    except ValueError:
        out["text"] = response.text
    return out


def _allowed(module: str) -> bool:
    return any(
        module == prefix or module.startswith(prefix + ".")
        for prefix in settings.FLOWMEND_PYTHON_MODULES
    )


@register("python")
def python(params: dict[str, Any], context: StepContext) -> Any:
    target = str(params.get("function", ""))
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise StepFailure(
            "ValidationError", f"function must be 'module.path:callable', got {target!r}"
        )
    if not _allowed(module_name):
        raise StepFailure(
            "PermissionError",
            f"module {module_name!r} is not allowed; add it to FLOWMEND_PYTHON_MODULES "
            f"(now: {', '.join(settings.FLOWMEND_PYTHON_MODULES) or 'empty'})",
        )
    fn = getattr(importlib.import_module(module_name), attr)
    return fn(params.get("args", {}), context)
