"""The JSON API under ``/api/v1/`` (CONTRACT §3): thin over ``workflows.services``.

Auth: ``Authorization: Bearer <token>`` (``manage.py apitoken``), or a logged-in Django
session (with CSRF on unsafe methods). Every 4xx answer is
``{"error": "...", "errors": [{"path": ..., "message": ...}]}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any

import yaml
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from ninja import NinjaAPI, Query, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser
from ninja.security import HttpBearer, SessionAuth
from pydantic import ConfigDict

from interventions.models import Intervention
from workflows import auth, serializers, services
from workflows.models import (
    ApiToken,
    Checkpoint,
    ErrorRecord,
    Run,
    RunEvent,
    RunStatus,
    WorkflowDefinition,
)
from workflows.services import NotFound, ServiceError

MAX_LIMIT = 500
TOKEN_TOUCH_SECONDS = 60


# --------------------------------------------------------------------------- auth


class TokenAuth(HttpBearer):
    """A bearer token from ``manage.py apitoken``. A bad token is a 401, never a fallback."""

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        found = ApiToken.lookup(token.strip()) if token.strip() else None
        if found is None or not found.user.is_active:
            raise AuthenticationError()
        now = timezone.now()
        if (
            found.last_used_at is None
            or (now - found.last_used_at).total_seconds() > TOKEN_TOUCH_SECONDS
        ):
            ApiToken.objects.filter(pk=found.pk).update(last_used_at=now)
        request.user = found.user
        return found.user


class LoggedInSession(SessionAuth):
    """The browser's Django session, CSRF-checked; without a logged-in session it steps
    aside, so a request with no credentials at all is a 401, not a CSRF 403."""

    def _get_key(self, request: HttpRequest) -> str | None:
        if not request.user.is_authenticated:
            return None
        return super()._get_key(request)


class BadJSON(Exception):
    pass


class StrictJSONParser(Parser):
    """JSON bodies; a form post (e.g. an empty ``POST``) counts as its fields."""

    FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")

    def parse_body(self, request: HttpRequest) -> Any:
        if request.content_type in self.FORMS:
            return request.POST.dict()
        try:
            return json.loads(request.body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadJSON(str(exc)) from exc


api = NinjaAPI(
    title="Flowmend",
    version="1",
    description="Durable workflows: save them, run them, watch and repair runs.",
    auth=[TokenAuth(), LoggedInSession()],
    parser=StrictJSONParser(),
)


def _user(request: HttpRequest) -> Any:
    return getattr(request, "auth", None) or request.user


def _need(request: HttpRequest, action: str) -> Any:
    user = _user(request)
    if not auth.can(user, action):
        raise ServiceError(403, auth.refusal(user, action))
    return user


# --------------------------------------------------------------------------- errors


def _problem(
    request: HttpRequest, status: int, error: str, errors: list | None = None
) -> HttpResponse:
    return api.create_response(request, {"error": error, "errors": errors or []}, status=status)


def _loc_path(loc: Any) -> str:
    parts = list(loc or ())
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form", "file"):
        source = parts.pop(0)
        if source == "body" and parts:
            parts.pop(0)  # the view parameter's name
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "body"


@api.exception_handler(ServiceError)
def _service_error(request: HttpRequest, exc: ServiceError) -> HttpResponse:
    return _problem(request, exc.status, exc.message, exc.errors)


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    errors = []
    for e in exc.errors:
        message = str(e.get("msg", "is not valid"))
        if e.get("type") == "missing":
            message = "required"
        elif e.get("type") == "extra_forbidden":
            message = "unknown key"
        errors.append({"path": _loc_path(e.get("loc")), "message": message})
    return _problem(request, 400, "the request is not valid", errors)


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    response = _problem(request, 401, "authentication required")
    response["WWW-Authenticate"] = 'Bearer realm="flowmend"'
    return response


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if isinstance(exc.__cause__, BadJSON):
        return _problem(
            request,
            400,
            "the request body is not valid JSON",
            [{"path": "body", "message": str(exc.__cause__)}],
        )
    return _problem(request, exc.status_code, str(exc.message))


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return _problem(request, 404, str(exc) or "not found")


def _ok(request: HttpRequest, data: Any, status: int = 200) -> HttpResponse:
    return api.create_response(request, data, status=status)


# --------------------------------------------------------------------------- lookups


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFound(f"{what} {value} does not exist") from None


def _run(run_id: str) -> Run:
    pk = _uuid(run_id, "run")
    run = Run.objects.select_related("definition").filter(pk=pk).first()
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    return run


def _run_exists(run_id: str) -> uuid.UUID:
    pk = _uuid(run_id, "run")
    if not Run.objects.filter(pk=pk).exists():
        raise NotFound(f"run {run_id} does not exist")
    return pk


def _intervention(intervention_id: str) -> Intervention:
    try:
        pk = int(intervention_id)
    except ValueError:
        raise NotFound(f"intervention {intervention_id} does not exist") from None
    found = Intervention.objects.select_related("decided_by").filter(pk=pk).first()
    if found is None:
        raise NotFound(f"intervention {intervention_id} does not exist")
    return found


def _limit(value: int, default_max: int = MAX_LIMIT) -> int:
    if value < 1:
        raise ServiceError(
            400, "limit must be >= 1", [{"path": "limit", "message": "must be >= 1"}]
        )
    return min(value, default_max)


def _run_answer(request: HttpRequest, run: Run, status: int = 200) -> HttpResponse:
    fresh = Run.objects.select_related("definition").get(pk=run.pk)
    return _ok(request, serializers.run_detail(fresh), status)


# --------------------------------------------------------------------------- schemas


class _Body(Schema):
    model_config = ConfigDict(extra="forbid")


class StartRunIn(_Body):
    workflow: str
    version: int | None = None
    input: Any = None
    faults: list[dict[str, Any]] | None = None


class SkipIn(_Body):
    output: Any = None


class RestoreIn(_Body):
    checkpoint: int


class RestartIn(_Body):
    input: Any = None


class ResumeFromIn(_Body):
    dry_run: bool = False


class BreakpointIn(_Body):
    step: str
    enabled: bool = True


class MigrateIn(_Body):
    version: int


class DecideIn(_Body):
    action: str
    checkpoint: int | None = None
    output: Any = None
    comment: str = ""


# --------------------------------------------------------------------------- workflows


@api.post(
    "/workflows",
    tags=["workflows"],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/yaml": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "object"}},
            },
        }
    },
)
def save_workflow(request: HttpRequest) -> HttpResponse:
    """Save a workflow (YAML or JSON). 201: a new version; 200: same as the latest."""
    user = _need(request, "save_workflow")
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise ServiceError(
            400, "the workflow is not valid", [{"path": "(text)", "message": "must be UTF-8 text"}]
        ) from None
    if not text.strip():
        raise ServiceError(
            400,
            "the workflow is not valid",
            [
                {
                    "path": "(text)",
                    "message": "is empty; send the workflow's YAML or JSON as the request body",
                }
            ],
        )
    definition, created = services.save_workflow(text, request.content_type or None, user)
    return _ok(request, serializers.workflow_saved(definition, created), 201 if created else 200)


@api.get("/workflows", tags=["workflows"])
def list_workflows(request: HttpRequest) -> HttpResponse:
    _need(request, "read")
    latest: dict[str, WorkflowDefinition] = {}
    counts: dict[str, int] = {}
    for d in WorkflowDefinition.objects.order_by("name", "-version"):
        latest.setdefault(d.name, d)
        counts[d.name] = counts.get(d.name, 0) + 1
    items = [
        {
            "name": name,
            "latest_version": d.version,
            "description": d.description,
            "checksum": d.checksum,
            "updated_at": d.created_at,
            "versions": counts[name],
        }
        for name, d in latest.items()
    ]
    return _ok(request, {"items": items})


@api.get("/workflows/{name}", tags=["workflows"])
def get_workflow(request: HttpRequest, name: str) -> HttpResponse:
    _need(request, "read")
    versions = list(
        WorkflowDefinition.objects.select_related("created_by")
        .filter(name=name)
        .order_by("-version")
    )
    if not versions:
        raise NotFound(f"workflow {name!r} does not exist")
    return _ok(request, serializers.workflow(versions))


# --------------------------------------------------------------------------- runs


@api.post("/runs", tags=["runs"])
def start_run(request: HttpRequest, payload: StartRunIn) -> HttpResponse:
    user = _need(request, "start")
    if payload.faults and not auth.can(user, "inject_faults"):
        raise ServiceError(403, auth.refusal(user, "inject_faults"))
    run = services.start_run(payload.workflow, payload.version, payload.input, payload.faults, user)
    return _ok(request, {"id": str(run.pk), "status": run.status}, 201)


def _encode_cursor(run: Run) -> str:
    raw = json.dumps([run.created_at.isoformat(), str(run.pk)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, pk = json.loads(raw)
        at = parse_datetime(created)
        if at is None:
            raise ValueError(created)
        return at, uuid.UUID(pk)
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise ServiceError(
            400,
            "the cursor is not valid",
            [{"path": "cursor", "message": "use next_cursor of a previous page"}],
        ) from None


def _statuses(value: str | None) -> list[str]:
    if not value:
        return []
    wanted = [s.strip() for s in value.split(",") if s.strip()]
    known = set(RunStatus.values)
    bad = [s for s in wanted if s not in known]
    if bad:
        raise ServiceError(
            400,
            f"unknown run status {bad[0]!r}",
            [{"path": "status", "message": f"must be one of {', '.join(RunStatus.values)}"}],
        )
    return wanted


@api.get("/runs", tags=["runs"])
def list_runs(
    request: HttpRequest,
    status: str | None = None,
    workflow: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> HttpResponse:
    """Newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    _need(request, "read")
    size = _limit(limit)
    qs = Run.objects.order_by("-created_at", "-id").defer("faults")
    statuses = _statuses(status)
    if statuses:
        qs = qs.filter(status__in=statuses)
    if workflow:
        qs = qs.filter(workflow_name=workflow)
    if cursor:
        at, pk = _decode_cursor(cursor)
        qs = qs.filter(Q(created_at__lt=at) | Q(created_at=at, id__lt=pk))
    page = list(qs[: size + 1])
    more = len(page) > size
    page = page[:size]
    return _ok(
        request,
        {
            "items": [serializers.run_summary(r) for r in page],
            "next_cursor": _encode_cursor(page[-1]) if more else None,
        },
    )


