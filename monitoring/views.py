"""The operator console: server-rendered pages over ``workflows.services``.

Pages read models directly; every change goes through a service verb. A page that
changes something is a POST form (CSRF) that redirects back with a message; links
never act by themselves (alert links and chat unfurlers fetch them).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseClientRefresh

from interventions.models import Intervention
from monitoring import bulk, graph, run_filters, statediff, stats
from monitoring import overview as overview_figures
from workflows import auth, serializers, services, store
from workflows.models import (
    TERMINAL_RUN_STATUSES,
    Run,
    RunStatus,
    StepAttempt,
    WorkflowDefinition,
)

EVENT_LIMIT = 500
WORKFLOW_NAME_RE = re.compile(r"^[a-z0-9_-]{1,100}$")


# --------------------------------------------------------------------------- access


def viewer_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Logged in (else to the login page with ?next=) and allowed to read (else 403)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not auth.can(request.user, "read"):
            context = {"message": auth.refusal(request.user, "read") + "."}
            return render(request, "403.html", context, status=403)
        return view(request, *args, **kwargs)

    return login_required(wrapped)


def may_operate(user: Any) -> bool:
    return auth.can(user, "pause")


def _refused(request: HttpRequest, action: str) -> bool:
    """True (with a message saying why) when the user may not do ``action``."""
    if auth.can(request.user, action):
        return False
    messages.error(request, f"Refused: {auth.refusal(request.user, action)}.")
    return True


def not_found(request: HttpRequest, message: str, back_url: str, back_label: str) -> HttpResponse:
    context = {"message": message, "back_url": back_url, "back_label": back_label}
    return render(request, "404.html", context, status=404)


# --------------------------------------------------------------------------- overview


def overview_context() -> dict[str, Any]:
    """The overview's figures; also rendered by the dashboard socket on each change."""
    return overview_figures.context()


@viewer_required
def overview(request: HttpRequest) -> HttpResponse:
    return render(request, "overview.html", overview_context())


# --------------------------------------------------------------------------- runs


@viewer_required
def run_list(request: HttpRequest) -> HttpResponse:
    filters = run_filters.parse(request.GET)
    runs, next_cursor = filters.page()
    context = {
        "runs": runs,
        "filters": filters,
        "notes": filters.notes,
        "next_cursor": next_cursor,
        "filter_query": filters.query_string(),
        "ws_query": filters.query_string(
            page="runs", **({"after": request.GET["after"]} if filters.cursor else {})
        ),
        "statuses": RunStatus.values,
        "workflow_names": sorted(set(WorkflowDefinition.objects.values_list("name", flat=True))),
        "bulk_actions": [a for a in bulk.ACTIONS if auth.can(request.user, a)],
        "selectable": True,
        "now": timezone.now(),
    }
    if request.htmx:
        return render(request, "runs/list.html#table", context)
    return render(request, "runs/list.html", context)


@viewer_required
@require_POST
def run_bulk(request: HttpRequest) -> HttpResponse:
    """Dry run first (how many runs, which), then on confirm do it through ``services``."""
    target = bulk.target_from(request.POST)
    back = reverse("run-list") + "?" + target.filter.query_string()
    if target.action not in bulk.ACTIONS:
        messages.error(request, "Choose pause, resume, cancel or retry.")
        return redirect(back)
    if _refused(request, target.action):
        return redirect(back)
    if not target.by_filter and not target.ids:
        messages.error(request, "Select some runs first, or act on all runs matching the filter.")
        return redirect(back)
    if request.POST.get("confirm") != "yes":
        context = {"target": target, "back": back, **bulk.preview(target)}
        return render(request, "runs/bulk_confirm.html", context)
    done, refusals = bulk.execute(target, request.user)
    verb = bulk.ACTIONS[target.action][2]
    messages.success(request, f"{verb} {done} run{'s' if done != 1 else ''}.")
    if refusals:
        shown = "; ".join(refusals[:10]) + (
            f"; and {len(refusals) - 10} more" if len(refusals) > 10 else ""
        )
        messages.warning(request, f"Refused for {len(refusals)}: {shown}")
    return redirect(back)


