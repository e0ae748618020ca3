"""Server-rendered pictures of a run: its workflow graph, a Gantt of its attempts, progress.

Pure renderers over a ``Run`` (and optionally its attempts): every function returns SVG
markup that is safe to ``mark_safe`` (each name goes through ``html.escape``), fills its
nodes inline so it renders without CSS, and is deterministic for the same input.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from datetime import datetime
from html import escape
from typing import Any

from django.db.models import F

from monitoring.templatetags.flowmend import dom_id as _dom_id
from workflows import engine, store
from workflows.models import Run, StepAttempt, WorkflowDefinition
from workflows.serializers import step_order

# status -> (fill, stroke, text)
COLORS: dict[str, tuple[str, str, str]] = {
    "pending": ("#e5e7eb", "#9ca3af", "#111827"),
    "queued": ("#93c5fd", "#2563eb", "#111827"),
    "running": ("#3b82f6", "#1d4ed8", "#ffffff"),
    "retrying": ("#f59e0b", "#b45309", "#111827"),
    "succeeded": ("#22c55e", "#15803d", "#ffffff"),
    "failed": ("#ef4444", "#b91c1c", "#ffffff"),
    "skipped": ("#f3f4f6", "#d1d5db", "#6b7280"),
    "cancelled": ("#4b5563", "#1f2937", "#ffffff"),
    "compensated": ("#8b5cf6", "#6d28d9", "#ffffff"),
}
BANDS = (
    ("fallback", "workflow fallback"),
    ("handler", "on-error handlers"),
    ("compensation", "compensations"),
)
NODE_W, NODE_H, COL_GAP, ROW_GAP, PAD, BAND_LABEL = 150, 34, 44, 12, 12, 18
_LAST_INDEX = re.compile(r"\[\d+\]$")


def _color(status: str) -> tuple[str, str, str]:
    return COLORS.get(status, COLORS["pending"])


def _spec_nodes(definition: WorkflowDefinition) -> dict[str, engine.Node]:
    try:
        return engine.index(store.spec_for(definition))
    except Exception:  # an old definition that no longer validates: no graph from the spec
        return {}


def _instances(
    steps: dict[str, dict[str, Any]], nodes: dict[str, engine.Node]
) -> dict[str, dict[str, Any]]:
    """The run's instances plus, as pending, spec steps not instantiated yet."""
    out = dict(steps)
    present = {st.get("base", n) for n, st in steps.items()}
    for base, node in nodes.items():
        if base not in present:
            scope = "/handlers" if node.kind == "handler" else ""
            out[base] = {"base": base, "suffix": "", "kind": node.kind, "scope": scope,
                         "status": "pending", "attempt": 0}  # fmt: skip
    return out


def _owner(name: str, st: dict[str, Any], nodes: dict[str, engine.Node]) -> str | None:
    """The flow step a nested step belongs to, or the step a fallback stands in for."""
    if "@" in name:
        return name.split("@", 1)[1]
    node = nodes.get(st.get("base", name))
    if node is None or node.parent is None:
        return None
    suffix = st.get("suffix", "")
    parent = nodes.get(node.parent)
    if node.kind == "action" and parent is not None and parent.spec.type == "foreach":
        suffix = _LAST_INDEX.sub("", suffix)
    return node.parent + suffix


Layout = tuple[
    dict[str, tuple[float, float]],
    list[tuple[float, str]],
    list[tuple[str, str, str]],
    tuple[float, float],
]