@api.get("/runs/{run_id}", tags=["runs"])
def get_run(request: HttpRequest, run_id: str) -> HttpResponse:
    _need(request, "read")
    return _ok(request, serializers.run_detail(_run(run_id)))


@api.get("/runs/{run_id}/events", tags=["runs"])
def run_events(
    request: HttpRequest, run_id: str, after: int = 0, limit: int = 1000
) -> HttpResponse:
    """Events with ``seq`` greater than ``after``, oldest first."""
    _need(request, "read")
    pk = _run_exists(run_id)
    size = _limit(limit, 10_000)
    events = RunEvent.objects.filter(run_id=pk, seq__gt=after).order_by("seq")[:size]
    return _ok(request, {"events": [serializers.event(e) for e in events]})


@api.get("/runs/{run_id}/checkpoints", tags=["runs"])
def run_checkpoints(request: HttpRequest, run_id: str) -> HttpResponse:
    _need(request, "read")
    pk = _run_exists(run_id)
    items = Checkpoint.objects.filter(run_id=pk).defer("data").order_by("-created_at", "-id")
    return _ok(request, {"items": [serializers.checkpoint(c) for c in items]})


@api.get("/runs/{run_id}/errors", tags=["runs"])
def run_errors(request: HttpRequest, run_id: str) -> HttpResponse:
    _need(request, "read")
    pk = _run_exists(run_id)
    items = ErrorRecord.objects.filter(run_id=pk).defer("traceback").order_by("created_at", "id")
    return _ok(request, {"items": [serializers.error(e) for e in items]})