def _step_rows(run: Run) -> list[dict[str, Any]]:
    attempts: dict[str, list[StepAttempt]] = defaultdict(list)
    for attempt in StepAttempt.objects.filter(run=run).order_by("step", "number"):
        attempts[attempt.step].append(attempt)
    # a finished run takes step retries and skips only when it failed without compensating
    reopenable = not run.is_terminal or (
        run.status == "failed" and not run.state.get("compensations")
    )
    actionable = reopenable and not run.state.get("cancelled")
    rows = []
    states = run.state.get("steps", {})
    for name in serializers.step_order(run):  # the workflow's order (the state is sorted)
        st = states[name]
        status = st.get("status", "")
        tries = attempts.get(name, [])
        if status == "queued" and tries and tries[-1].status == "running":
            status = "running"  # claimed by a worker; the state says queued until it reports
        rows.append(
            {
                "name": name,
                "state": st,
                "status": status,
                "kind": st.get("kind", ""),
                "attempt_count": st.get("attempt", 0),
                "attempts": tries,
                "can_retry": actionable and status in ("failed", "cancelled", "retrying"),
                "can_skip": actionable
                and st.get("kind") != "flow"
                and status in ("pending", "failed", "cancelled", "retrying"),
                "can_resume_from": run.status not in RESUME_FROM_BLOCKED
                and st.get("kind") not in ("handler", "compensation", "fallback")
                and status not in ("pending", "queued", "running"),
            }
        )
    # a timeline: started steps in start order, then the ones still to come
    rows.sort(key=lambda r: (r["state"].get("started") is None, r["state"].get("started") or 0))
    return rows


def _run_context(request: HttpRequest, run: Run) -> dict[str, Any]:
    terminal = run.status in TERMINAL_RUN_STATUSES
    return {
        "run": run,
        "terminal": terminal,
        "paused": bool(run.state.get("paused")),
        "progress": graph.progress(run),
        "steps": _step_rows(run),
        "graph_svg": mark_safe(graph.workflow_graph_svg(run)),  # noqa: S308 (names escaped)
        "gantt_svg": mark_safe(graph.gantt_svg(run)),  # noqa: S308
        "may_operate": may_operate(request.user),
        "now": timezone.now(),
    }


@viewer_required
def run_detail(request: HttpRequest, run_id: Any) -> HttpResponse:
    try:
        run = services.get_run(run_id)
    except services.NotFound:
        return not_found(request, f"There is no run {run_id}.", reverse("run-list"), "All runs")
    context = _run_context(request, run)
    if request.htmx:
        if context["terminal"]:
            # the run just finished: reload once so output, error and events are whole
            return HttpResponseClientRefresh()
        return render(request, "runs/detail.html#steps", context)
    events = list(run.events.order_by("-seq")[:EVENT_LIMIT])
    events.reverse()
    context.update(
        events=events,
        last_seq=events[-1].seq if events else 0,
        events_truncated=run.event_seq > len(events),
        interventions=run.interventions.filter(status="open"),
        restarts=run.restarts.all()[:20],
        **_recovery_context(run),
    )
    return render(request, "runs/detail.html", context)


RUN_VERBS = {
    "pause": (services.pause, "Paused"),
    "resume": (services.resume, "Resumed"),
    "cancel": (services.cancel, "Cancelled"),
    "restart": (services.restart, "Restarted"),
}


@viewer_required
@require_POST
def run_action(request: HttpRequest, run_id: Any, action: str) -> HttpResponse:
    back = reverse("run-detail", args=[run_id])
    if action not in RUN_VERBS:
        return not_found(request, f"There is no action {action!r}.", back, "Back to the run")
    if _refused(request, action):
        return redirect(back)
    verb, done = RUN_VERBS[action]
    try:
        result = verb(run_id, user=request.user)
    except services.NotFound as exc:
        return not_found(request, exc.message, reverse("run-list"), "All runs")
    except services.ServiceError as exc:
        messages.error(request, f"Could not {action} the run: {exc.message}")
        return redirect(back)
    if action == "restart":
        messages.success(request, f"Restarted as a new run {result.pk}.")
        return redirect("run-detail", run_id=result.pk)
    messages.success(request, f"{done} the run.")
    return redirect(back)