def _layout(
    steps: dict[str, dict[str, Any]],
    nodes: dict[str, engine.Node],
    order: list[str],
    ran: list[str],
) -> Layout:
    """(positions name -> (x, y), band labels (y, text), edges (src, dst, style), size)."""
    band_of = {n: st.get("kind") for n, st in steps.items()}
    main = [n for n in order if band_of[n] not in ("handler", "compensation")
            and not (band_of[n] == "fallback" and _owner(n, steps[n], nodes) not in steps)]  # fmt: skip
    main_set = set(main)
    level: dict[str, int] = {}
    end: dict[str, int] = {}
    edges: list[tuple[str, str, str]] = []

    def lvl(n: str, seen: frozenset[str] = frozenset()) -> int:
        if n in level:
            return level[n]
        st, value = steps[n], 0
        node = nodes.get(st.get("base", n))
        for dep in node.deps if node else ():
            d = dep + st.get("suffix", "")
            if d in main_set and d not in seen:
                value = max(value, finish(d, seen | {n}) + 1)
        owner = _owner(n, st, nodes)
        if owner in steps and owner not in seen:
            value = max(value, lvl(owner, seen | {n}) + 1)
        level[n] = value
        return value

    def finish(n: str, seen: frozenset[str]) -> int:
        if n not in end:
            kids = [c for c in main if band_of[c] != "fallback" and _owner(c, steps[c], nodes) == n]
            end[n] = max([lvl(n, seen)] + [finish(c, seen | {n}) for c in kids if c not in seen])
        return end[n]

    for n in main:
        lvl(n)
        st, node = steps[n], nodes.get(steps[n].get("base", n))
        for dep in node.deps if node else ():
            if dep + st.get("suffix", "") in main_set:
                edges.append((dep + st.get("suffix", ""), n, "dep"))
        owner = _owner(n, st, nodes)
        if owner in steps:
            edges.append((owner, n, "fallback" if band_of[n] == "fallback" else "child"))
    pos: dict[str, tuple[float, float]] = {}
    rows: dict[int, int] = {}
    for n in main:
        col = level[n]
        rows[col] = rows.get(col, 0) + 1
        pos[n] = (PAD + col * (NODE_W + COL_GAP), PAD + (rows[col] - 1) * (NODE_H + ROW_GAP))
    y = PAD + max(rows.values(), default=0) * (NODE_H + ROW_GAP)
    labels: list[tuple[float, str]] = []
    width = max([x for x, _ in pos.values()], default=PAD) + NODE_W + PAD
    for kind, label in BANDS:
        members = [n for n in order if band_of[n] == kind and n not in pos]
        if kind == "compensation":
            members.sort(key=lambda n: (ran.index(n) if n in ran else len(ran), n))
        if not members:
            continue
        labels.append((y + 12, label))
        y += BAND_LABEL
        for i, n in enumerate(members):
            pos[n] = (PAD + i * (NODE_W + COL_GAP), y)
            if i:
                edges.append((members[i - 1], n, "seq"))
        width = max(width, PAD + len(members) * (NODE_W + COL_GAP) - COL_GAP + PAD)
        y += NODE_H + ROW_GAP
    return pos, labels, edges, (width, y + PAD)


def _node_svg(name: str, st: dict[str, Any], x: float, y: float) -> str:
    status = str(st.get("status", "pending"))
    fill, stroke, text = _color(status)
    label = name if len(name) <= 20 else name[:19] + "…"
    kind = st.get("kind", "action")
    attempts = st.get("attempt", 0)
    tip = f"{name}: {status}, {attempts} attempt{'s' if attempts != 1 else ''} ({kind})"
    dash = (
        ' stroke-dasharray="4 3"' if kind in ("fallback", "handler", "compensation", "flow") else ""
    )
    e = escape
    return (
        f'<a href="#step-{_dom_id(name)}" data-step="{e(name)}" class="node st-{e(status)} kind-{e(kind)}"><title>{e(tip)}</title>'
        f'<rect x="{x:.0f}" y="{y:.0f}" width="{NODE_W}" height="{NODE_H}" rx="7" ry="7" '
        f'fill="{fill}" stroke="{stroke}" stroke-width="1.5"{dash}/>'
        f'<text x="{x + NODE_W / 2:.0f}" y="{y + 15:.0f}" text-anchor="middle" font-size="12" '
        f'font-family="sans-serif" fill="{text}">{e(label)}</text>'
        f'<text x="{x + NODE_W / 2:.0f}" y="{y + 28:.0f}" text-anchor="middle" font-size="9" '
        f'font-family="sans-serif" fill="{text}">{e(kind)} · {e(status)}</text></a>'
    )


def _graph_svg(
    steps: dict[str, dict[str, Any]],
    nodes: dict[str, engine.Node],
    order: list[str],
    title: str,
    ran: list[str] = (),  # type: ignore[assignment]
) -> str:
    pos, labels, edges, (width, height) = _layout(steps, nodes, order, list(ran))
    styles = {"dep": ' stroke="#6b7280"', "child": ' stroke="#9ca3af" stroke-dasharray="3 3"',
              "fallback": ' stroke="#d97706" stroke-dasharray="5 3"', "seq": ' stroke="#6b7280"'}  # fmt: skip
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="workflow-graph" width="{width:.0f}" '
        f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#6b7280"/>'
        "</marker></defs>",
    ]
    for src, dst, style in edges:
        (x1, y1), (x2, y2) = pos[src], pos[dst]
        if style in ("child", "fallback") and x2 <= x1 + NODE_W:
            a, b = (x1 + NODE_W / 2, y1 + NODE_H), (x2 + NODE_W / 2, y2)
        else:
            a, b = (x1 + NODE_W, y1 + NODE_H / 2), (x2, y2 + NODE_H / 2)
        out.append(f'<line class="edge edge-{style}" x1="{a[0]:.0f}" y1="{a[1]:.0f}" x2="{b[0]:.0f}" '
                   f'y2="{b[1]:.0f}"{styles[style]} stroke-width="1.2" marker-end="url(#arrow)"/>')  # fmt: skip
    for y, text in labels:
        out.append(f'<text class="band" x="{PAD}" y="{y:.0f}" font-size="11" '
                   f'font-family="sans-serif" fill="#374151">{escape(text)}</text>')  # fmt: skip
    for name in order:
        if name in pos:
            out.append(_node_svg(name, steps[name], *pos[name]))
    out.append("</svg>")
    return "".join(out)