@api.post("/runs/{run_id}/pause", tags=["runs"])
def pause_run(request: HttpRequest, run_id: str) -> HttpResponse:
    user = _need(request, "pause")
    return _run_answer(request, services.pause(_run_exists(run_id), user))


@api.post("/runs/{run_id}/resume", tags=["runs"])
def resume_run(request: HttpRequest, run_id: str) -> HttpResponse:
    user = _need(request, "resume")
    return _run_answer(request, services.resume(_run_exists(run_id), user))


@api.post("/runs/{run_id}/cancel", tags=["runs"])
def cancel_run(request: HttpRequest, run_id: str) -> HttpResponse:
    user = _need(request, "cancel")
    return _run_answer(request, services.cancel(_run_exists(run_id), user))


@api.post("/runs/{run_id}/restart", tags=["runs"])
def restart_run(
    request: HttpRequest, run_id: str, payload: RestartIn | None = None
) -> HttpResponse:
    """A new run of the same workflow version from a clean state, with the same input or
    ``input`` (edited); the old run records ``run.restarted``. The answer is the new run."""
    user = _need(request, "restart")
    data = payload.input if payload is not None else None
    return _run_answer(request, services.restart(_run_exists(run_id), user, data))


@api.post("/runs/{run_id}/restore", tags=["runs"])
def restore_run(request: HttpRequest, run_id: str, payload: RestoreIn) -> HttpResponse:
    """Resume the run from one of its checkpoints."""
    user = _need(request, "restore")
    pk = _run_exists(run_id)
    return _run_answer(request, services.restore(pk, payload.checkpoint, user))


