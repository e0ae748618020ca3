"""The runs list's filters and cursor, shared by the page, its bulk actions and its socket.

Query parameters: ``workflow``, ``status`` (repeatable), ``from`` and ``to`` (an ISO date
or date-time, or a span back from now such as ``1h``, ``30m``, ``7d``), ``q`` (run id
prefix, workflow name or error message), ``fingerprint`` and ``step`` (runs with a
recorded error of that group or at that step), ``after`` (the cursor). A value that does
not parse is ignored with a note; the list never fails on its query string.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.db.models import CharField, Q, QuerySet
from django.db.models.functions import Cast
from django.utils import timezone

from workflows.models import ErrorRecord, Run, RunStatus

PAGE_SIZE = 50
WORKFLOW_NAME_RE = re.compile(r"^[a-z0-9_-]{1,100}$")
SPAN_RE = re.compile(r"^(\d{1,5})([mhd])$")
FINGERPRINT_RE = re.compile(r"^[0-9a-f]{6,64}$")
RUN_ID_PREFIX_RE = re.compile(r"^[0-9a-f-]{4,36}$")
SPAN_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


@dataclass
class RunFilter:
    workflow: str = ""
    statuses: list[str] = field(default_factory=list)
    since: datetime | None = None
    until: datetime | None = None
    since_text: str = ""
    until_text: str = ""
    q: str = ""
    fingerprint: str = ""
    step: str = ""
    cursor: tuple[datetime, uuid.UUID] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return bool(self.params())

    def queryset(self) -> QuerySet[Run]:
        qs = Run.objects.all()
        if self.workflow:
            qs = qs.filter(workflow_name=self.workflow)
        if self.statuses:
            qs = qs.filter(status__in=self.statuses)
        if self.since:
            qs = qs.filter(created_at__gte=self.since)
        if self.until:
            qs = qs.filter(created_at__lt=self.until)
        if self.fingerprint:
            errors = ErrorRecord.objects.filter(fingerprint__startswith=self.fingerprint)
            qs = qs.filter(pk__in=errors.values("run_id"))
        if self.step:
            qs = qs.filter(pk__in=ErrorRecord.objects.filter(step=self.step).values("run_id"))
        if self.q:
            qs = self._search(qs)
        return qs.order_by("-created_at", "-id")

    def _search(self, qs: QuerySet[Run]) -> QuerySet[Run]:
        text = Q(workflow_name__icontains=self.q) | Q(error__message__icontains=self.q)
        if RUN_ID_PREFIX_RE.match(self.q.lower()):
            qs = qs.annotate(id_text=Cast("id", output_field=CharField()))
            text |= Q(id_text__startswith=self.q.lower())
        return qs.filter(text)

    def page(self, size: int = PAGE_SIZE) -> tuple[list[Run], str]:
        """One page of runs, newest first, and the cursor of the next page ('' at the end)."""
        qs = self.queryset()
        if self.cursor:
            at, pk = self.cursor
            qs = qs.filter(Q(created_at__lt=at) | Q(created_at=at, id__lt=pk))
        runs = list(qs[: size + 1])
        if len(runs) <= size:
            return runs, ""
        last = runs[size - 1]
        return runs[:size], f"{last.created_at.isoformat()}~{last.pk}"

    def params(self, with_cursor: bool = False) -> list[tuple[str, str]]:
        """The filter as query parameters (for links, hidden fields and the socket URL)."""
        items: list[tuple[str, str]] = []
        if self.workflow:
            items.append(("workflow", self.workflow))
        items += [("status", s) for s in self.statuses]
        for name, value in (
            ("from", self.since_text),
            ("to", self.until_text),
            ("q", self.q),
            ("fingerprint", self.fingerprint),
            ("step", self.step),
        ):
            if value:
                items.append((name, value))
        if with_cursor and self.cursor:
            items.append(("after", f"{self.cursor[0].isoformat()}~{self.cursor[1]}"))
        return items

    def query_string(self, **extra: str) -> str:
        return urlencode(self.params() + list(extra.items()))


def parse(params: Any) -> RunFilter:
    """A ``RunFilter`` from a QueryDict (GET or POST); bad values become notes."""
    f = RunFilter()
    workflow = params.get("workflow", "").strip()
    if workflow and WORKFLOW_NAME_RE.match(workflow):
        f.workflow = workflow
    elif workflow:
        f.notes.append(f"Ignored workflow filter {workflow[:50]!r}: not a workflow name.")
    for status in params.getlist("status"):
        status = status.strip()
        if status in RunStatus.values:
            if status not in f.statuses:
                f.statuses.append(status)
        elif status:
            f.notes.append(f"Ignored status filter {status[:50]!r}: not a run status.")
    f.since, f.since_text = _time(params.get("from", ""), "from", f.notes)
    f.until, f.until_text = _time(params.get("to", ""), "to", f.notes)
    f.q = params.get("q", "").strip()[:200]
    fingerprint = params.get("fingerprint", "").strip().lower()
    if fingerprint and FINGERPRINT_RE.match(fingerprint):
        f.fingerprint = fingerprint
    elif fingerprint:
        f.notes.append(f"Ignored fingerprint filter {fingerprint[:50]!r}: not an error group.")
    f.step = params.get("step", "").strip()[:250]
    f.cursor = _cursor(params.get("after", "").strip(), f.notes)
    return f


def _time(text: str, name: str, notes: list[str]) -> tuple[datetime | None, str]:
    text = text.strip()
    if not text:
        return None, ""
    span = SPAN_RE.match(text)
    if span:
        delta = timedelta(**{SPAN_UNITS[span.group(2)]: int(span.group(1))})
        return timezone.now() - delta, text
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        notes.append(
            f"Ignored {name!r} time {text[:40]!r}: use a date like 2026-01-31, "
            "a date and time like 2026-01-31T14:00, or a span like 1h."
        )
        return None, ""
    if timezone.is_naive(value):
        value = timezone.make_aware(value, timezone.get_default_timezone())
    return value, text


def _cursor(text: str, notes: list[str]) -> tuple[datetime, uuid.UUID] | None:
    if not text:
        return None
    try:
        at_text, _, pk_text = text.partition("~")
        at = datetime.fromisoformat(at_text)
        if timezone.is_naive(at):
            raise ValueError("naive")
        return at, uuid.UUID(pk_text)
    except ValueError:
        notes.append("Ignored a page cursor that does not parse: showing the first page.")
        return None