def workflow_graph_svg(run: Run) -> str:
    """The run's workflow as a left-to-right graph, each step instance colored by status."""
    nodes = _spec_nodes(run.definition)
    state = run.state or {}
    steps = _instances(state.get("steps", {}), nodes)
    positions = {name: i for i, name in enumerate(nodes)}
    ordered = step_order(Run(state={**state, "steps": steps}), positions)
    ran = list(state.get("compensations") or [])
    return _graph_svg(steps, nodes, ordered, f"Workflow graph of run {run.pk}", ran)


def definition_graph_svg(definition: WorkflowDefinition) -> str:
    """A workflow version as a graph, every step pending (for the workflows page)."""
    nodes = _spec_nodes(definition)
    steps = _instances({}, nodes)
    order = list(nodes)
    return _graph_svg(
        steps, nodes, order, f"Workflow graph of {definition.name} v{definition.version}"
    )


# --------------------------------------------------------------------------- gantt

ATTEMPT_COLORS = {"queued": "#93c5fd", "running": "#3b82f6", "succeeded": "#22c55e",
                  "failed": "#ef4444", "cancelled": "#4b5563"}  # fmt: skip
LABEL_W, CHART_W, AXIS_H = 170, 720, 22


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _attempts(run: Run, attempts: Iterable[StepAttempt] | None) -> list[StepAttempt]:
    if attempts is None:
        attempts = StepAttempt.objects.filter(run=run).only(
            "step", "number", "status", "queued_at", "not_before", "started_at", "finished_at"
        )
    return sorted(attempts, key=lambda a: (a.step, a.number, a.pk or 0))


def _seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 120:
        return f"{value:.1f}s" if value < 10 else f"{value:.0f}s"
    if value < 7200:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def gantt_svg(
    run: Run, attempts: Iterable[StepAttempt] | None = None, now: float | None = None
) -> str:
    """A timeline: one row per step instance, a bar per attempt (queued time thin, run time
    full), hatched gaps between a step's attempts (the retry wait). Running bars end now."""
    now = time.time() if now is None else now
    tries = _attempts(run, attempts)
    by_step: dict[str, list[StepAttempt]] = {}
    for a in tries:
        by_step.setdefault(a.step, []).append(a)
    state_steps = (run.state or {}).get("steps", {})
    rows = [n for n in step_order(run) if n in by_step or state_steps[n].get("started")]
    rows += sorted(n for n in by_step if n not in state_steps)
    spans = [(_ts(a.queued_at) or _ts(a.started_at), _ts(a.finished_at) or now) for a in tries]
    spans += [(state_steps[n]["started"], state_steps[n].get("finished") or now) for n in rows if n in state_steps and state_steps[n].get("started")]  # fmt: skip
    starts = [s for s, _ in spans if s is not None] + (
        [_ts(run.started_at)] if run.started_at else []
    )
    t0 = min(starts, default=now)
    t1 = max([e for _, e in spans] + [t0 + 1])
    scale = CHART_W / (t1 - t0)
    row_h = 22 if len(rows) <= 40 else 16 if len(rows) <= 100 else 12
    width, height = LABEL_W + CHART_W + 20, AXIS_H + max(len(rows), 1) * row_h + 8
    title = f"Timeline of run {run.pk}: {len(tries)} attempts"

    def x(t: float) -> float:
        return LABEL_W + (t - t0) * scale

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="gantt" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
        '<defs><pattern id="wait-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fef3c7"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#d97706" stroke-width="2"/></pattern></defs>'
    ]
    for i in range(6):
        t = t0 + (t1 - t0) * i / 5
        out.append(f'<line class="tick" x1="{x(t):.1f}" y1="{AXIS_H - 4}" x2="{x(t):.1f}" y2="{height - 8}" stroke="#e5e7eb"/>'
                   f'<text x="{x(t):.1f}" y="{AXIS_H - 8}" font-size="10" font-family="sans-serif" '
                   f'text-anchor="{"end" if i == 5 else "start" if i == 0 else "middle"}" fill="#6b7280">+{_seconds(t - t0)}</text>')  # fmt: skip
    for r, name in enumerate(rows):
        y = AXIS_H + r * row_h
        bar_h = row_h - 6
        label = name if len(name) <= 24 else name[:23] + "…"
        status = state_steps.get(name, {}).get("status", "")
        out.append(f'<a href="#step-{_dom_id(name)}"><text class="row-label" x="4" y="{y + bar_h - 2}" font-size="11" '
                   f'font-family="sans-serif" fill="#111827">{escape(label)}<title>{escape(name)}: {escape(status)}</title></text></a>')  # fmt: skip
        st = state_steps.get(name, {})
        if name not in by_step and st.get("started"):  # a flow step: its span, outlined
            x1, x2 = x(st["started"]), x(st.get("finished") or now)
            out.append(f'<rect class="span" x="{x1:.1f}" y="{y + 2}" width="{max(x2 - x1, 1):.1f}" height="{bar_h - 4}" '
                       f'fill="none" stroke="#9ca3af" stroke-dasharray="3 2"><title>{escape(name)}: {_seconds((st.get("finished") or now) - st["started"])}</title></rect>')  # fmt: skip
        previous_end: float | None = None
        for a in by_step.get(name, []):
            queued, started, finished = _ts(a.queued_at), _ts(a.started_at), _ts(a.finished_at)
            end = finished or now
            if previous_end is not None and queued is not None and queued > previous_end:
                out.append(f'<rect class="wait" x="{x(previous_end):.1f}" y="{y + 1}" width="{max(x(queued) - x(previous_end), 1):.1f}" '
                           f'height="{bar_h}" fill="url(#wait-hatch)"><title>wait {_seconds(queued - previous_end)} before attempt {a.number} (retry delay)</title></rect>')  # fmt: skip
            if queued is not None and started is not None and started > queued:
                out.append(f'<rect class="queued" x="{x(queued):.1f}" y="{y + bar_h / 2 - 1:.1f}" width="{max(x(started) - x(queued), 1):.1f}" '
                           f'height="3" fill="#9ca3af"><title>queued {_seconds(started - queued)}</title></rect>')  # fmt: skip
            begin = started if started is not None else queued if queued is not None else end
            color = ATTEMPT_COLORS.get(a.status, "#9ca3af")
            tip = f"{name} attempt {a.number}: {a.status}, {_seconds(end - begin)}"
            out.append(f'<rect class="attempt at-{escape(a.status)}" x="{x(begin):.1f}" y="{y + 1}" width="{max(x(end) - x(begin), 2):.1f}" '
                       f'height="{bar_h}" rx="2" fill="{color}"><title>{escape(tip)}</title></rect>')  # fmt: skip
            previous_end = end
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------- progress