@api.post("/runs/{run_id}/steps/{step}/retry", tags=["runs"])
def retry_step(request: HttpRequest, run_id: str, step: str) -> HttpResponse:
    user = _need(request, "retry")
    return _run_answer(request, services.retry_step(_run_exists(run_id), step, user))


@api.post("/runs/{run_id}/steps/{step}/skip", tags=["runs"])
def skip_step(
    request: HttpRequest, run_id: str, step: str, payload: SkipIn | None = None
) -> HttpResponse:
    """Mark the step skipped; ``output`` (optional) stands in for its output."""
    user = _need(request, "skip")
    output = payload.output if payload is not None else None
    return _run_answer(request, services.skip_step(_run_exists(run_id), step, output, user))


# --------------------------------------------------------------------------- recovery


EXPORT_FORMATS = ("json", "yaml")


def _checkpoint_of(run_pk: uuid.UUID, checkpoint_id: str) -> Checkpoint:
    try:
        pk = int(checkpoint_id)
    except ValueError:
        raise NotFound(f"checkpoint {checkpoint_id} does not exist") from None
    found = Checkpoint.objects.filter(pk=pk, run_id=run_pk).first()
    if found is None:
        raise NotFound(f"checkpoint {checkpoint_id} does not exist in run {run_pk}")
    return found


def _export(value: Any, fmt: str, filename: str) -> HttpResponse:
    """A download (Content-Disposition: attachment) of ``value`` as JSON or YAML."""
    if fmt not in EXPORT_FORMATS:
        raise ServiceError(
            400,
            f"unknown export format {fmt[:20]!r}",
            [{"path": "format", "message": "must be json or yaml"}],
        )
    if fmt == "yaml":
        text = yaml.safe_dump(value, sort_keys=False, allow_unicode=True)
        content_type = "application/yaml; charset=utf-8"
    else:
        text = json.dumps(value, indent=2, ensure_ascii=False)
        content_type = "application/json; charset=utf-8"
    response = HttpResponse(text, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}.{fmt}"'
    return response