def _json_field(request: HttpRequest, name: str) -> tuple[Any, str | None]:
    """Optional JSON from a form field: (value, None) or (None, problem)."""
    text = request.POST.get(name, "").strip()
    if not text:
        return None, None
    try:
        return json.loads(text), None
    except ValueError as exc:
        return None, f"{name} is not valid JSON: {exc}"


@viewer_required
@require_POST
def step_action(request: HttpRequest, run_id: Any) -> HttpResponse:
    back = reverse("run-detail", args=[run_id])
    step = request.POST.get("step", "")
    action = request.POST.get("action", "")
    if action not in ("retry", "skip") or not step:
        messages.error(request, "Choose a step and retry or skip.")
        return redirect(back)
    if _refused(request, action):
        return redirect(back)
    try:
        if action == "retry":
            services.retry_step(run_id, step, user=request.user)
        else:
            output, problem = _json_field(request, "output")
            if problem:
                messages.error(request, f"Could not skip step {step}: {problem}")
                return redirect(back)
            services.skip_step(run_id, step, output=output, user=request.user)
    except services.NotFound as exc:
        if "run" in exc.message and "step" not in exc.message:
            return not_found(request, exc.message, reverse("run-list"), "All runs")
        messages.error(request, f"Could not {action} step {step}: {exc.message}")
        return redirect(back)
    except services.ServiceError as exc:
        messages.error(request, f"Could not {action} step {step}: {exc.message}")
        return redirect(back)
    verb = "Retrying" if action == "retry" else "Skipped"
    messages.success(request, f"{verb} step {step}.")
    return redirect(back)


# --------------------------------------------------------------------------- recovery

RESUME_FROM_BLOCKED = ("pending", "running", "waiting", "compensating")
HISTORY_LIMIT = 200


def _recovery_context(run: Run) -> dict[str, Any]:
    """Checkpoints, state history, breakpoints and the newer version for the run page."""
    latest = (
        WorkflowDefinition.objects.filter(name=run.workflow_name)
        .order_by("-version")
        .values_list("version", flat=True)
        .first()
    )
    history = services.state_history(run.pk)
    return {
        "checkpoints": list(run.checkpoints.defer("data").order_by("-created_at", "-pk")[:100]),
        "history": history[-HISTORY_LIMIT:][::-1],
        "history_truncated": len(history) > HISTORY_LIMIT,
        "breakpoints": list(run.state.get("breakpoints", [])),
        "breakpoint_steps": list(
            dict.fromkeys(
                s.name
                for s, kind in store.spec_for(run.definition).all_steps()
                if kind == "action"
                and run.state.get("steps", {}).get(s.name, {}).get("status", "pending") == "pending"
            )
        ),
        "migrate_to": latest
        if latest and latest > run.workflow_version and run.status in ("paused", "failed")
        else None,
        "input_text": json.dumps(run.input, indent=2, ensure_ascii=False),
    }


@viewer_required
def run_resume_from(request: HttpRequest, run_id: Any, step: str) -> HttpResponse:
    """GET: the preview (what runs again, what is kept). POST: do it. Never acts on GET."""
    try:
        run = services.get_run(run_id)
    except services.NotFound:
        return not_found(request, f"There is no run {run_id}.", reverse("run-list"), "All runs")
    back = reverse("run-detail", args=[run.pk])
    if request.method == "POST":
        if _refused(request, "resume_from"):
            return redirect(back)
        try:
            services.resume_from(run.pk, step, user=request.user)
        except services.ServiceError as exc:
            messages.error(request, f"Could not resume from step {step}: {exc.message}")
            return redirect(back)
        messages.success(request, f"Resuming from step {step}.")
        return redirect(back)
    context: dict[str, Any] = {
        "run": run,
        "step": step,
        "may_operate": auth.can(request.user, "resume_from"),
        "blocked": run.status in RESUME_FROM_BLOCKED,
    }
    try:
        context["preview"] = services.preview_resume_from(run.pk, step)
    except services.ServiceError as exc:
        context["refusal"] = exc.message
        return render(request, "runs/resume_from.html", context, status=exc.status)
    return render(request, "runs/resume_from.html", context)


