"""Small display helpers for the console pages."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from django import template

register = template.Library()


@register.filter
def ts(value: Any) -> datetime | None:
    """An epoch float from the engine's state document -> an aware datetime."""
    if value is None or value == "":
        return None
    try:
        return datetime.fromtimestamp(float(value), tz=UTC)
    except (TypeError, ValueError, OverflowError):
        return None


def _seconds_text(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    return f"{hours // 24}d {hours % 24}h"


@register.filter
def seconds(value: Any) -> str:
    """A number of seconds (or a timedelta) as a short human duration."""
    if value is None or value == "":
        return "—"
    if isinstance(value, timedelta):
        value = value.total_seconds()
    try:
        return _seconds_text(max(0.0, float(value)))
    except (TypeError, ValueError):
        return "—"


@register.simple_tag
def duration(start: Any, end: Any = None) -> str:
    """Time between two datetimes or epoch floats; a missing end means "so far"."""
    start_dt = start if isinstance(start, datetime) else ts(start)
    if start_dt is None:
        return "—"
    end_dt = end if isinstance(end, datetime) else ts(end)
    if end_dt is None:
        return "—"
    return _seconds_text(max(0.0, (end_dt - start_dt).total_seconds()))


@register.filter
def pretty(value: Any) -> str:
    """JSON, indented for a <pre>."""
    try:
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


@register.filter
def compact(value: Any) -> str:
    """JSON on one line, for table cells."""
    if value is None or value == {}:
        return ""
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


@register.filter
def error_text(error: Any) -> str:
    """An engine error object ``{type, message, ...}`` as one line."""
    if not error:
        return ""
    if isinstance(error, dict):
        kind = error.get("type") or "Error"
        message = error.get("message") or ""
        status = error.get("status")
        text = f"{kind}: {message}" if message else str(kind)
        return f"{text} (HTTP {status})" if status else text
    return str(error)


@register.filter
def without_traceback(value: Any) -> Any:
    """A copy of an error (or event data holding one) without its long traceback."""
    if not isinstance(value, dict):
        return value
    out = {k: v for k, v in value.items() if k != "traceback"}
    if isinstance(out.get("error"), dict):
        out["error"] = {k: v for k, v in out["error"].items() if k != "traceback"}
    return out


@register.filter
def status_label(value: Any) -> str:
    return str(value or "").replace("_", " ")


@register.simple_tag
def open_intervention_count() -> int:
    """For the navigation bar: how many interventions wait for a human."""
    from interventions.models import Intervention

    return Intervention.objects.filter(status="open").count()


@register.filter
def dom_id(value: Any) -> str:
    """A step name as an HTML id that CSS selectors accept: `ship[2]` -> `ship-2-`."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in str(value))


OPTION_HELP = {
    "approve": "let the step succeed; its output is this decision",
    "reject": "fail the step; its on-failure applies",
    "retry": "run the failed step again",
    "skip": "mark the step done with the output given",
    "restore": "go back to the run's newest valid checkpoint; later steps run again",
    "restart": "start a new run from scratch and cancel this one",
    "compensate": "fail the run: on-error handlers run, then completed steps are undone",
    "abort": "stop the run now; nothing is undone",
}
CONFIRM = {"reject", "restore", "restart", "compensate", "abort"}


@register.filter
def option_help(option: str) -> str:
    """What an intervention option does, in one line (shown on its button)."""
    return OPTION_HELP.get(str(option), "")


@register.filter
def needs_confirm(option: str) -> bool:
    return str(option) in CONFIRM