@api.get("/runs/{run_id}/steps/{step}/resume-from", tags=["recovery"])
def preview_resume_from(request: HttpRequest, run_id: str, step: str) -> HttpResponse:
    """What resuming from ``step`` would do: ``{run_again: [...], kept: [...]}``."""
    _need(request, "read")
    return _ok(request, services.preview_resume_from(_run_exists(run_id), step))


@api.post("/runs/{run_id}/steps/{step}/resume-from", tags=["recovery"])
def resume_from(
    request: HttpRequest, run_id: str, step: str, payload: ResumeFromIn | None = None
) -> HttpResponse:
    """Run ``step`` and everything after it again, keeping the results before it.
    ``{"dry_run": true}`` only answers the preview."""
    if payload is not None and payload.dry_run:
        _need(request, "read")
        return _ok(request, services.preview_resume_from(_run_exists(run_id), step))
    user = _need(request, "resume_from")
    return _run_answer(request, services.resume_from(_run_exists(run_id), step, user))


@api.get("/runs/{run_id}/breakpoints", tags=["recovery"])
def list_breakpoints(request: HttpRequest, run_id: str) -> HttpResponse:
    _need(request, "read")
    run = _run(run_id)
    return _ok(request, {"items": list(run.state.get("breakpoints", []))})


@api.post("/runs/{run_id}/breakpoints", tags=["recovery"])
def set_breakpoint(request: HttpRequest, run_id: str, payload: BreakpointIn) -> HttpResponse:
    """Pause the run just before ``step`` starts; ``enabled: false`` removes the breakpoint."""
    user = _need(request, "breakpoint")
    pk = _run_exists(run_id)
    return _run_answer(request, services.set_breakpoint(pk, payload.step, payload.enabled, user))


@api.post("/runs/{run_id}/checkpoints", tags=["recovery"])
def take_checkpoint(request: HttpRequest, run_id: str) -> HttpResponse:
    """Take a manual checkpoint of the run's current state. 201: the checkpoint."""
    user = _need(request, "checkpoint")
    checkpoint = services.take_checkpoint(_run_exists(run_id), user)
    return _ok(request, serializers.checkpoint(checkpoint), 201)


@api.get("/runs/{run_id}/checkpoints/{checkpoint_id}", tags=["recovery"])
def get_checkpoint(request: HttpRequest, run_id: str, checkpoint_id: str) -> HttpResponse:
    """The checkpoint's metadata and its verified state (409 when it is corrupt)."""
    _need(request, "read")
    checkpoint = _checkpoint_of(_run_exists(run_id), checkpoint_id)
    state = services.checkpoint_state(checkpoint.run_id, checkpoint.pk)
    checkpoint.refresh_from_db(fields=["valid"])
    return _ok(
        request,
        {
            **serializers.checkpoint(checkpoint),
            "workflow_version": checkpoint.workflow_version,
            "schema_version": checkpoint.schema_version,
            "state": state,
        },
    )


@api.get("/runs/{run_id}/checkpoints/{checkpoint_id}/export", tags=["recovery"])
def export_checkpoint(
    request: HttpRequest, run_id: str, checkpoint_id: str, format: str = "json"
) -> HttpResponse:
    """Download the checkpoint's state as JSON or YAML."""
    _need(request, "read")
    checkpoint = _checkpoint_of(_run_exists(run_id), checkpoint_id)
    if format not in EXPORT_FORMATS:
        _export(None, format, "")  # raises the 400
    state = services.checkpoint_state(checkpoint.run_id, checkpoint.pk)
    return _export(state, format, f"run-{checkpoint.run_id}-checkpoint-{checkpoint.pk}")


@api.get("/runs/{run_id}/state/export", tags=["recovery"])
def export_state(request: HttpRequest, run_id: str, format: str = "json") -> HttpResponse:
    """Download the run's current state as JSON or YAML."""
    _need(request, "read")
    run = _run(run_id)
    return _export(run.state, format, f"run-{run.pk}-state-v{run.state_version}")