RECOVERY_ACTIONS = ("checkpoint", "restore", "breakpoint", "migrate", "restart")


@viewer_required
@require_POST
def run_recovery(request: HttpRequest, run_id: Any, action: str) -> HttpResponse:
    """The run page's recovery forms: checkpoint, restore, breakpoint, migrate, restart."""
    back = reverse("run-detail", args=[run_id])
    if action not in RECOVERY_ACTIONS:
        return not_found(request, f"There is no action {action!r}.", back, "Back to the run")
    if _refused(request, action):
        return redirect(back)
    post = request.POST
    try:
        if action == "checkpoint":
            cp = services.take_checkpoint(run_id, user=request.user)
            done = f"Took checkpoint {cp.pk}."
        elif action == "restore":
            services.restore(run_id, post.get("checkpoint", ""), user=request.user)
            done = f"Restored checkpoint {post.get('checkpoint')}; later steps run again."
        elif action == "breakpoint":
            step = post.get("step", "").strip()
            enabled = post.get("enabled", "1") != "0"
            services.set_breakpoint(run_id, step, enabled, user=request.user)
            done = (
                f"The run pauses before step {step}."
                if enabled
                else f"Removed the breakpoint before step {step}."
            )
        elif action == "migrate":
            version = post.get("version", "").strip()
            if not version.isdigit():
                raise services.ServiceError(400, "choose a version number")
            run = services.migrate(run_id, int(version), user=request.user)
            done = f"Migrated the run to v{run.workflow_version}."
        else:
            data, problem = _json_field(request, "input")
            if problem:
                raise services.ServiceError(400, problem)
            new = services.restart(run_id, user=request.user, input=data)
            messages.success(request, f"Restarted as a new run {new.pk}.")
            return redirect("run-detail", run_id=new.pk)
    except services.NotFound as exc:
        if exc.message.startswith("run "):
            return not_found(request, exc.message, reverse("run-list"), "All runs")
        messages.error(request, f"Could not {action}: {exc.message}")
        return redirect(back)
    except services.ServiceError as exc:
        details = "; ".join(f"{e['path']}: {e['message']}" for e in exc.errors[:5])
        messages.error(
            request, f"Could not {action}: {exc.message}" + (f" ({details})" if details else "")
        )
        return redirect(back)
    messages.success(request, done)
    return redirect(back)


# --------------------------------------------------------------------------- interventions


@viewer_required
def intervention_list(request: HttpRequest) -> HttpResponse:
    show = request.GET.get("status", "open")
    notes = []
    if show not in Intervention.Status.values and show != "all":
        notes.append(f"Ignored status filter {show[:50]!r}: showing open interventions.")
        show = "open"
    qs = Intervention.objects.select_related("run", "decided_by")
    if show != "all":
        qs = qs.filter(status=show)
    context = {
        "interventions": qs[:200],
        "show": show,
        "statuses": [*Intervention.Status.values, "all"],
        "notes": notes,
        "may_operate": may_operate(request.user),
        "now": timezone.now(),
    }
    return render(request, "interventions/list.html", context)


def _get_intervention(pk: Any) -> Intervention | None:
    try:
        return Intervention.objects.select_related("run", "decided_by").get(pk=int(pk))
    except (Intervention.DoesNotExist, ValueError, TypeError):
        return None


@viewer_required
def intervention_detail(request: HttpRequest, pk: int) -> HttpResponse:
    intervention = _get_intervention(pk)
    if intervention is None:
        return not_found(
            request,
            f"There is no intervention {pk}.",
            reverse("intervention-list"),
            "All interventions",
        )
    context = {
        "intervention": intervention,
        "may_operate": may_operate(request.user),
        "now": timezone.now(),
    }
    return render(request, "interventions/detail.html", context)


def _safe_next(request: HttpRequest, default: str) -> str:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return default