RECENT_ATTEMPTS = 200


def average_step_seconds(workflow_name: str) -> float | None:
    """Mean duration of the latest succeeded attempts of the workflow's recent runs."""
    recent_runs = (
        Run.objects.filter(workflow_name=workflow_name).order_by("-created_at").values("id")[:50]
    )
    qs = (
        StepAttempt.objects.filter(
            run_id__in=recent_runs, status="succeeded", started_at__isnull=False
        )
        .exclude(step_type__in=("sleep", "approval"))
        .order_by("-id")
        .annotate(took=F("finished_at") - F("started_at"))
        .values("took")[:RECENT_ATTEMPTS]
    )
    took = [row["took"].total_seconds() for row in qs if row["took"] is not None]
    return sum(took) / len(took) if took else None


def progress(
    run: Run, attempts: Iterable[StepAttempt] | None = None, now: float | None = None
) -> dict[str, Any]:
    """engine.progress (percent, completed, running, pending, failed) plus ``total``,
    ``avg_step_seconds`` and ``eta_seconds``.

    The estimate is serial: (pending + running non-flow steps) x the workflow's average
    succeeded-attempt duration, minus what the running steps have already spent (each at
    most one average). Never negative; 0 for a finished run; None when nothing is known.
    ``attempts`` is accepted for symmetry with ``gantt_svg``; elapsed time comes from the
    state's ``started`` stamps.
    """
    del attempts
    now = time.time() if now is None else now
    state = run.state or {}
    counts: dict[str, Any] = dict(engine.progress(state))
    counts["total"] = counts["completed"] + counts["running"] + counts["pending"] + counts["failed"]
    remaining = counts["pending"] + counts["running"]
    counts["avg_step_seconds"] = None
    if run.is_terminal or remaining == 0:
        counts["eta_seconds"] = 0.0 if run.is_terminal or counts["total"] else None
        return counts
    avg = average_step_seconds(run.workflow_name)
    counts["avg_step_seconds"] = avg
    if avg is None:
        counts["eta_seconds"] = None
        return counts
    spent = sum(
        min(max(now - st["started"], 0.0), avg)
        for st in state.get("steps", {}).values()
        if st.get("kind") != "flow" and st.get("status") in engine.ACTIVE and st.get("started")
    )
    counts["eta_seconds"] = max(remaining * avg - spent, 0.0)
    return counts