@api.get("/runs/{run_id}/history", tags=["recovery"])
def state_history(request: HttpRequest, run_id: str) -> HttpResponse:
    """Each state version: what changed it, by whom or what, and from which version."""
    _need(request, "read")
    return _ok(request, {"items": services.state_history(_run_exists(run_id))})


@api.post("/runs/{run_id}/migrate", tags=["recovery"])
def migrate_run(request: HttpRequest, run_id: str, payload: MigrateIn) -> HttpResponse:
    """Move a paused or failed run to another version of its workflow."""
    user = _need(request, "migrate")
    return _run_answer(request, services.migrate(_run_exists(run_id), payload.version, user))


# --------------------------------------------------------------------------- errors


@api.get("/errors", tags=["errors"])
def error_groups(
    request: HttpRequest,
    fingerprint: str | None = None,
    error_class: str | None = Query(None, alias="class"),
    workflow: str | None = None,
    limit: int = 100,
) -> HttpResponse:
    """Errors across runs grouped by fingerprint, most recently seen first."""
    _need(request, "read")
    qs = ErrorRecord.objects.all()
    if fingerprint:
        qs = qs.filter(fingerprint=fingerprint)
    if error_class:
        qs = qs.filter(error_class=error_class)
    if workflow:
        qs = qs.filter(workflow_name=workflow)
    return _ok(request, {"items": serializers.error_groups(qs, _limit(limit))})


# --------------------------------------------------------------------------- interventions


@api.get("/interventions", tags=["interventions"])
def list_interventions(
    request: HttpRequest, status: str | None = None, run: str | None = None, limit: int = 100
) -> HttpResponse:
    """Newest first. ``status``: open, decided, expired or cancelled."""
    _need(request, "read")
    qs = Intervention.objects.select_related("decided_by").order_by("-created_at", "-id")
    if status:
        if status not in Intervention.Status.values:
            raise ServiceError(
                400,
                f"unknown intervention status {status!r}",
                [
                    {
                        "path": "status",
                        "message": f"must be one of {', '.join(Intervention.Status.values)}",
                    }
                ],
            )
        qs = qs.filter(status=status)
    if run:
        try:
            qs = qs.filter(run_id=uuid.UUID(run))
        except ValueError:
            raise ServiceError(
                400, "run must be a run id", [{"path": "run", "message": "not a run id"}]
            ) from None
    items = qs[: _limit(limit)]
    return _ok(request, {"items": [serializers.intervention(i) for i in items]})


@api.get("/interventions/{intervention_id}", tags=["interventions"])
def get_intervention(request: HttpRequest, intervention_id: str) -> HttpResponse:
    _need(request, "read")
    return _ok(request, serializers.intervention_detail(_intervention(intervention_id)))


@api.post("/interventions/{intervention_id}/decide", tags=["interventions"])
def decide_intervention(
    request: HttpRequest, intervention_id: str, payload: DecideIn
) -> HttpResponse:
    """Decide with one of the intervention's ``options``."""
    user = _need(request, "decide")
    found = _intervention(intervention_id)
    decided = services.decide(
        found.pk,
        payload.action,
        user,
        output=payload.output,
        comment=payload.comment,
        checkpoint=payload.checkpoint,
    )
    return _ok(request, serializers.intervention_detail(_intervention(str(decided.pk))))


# --------------------------------------------------------------------------- anything else


@api.api_operation(
    ["GET", "POST", "PUT", "PATCH", "DELETE"], "/{path:rest}", auth=None, include_in_schema=False
)
def no_such_endpoint(request: HttpRequest, rest: str) -> HttpResponse:
    """Unknown paths under /api/v1/ answer in the API's own error format."""
    return _problem(request, 404, f"no endpoint {request.method} /api/v1/{rest}")


__all__ = ["api"]