@viewer_required
@require_POST
def intervention_decide(request: HttpRequest, pk: int) -> HttpResponse:
    back = _safe_next(request, reverse("intervention-detail", args=[pk]))
    if _get_intervention(pk) is None:
        return not_found(
            request,
            f"There is no intervention {pk}.",
            reverse("intervention-list"),
            "All interventions",
        )
    action = request.POST.get("action", "")
    if _refused(request, "decide"):
        return redirect(back)
    output, problem = _json_field(request, "output")
    if problem:
        messages.error(request, f"Could not {action}: {problem}")
        return redirect(back)
    try:
        decided = services.decide(
            pk, action, user=request.user, output=output, comment=request.POST.get("comment", "")
        )
    except services.ServiceError as exc:
        messages.error(request, f"Could not {action or 'decide'}: {exc.message}")
        return redirect(back)
    if decided.status == "open":  # four eyes: one approval recorded, more needed
        messages.success(
            request,
            f"Your approval is recorded ({len(decided.approvals)} of "
            f"{decided.required_approvals}); another person must approve too.",
        )
    else:
        messages.success(request, f"Decided intervention {pk}: {action}.")
    return redirect(back)


# --------------------------------------------------------------------------- errors


@viewer_required
def error_groups(request: HttpRequest) -> HttpResponse:
    """Failures across runs, grouped by fingerprint (``monitoring.stats.error_groups``)."""
    notes = []
    wanted = {
        "class": (request.GET.get("class", "").strip(), r"^[a-z_]{1,30}$"),
        "fingerprint": (request.GET.get("fingerprint", "").strip().lower(), r"^[0-9a-f]{8,64}$"),
        "workflow": (request.GET.get("workflow", "").strip(), WORKFLOW_NAME_RE.pattern),
    }
    chosen: dict[str, str] = {}
    for name, (value, pattern) in wanted.items():
        if value and re.match(pattern, value):
            chosen[name] = value
        elif value:
            notes.append(f"Ignored {name} filter {value[:50]!r}.")
    groups = stats.error_groups(
        chosen.get("fingerprint"), chosen.get("class"), chosen.get("workflow")
    )
    context = {
        "groups": groups,
        "notes": notes,
        "error_class": chosen.get("class", ""),
        "chosen": chosen,
        "may_retry": auth.can(request.user, "retry"),
    }
    return render(request, "errors/list.html", context)


# --------------------------------------------------------------------------- workflows


@viewer_required
def workflow_list(request: HttpRequest) -> HttpResponse:
    latest: dict[str, WorkflowDefinition] = {}
    version_counts: dict[str, int] = defaultdict(int)
    for definition in WorkflowDefinition.objects.order_by("name", "-version").defer(
        "source", "spec"
    ):
        latest.setdefault(definition.name, definition)
        version_counts[definition.name] += 1
    run_counts = dict(Run.objects.values_list("workflow_name").annotate(n=Count("id")).order_by())
    rows = [
        {
            "definition": d,
            "versions": version_counts[name],
            "runs": run_counts.get(name, 0),
            "stats": stats.workflow_stats(name),
        }
        for name, d in latest.items()
    ]
    return render(request, "workflows/list.html", {"rows": rows})


def _workflow_context(request: HttpRequest, name: str) -> dict[str, Any] | None:
    versions = list(WorkflowDefinition.objects.filter(name=name).order_by("-version"))
    if not versions:
        return None
    notes = []
    selected = versions[0]
    wanted = request.GET.get("version", "").strip()
    if wanted:
        chosen = next((v for v in versions if str(v.version) == wanted), None)
        if chosen is None:
            notes.append(f"Ignored version {wanted[:20]!r}: showing the latest.")
        else:
            selected = chosen
    return {
        "name": name,
        "versions": versions,
        "selected": selected,
        "notes": notes,
        "stats": stats.workflow_stats(name),
        "graph_svg": mark_safe(graph.definition_graph_svg(selected)),  # noqa: S308
        **_version_diff(request, versions, selected, notes),
        "recent_runs": Run.objects.filter(workflow_name=name)[:10],
        "may_operate": may_operate(request.user),
        "input_text": "{}",
        "now": timezone.now(),
    }


