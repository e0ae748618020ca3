"""The monitoring renderers: workflow graph, Gantt, progress, charts and diffs (real PostgreSQL)."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from monitoring import charts, graph, statediff
from workflows import engine, services, store
from workflows.models import Run, StepAttempt

SVG = "{http://www.w3.org/2000/svg}"

SAGA = """\
name: graph-demo
settings:
  on-error:
    - name: notify
      type: noop
steps:
  - name: reserve
    type: noop
    compensate: {name: release, type: noop}
  - name: each
    type: foreach
    foreach: "inputs.items"
    steps:
      - name: process
        type: noop
  - name: charge
    type: noop
    on-failure:
      fallback:
        - name: charge-backup
          type: noop
      continue: true
  - name: ship
    type: noop
    needs: [charge]
  - name: label
    type: noop
    needs: [charge]
"""


def _report(run: Run, step: str, ok: bool = True, error: dict[str, Any] | None = None) -> None:
    attempt = StepAttempt.objects.get(run=run, step=step, status__in=("queued", "running"))
    store.claim(attempt.pk, "test-worker")
    now = time.time()
    if ok:
        event: Any = engine.AttemptSucceeded(now, step, attempt.number, {"ok": True})
        report = store.Report(attempt.pk, True, output={"ok": True})
    else:
        error = error or {"type": "Boom", "message": "no"}
        event = engine.AttemptFailed(now, step, attempt.number, error)
        report = store.Report(attempt.pk, False, error=error)
    store.apply(run.pk, lambda r: event, report=report)


def _elements(svg: str, tag: str) -> list[ET.Element]:
    return list(ET.fromstring(svg).iter(SVG + tag))


def _node_status(svg: str) -> dict[str, str]:
    """step name -> status class, from the node links."""
    out = {}
    for a in _elements(svg, "a"):
        classes = a.get("class", "").split()
        name = a.get("data-step", "")
        out[name] = next(c[3:] for c in classes if c.startswith("st-"))
    return out


@pytest.fixture
def saga_run(saved_workflow: Any) -> Run:
    saved_workflow(SAGA)
    run = services.start_run("graph-demo", None, {"items": [1, 2]})
    _report(run, "reserve")
    _report(run, "process[0]")
    _report(run, "process[1]")
    _report(run, "charge", ok=False)  # fallback takes over, then the run continues
    _report(run, "charge-backup")
    run.refresh_from_db()
    return run


def test_workflow_graph_shows_every_instance_with_its_status(saga_run: Run) -> None:
    svg = graph.workflow_graph_svg(saga_run)
    statuses = _node_status(svg)
    for name in (
        "reserve",
        "each",
        "process[0]",
        "process[1]",
        "charge",
        "charge-backup",
        "ship",
        "label",
    ):
        assert name in statuses, name
    # not instantiated yet: taken from the spec, pending, in their own rows
    assert statuses["release"] == "pending" and statuses["notify"] == "pending"
    assert statuses["reserve"] == "succeeded"
    assert statuses["charge"] == "failed"
    assert statuses["charge-backup"] == "succeeded"
    assert statuses["ship"] in ("queued", "running")
    root = ET.fromstring(svg)
    fills = {
        a.get("href"): a.find(SVG + "rect").get("fill")  # type: ignore[union-attr]
        for a in root.iter(SVG + "a")
    }
    assert fills["#step-reserve"] == graph.COLORS["succeeded"][0]
    assert fills["#step-charge"] == graph.COLORS["failed"][0]
    assert fills["#step-release"] == graph.COLORS["pending"][0]
    bands = [t.text for t in root.iter(SVG + "text") if t.get("class") == "band"]
    assert bands == ["on-error handlers", "compensations"]
    assert graph.workflow_graph_svg(saga_run) == svg  # deterministic


def test_graph_places_steps_left_to_right_by_dependency_level(saga_run: Run) -> None:
    root = ET.fromstring(graph.workflow_graph_svg(saga_run))
    x = {
        a.get("data-step", ""): float(a.find(SVG + "rect").get("x"))  # type: ignore[union-attr,arg-type]
        for a in root.iter(SVG + "a")
    }
    assert x["reserve"] < x["each"] < x["process[0]"] == x["process[1]"] < x["charge"]
    assert x["charge"] < x["charge-backup"]
    assert x["charge"] < x["ship"] == x["label"]
    edges = root.findall(f".//{SVG}line[@marker-end]")
    assert len(edges) >= 7


def test_graph_escapes_names_and_definition_graph_is_all_pending(saved_workflow: Any) -> None:
    definition = saved_workflow(SAGA)
    svg = graph.definition_graph_svg(definition)
    statuses = _node_status(svg)
    assert set(statuses.values()) == {"pending"}
    assert {"reserve", "process", "charge-backup", "release", "notify"} <= set(statuses)
    run = Run(definition=definition, workflow_name="x", state={"steps": {}})
    run.state["steps"]["<b>&x"] = {"base": "<b>&x", "suffix": "", "kind": "action", "scope": "",
                                   "status": "failed", "attempt": 1}  # fmt: skip
    svg = graph.workflow_graph_svg(run)
    assert "<b>" not in svg and "&lt;b&gt;&amp;x" in svg
    ET.fromstring(svg)


def _attempt(
    run: Run, step: str, number: int, status: str, q: float, s: float | None, f: float | None
) -> StepAttempt:
    base = datetime(2026, 1, 1, tzinfo=UTC)

    def at(v: float | None) -> datetime | None:
        return None if v is None else base + timedelta(seconds=v)

    return StepAttempt.objects.create(
        run=run, step=step, step_type="noop", number=number, status=status,
        queued_at=at(q), started_at=at(s), finished_at=at(f),
    )  # fmt: skip


def test_gantt_one_bar_per_attempt_with_waits_and_queue_time(saved_workflow: Any) -> None:
    definition = saved_workflow(SAGA)
    run = Run.objects.create(definition=definition, workflow_name="graph-demo", workflow_version=1,
                             status="running", state={"schema": 1, "phase": "main", "steps": {}})  # fmt: skip
    t0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    for name, status in (("reserve", "succeeded"), ("charge", "retrying"), ("ship", "running")):
        run.state["steps"][name] = {"base": name, "suffix": "", "kind": "action", "scope": "",
                                    "status": status, "attempt": 1, "started": t0}  # fmt: skip
    attempts = [
        _attempt(run, "reserve", 1, "succeeded", 0, 0.5, 2),
        _attempt(run, "charge", 1, "failed", 2, 2.1, 3),
        _attempt(run, "charge", 2, "failed", 5, 5.2, 6),  # waited 2 s
        _attempt(run, "charge", 3, "succeeded", 10, 10, 11),  # waited 4 s
        _attempt(run, "ship", 1, "running", 11, 11.5, None),
    ]
    svg = graph.gantt_svg(run, now=t0 + 20)
    rects = _elements(svg, "rect")
    bars = [r for r in rects if "attempt" in r.get("class", "").split()]
    assert len(bars) == len(attempts) == 5
    waits = [r for r in rects if r.get("class") == "wait"]
    assert len(waits) == 2
    assert "retry delay" in ET.tostring(waits[0], encoding="unicode")
    assert len([r for r in rects if r.get("class") == "queued"]) == 4  # one started as queued
    assert {b.get("fill") for b in bars} == {
        graph.ATTEMPT_COLORS[s] for s in ("succeeded", "failed", "running")
    }
    running = next(b for b in bars if "at-running" in b.get("class", ""))
    # the running attempt reaches "now" (t=20): the right edge of the chart
    assert float(running.get("x")) + float(running.get("width")) == pytest.approx(  # type: ignore[arg-type]
        graph.LABEL_W + graph.CHART_W, abs=0.2
    )
    assert graph.gantt_svg(run, attempts, now=t0 + 20) == svg


def test_gantt_scales_to_200_rows(saved_workflow: Any) -> None:
    definition = saved_workflow(SAGA)
    steps = {f"s{i}": {"base": f"s{i}", "suffix": "", "kind": "action", "scope": "", "status": "succeeded",
                       "attempt": 1, "started": 1.0} for i in range(200)}  # fmt: skip
    run = Run(
        definition=definition,
        workflow_name="graph-demo",
        status="succeeded",
        state={"steps": steps},
    )
    base = datetime(2026, 1, 1, tzinfo=UTC)
    attempts = [
        StepAttempt(run=run, step=f"s{i}", number=1, status="succeeded", queued_at=base + timedelta(seconds=i),
                    started_at=base + timedelta(seconds=i), finished_at=base + timedelta(seconds=i + 1))
        for i in range(200)
    ]  # fmt: skip
    root = ET.fromstring(graph.gantt_svg(run, attempts))
    assert len([r for r in root.iter(SVG + "rect") if "attempt" in r.get("class", "")]) == 200
    assert int(root.get("height")) == graph.AXIS_H + 200 * 12 + 8  # type: ignore[arg-type]


def test_progress_eta_from_average_succeeded_duration(saved_workflow: Any) -> None:
    definition = saved_workflow(SAGA)
    now = time.time()
    done = Run.objects.create(definition=definition, workflow_name="graph-demo", workflow_version=1,
                              status="succeeded", state={"schema": 1, "phase": "done", "steps": {}})  # fmt: skip
    _attempt(done, "a", 1, "succeeded", 0, 0, 10)
    _attempt(done, "b", 1, "succeeded", 0, 0, 30)  # average 20 s
    _attempt(done, "c", 1, "failed", 0, 0, 100)  # failed attempts do not count
    steps = {
        "a": {"status": "succeeded"},
        "b": {"status": "running", "started": now - 5},
        "c": {"status": "queued", "started": now - 50},  # overdue: counts one average at most
        "d": {"status": "pending"},
        "e": {"status": "pending"},
        "f": {"status": "running", "kind": "flow"},  # flow steps do not count
    }
    for name, st in steps.items():
        st.update(base=name, suffix="", scope="", attempt=0, kind=st.get("kind", "action"))
    run = Run.objects.create(definition=definition, workflow_name="graph-demo", workflow_version=1,
                             status="running", state={"schema": 1, "phase": "main", "steps": steps})  # fmt: skip
    p = graph.progress(run, now=now)
    assert (p["completed"], p["running"], p["pending"], p["failed"], p["total"]) == (1, 2, 2, 0, 5)
    assert p["percent"] == 20
    assert p["avg_step_seconds"] == pytest.approx(20)
    assert p["eta_seconds"] == pytest.approx(4 * 20 - 5 - 20)
    assert graph.progress(done)["eta_seconds"] == 0.0
    other = Run.objects.create(definition=definition, workflow_name="never-ran", workflow_version=1,
                               status="running", state={"schema": 1, "phase": "main", "steps": steps})  # fmt: skip
    assert graph.progress(other, now=now)["eta_seconds"] is None


def test_charts_are_accessible_svg() -> None:
    series = [("12:00", 3), ("12:01", 0), ("12:02", 7)]
    svg = charts.bar_chart_svg(
        series, title="Runs per minute", links=["/runs/?a=1&b=2", None, None]
    )
    root = ET.fromstring(svg)
    assert root.get("role") == "img" and "Runs per minute" in root.get("aria-label", "")
    assert len([r for r in root.iter(SVG + "rect") if r.get("class") == "bar"]) == 3
    assert root.find(SVG + "a").get("href") == "/runs/?a=1&b=2"  # type: ignore[union-attr]
    heights = [float(r.get("height")) for r in root.iter(SVG + "rect")]  # type: ignore[arg-type]
    assert heights[2] > heights[0] > heights[1] == 0
    spark = ET.fromstring(charts.sparkline_svg([1, None, 3, 2], title="Failure rate"))
    assert len(list(spark.iter(SVG + "polyline"))) == 2
    assert "last 2" in spark.get("aria-label", "")
    ET.fromstring(charts.sparkline_svg([]))
    ET.fromstring(charts.bar_chart_svg([]))


def test_diff_states_nested() -> None:
    a = {
        "status": "running",
        "steps": {"x": {"status": "queued", "attempt": 1}, "y": {}},
        "completed": ["a"],
    }
    b = {
        "status": "failed",
        "steps": {"x": {"status": "failed", "attempt": 1}, "z": 1},
        "completed": ["a", "x"],
    }
    changes = {(c["path"], c["change"]): (c["old"], c["new"]) for c in statediff.diff_states(a, b)}
    assert changes == {
        ("status", "changed"): ("running", "failed"),
        ("steps.x.status", "changed"): ("queued", "failed"),
        ("steps.y", "removed"): ({}, None),
        ("steps.z", "added"): (None, 1),
        ("completed[1]", "added"): (None, "x"),
    }
    assert statediff.diff_states(a, a) == []
    assert statediff.diff_states({"n": 1}, {"n": True}) == [
        {"path": "n", "change": "changed", "old": 1, "new": True}
    ]


def test_text_diff_escapes_and_marks_lines() -> None:
    html = statediff.text_diff("name: a\nsteps: <x>\nkeep\n", "name: b\nsteps: <x>\nkeep\nnew: 1\n")
    assert "<x>" not in html and "&lt;x&gt;" in html
    assert html.count('class="del"') == 1 and html.count('class="add"') == 2
    assert "@@ -1,3 +1,4 @@" in html
    assert "no differences" in statediff.text_diff("a\n", "a\n")