def _version_diff(
    request: HttpRequest,
    versions: list[WorkflowDefinition],
    selected: WorkflowDefinition,
    notes: list[str],
) -> dict[str, Any]:
    """The YAML diff of ``?compare=N`` (default: the version before) against the selected."""
    others = [v for v in versions if v.pk != selected.pk]
    wanted = request.GET.get("compare", "").strip()
    base = next((v for v in others if str(v.version) == wanted), None)
    if wanted and base is None:
        notes.append(f"Ignored compare {wanted[:20]!r}: not another version.")
    if base is None:
        base = next((v for v in versions if v.version < selected.version), None)
    if base is None:
        return {"compare_to": None, "other_versions": others}
    diff = statediff.text_diff(
        base.source, selected.source, f"v{base.version}", f"v{selected.version}"
    )
    return {
        "compare_to": base,
        "other_versions": others,
        "version_diff": mark_safe(diff),  # noqa: S308 (every line escaped)
    }


@viewer_required
def workflow_detail(request: HttpRequest, name: str) -> HttpResponse:
    context = _workflow_context(request, name)
    if context is None:
        return not_found(
            request, f"There is no workflow {name!r}.", reverse("workflow-list"), "All workflows"
        )
    return render(request, "workflows/detail.html", context)


@viewer_required
@require_POST
def workflow_start(request: HttpRequest, name: str) -> HttpResponse:
    context = _workflow_context(request, name)
    if context is None:
        return not_found(
            request, f"There is no workflow {name!r}.", reverse("workflow-list"), "All workflows"
        )
    back = reverse("workflow-detail", args=[name])
    if _refused(request, "start"):
        return redirect(back)
    text = request.POST.get("input", "").strip() or "{}"
    context["input_text"] = text
    version_text = request.POST.get("version", "").strip()
    version = int(version_text) if version_text.isdigit() else None
    try:
        data = json.loads(text)
    except ValueError as exc:
        context["start_error"] = f"The input is not valid JSON: {exc}"
        return render(request, "workflows/detail.html", context, status=400)
    try:
        run = services.start_run(name, version, data, user=request.user)
    except services.ServiceError as exc:
        context["start_error"] = exc.message
        context["start_errors"] = exc.errors
        return render(request, "workflows/detail.html", context, status=exc.status)
    messages.success(request, f"Started run {run.pk} of {name} v{run.workflow_version}.")
    return redirect("run-detail", run_id=run.pk)


# --------------------------------------------------------------------------- state inspector


def _state_choice(run: Run, choice: str) -> tuple[str, dict[str, Any]]:
    """``current`` or a checkpoint id of this run -> (label, state)."""
    if choice in ("", "current"):
        return f"current state (version {run.state_version})", run.state
    checkpoint = run.checkpoints.filter(pk=int(choice)).first() if choice.isdigit() else None
    if checkpoint is None:
        raise services.ServiceError(404, f"run {run.pk} has no checkpoint {choice}")
    state = services.checkpoint_state(run.pk, checkpoint.pk)
    label = f"checkpoint {checkpoint.pk} ({checkpoint.kind}"
    label += f" after {checkpoint.step})" if checkpoint.step else ")"
    return label, state


@viewer_required
def run_state(request: HttpRequest, run_id: Any) -> HttpResponse:
    """The state inspector: the current state or any checkpoint, or the diff of two."""
    try:
        run = services.get_run(run_id)
    except services.NotFound:
        return not_found(request, f"There is no run {run_id}.", reverse("run-list"), "All runs")
    a_choice = request.GET.get("a", "current")
    b_choice = request.GET.get("b", "")
    context: dict[str, Any] = {
        "run": run,
        "a": a_choice,
        "b": b_choice,
        "checkpoints": list(run.checkpoints.defer("data").order_by("-created_at", "-pk")[:200]),
    }
    try:
        context["a_label"], a_state = _state_choice(run, a_choice)
        if b_choice:
            context["b_label"], b_state = _state_choice(run, b_choice)
            context["diff"] = statediff.diff_states(a_state, b_state)
        else:
            context["state_text"] = json.dumps(a_state, indent=2, sort_keys=True)
    except services.ServiceError as exc:
        context["problem"] = exc.message
    return render(request, "runs/state.html", context, status=400 if "problem" in context else 200)
