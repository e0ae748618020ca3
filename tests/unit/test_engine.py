"""The pure engine (``workflows.engine.decide``): one test per rule of CONTRACT §1-2.

Pure tests: no Django, no database. Most drive ``decide`` through ``tests.unit.sim``.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.unit.sim import Simulator, fail, load, ok, simulate
from workflows import engine
from workflows.engine import (
    AttemptFailed,
    AttemptSucceeded,
    CancelRun,
    CloseAttempt,
    CloseInterventions,
    Decision,
    DispatchAttempt,
    EngineError,
    InterventionDecided,
    OpenIntervention,
    PauseRun,
    RecordAttempt,
    ResumeRun,
    RetryStep,
    RunTimedOut,
    SetTimer,
    SkipStep,
    StartRun,
    TimerFired,
    decide,
)

ROOT = Path(__file__).resolve().parents[2]
T0 = 1000.0


def cmds(decision: Decision, kind: type) -> list[Any]:
    return [c for c in decision.commands if isinstance(c, kind)]


def dispatched(decision: Decision) -> list[str]:
    return [c.step for c in cmds(decision, DispatchAttempt)]


def statuses(state: dict[str, Any]) -> dict[str, str]:
    return {n: s["status"] for n, s in state["steps"].items()}


def wf(steps: str, settings: str = "") -> str:
    text = "name: t\n"
    if settings:
        text += "settings:\n" + _indent(settings, 2)
    return text + "steps:\n" + _indent(steps, 2)


def _indent(block: str, n: int) -> str:
    lines = [line for line in block.strip("\n").splitlines()]
    margin = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "".join(" " * n + line[margin:] + "\n" for line in lines)


# --------------------------------------------------------------------------- ordering


def test_sequential_default_ordering() -> None:
    sim = Simulator(
        wf("""
        - {name: a, type: noop}
        - {name: b, type: noop}
        - {name: c, type: noop}
        """)
    )
    d = sim.start()
    assert dispatched(d) == ["a"]
    assert statuses(d.state) == {"a": "queued", "b": "pending", "c": "pending"}
    d = sim.feed(AttemptSucceeded(T0 + 1, "a", 1, {"x": 1}))
    assert dispatched(d) == ["b"]
    d = sim.feed(AttemptSucceeded(T0 + 2, "b", 1))
    assert dispatched(d) == ["c"]
    d = sim.feed(AttemptSucceeded(T0 + 3, "c", 1))
    assert d.state["status"] == "succeeded"
    assert d.state["output"] == {"a": {"x": 1}, "b": None, "c": None}
    assert d.state["completed"] == ["a", "b", "c"]


def test_needs_parallel_branches_dispatched_in_same_decision() -> None:
    sim = Simulator(
        wf("""
        - {name: a, type: noop}
        - {name: b, type: noop, needs: [a]}
        - {name: c, type: noop, needs: [a]}
        - {name: d, type: noop, needs: [b, c]}
        """)
    )
    assert dispatched(sim.start()) == ["a"]
    d = sim.feed(AttemptSucceeded(T0 + 1, "a", 1))
    assert sorted(dispatched(d)) == ["b", "c"]
    d = sim.feed(AttemptSucceeded(T0 + 2, "b", 1))
    assert dispatched(d) == []  # d still waits for c
    d = sim.feed(AttemptSucceeded(T0 + 3, "c", 1))
    assert dispatched(d) == ["d"]
    d = sim.feed(AttemptSucceeded(T0 + 4, "d", 1))
    assert d.state["status"] == "succeeded"


def test_needs_empty_starts_at_once() -> None:
    sim = Simulator(
        wf("""
        - {name: a, type: noop}
        - {name: b, type: noop, needs: []}
        - {name: c, type: noop}
        """)
    )
    assert sorted(dispatched(sim.start())) == ["a", "b"]


def test_skipped_dependency_counts_as_done() -> None:
    r = simulate(
        wf("""
        - {name: a, type: noop, if: "inputs.go"}
        - {name: b, type: noop, needs: [a]}
        - {name: c, type: noop}
        """),
        {"go": False},
    )
    assert r.status == "succeeded"
    assert statuses(r.state) == {"a": "skipped", "b": "succeeded", "c": "succeeded"}
    assert r.dispatched() == ["b", "c"]


def test_if_condition_skips_step_and_dependents_run() -> None:
    r = simulate(
        wf("""
        - {name: a, type: noop, with: {n: 5}}
        - {name: b, type: noop, if: "steps.a.output.n > 10"}
        - {name: c, type: noop, if: "steps.b.status == 'skipped'"}
        - {name: d, type: noop, if: "steps.a.output.n == 5"}
        """)
    )
    assert r.status == "succeeded"
    assert statuses(r.state) == {
        "a": "succeeded",
        "b": "skipped",
        "c": "succeeded",
        "d": "succeeded",
    }
    assert r.dispatched() == ["a", "c", "d"]
    assert r.state["steps"]["b"]["attempt"] == 0


@pytest.mark.parametrize(
    ("amount", "taken", "not_taken"), [(2000, "review", "auto"), (5, "auto", "review")]
)
def test_if_flow_step_then_else(amount: int, taken: str, not_taken: str) -> None:
    r = simulate(
        wf("""
        - name: big
          type: if
          condition: "inputs.amount > 1000.5"
          steps: [{name: review, type: noop}]
          else: [{name: auto, type: noop}]
        - {name: after, type: noop}
        """),
        {"amount": amount},
    )
    assert r.status == "succeeded"
    assert r.step_status(taken) == "succeeded"
    assert r.step_status(not_taken) == "skipped"
    assert r.step_status("big") == "succeeded"
    assert r.dispatched() == [taken, "after"]


# --------------------------------------------------------------------------- foreach


def test_foreach_names_and_renders_items() -> None:
    r = simulate(
        wf("""
        - name: each
          type: foreach
          foreach: "inputs.items"
          steps:
            - {name: pack, type: noop, with: {sku: "{{ foreach.item.sku }}", i: "{{ foreach.index }}"}}
            - {name: ship, type: noop, with: {sku: "{{ steps.pack.output.sku }}"}}
        - {name: done, type: noop, with: {all: "{{ steps.each.output }}"}}
        """),
        {"items": [{"sku": "x"}, {"sku": "y"}]},
    )
    assert r.status == "succeeded"
    inputs = {d.step: d.input for d in r.dispatches}
    assert inputs["pack[0]"] == {"sku": "x", "i": 0}
    assert inputs["pack[1]"] == {"sku": "y", "i": 1}
    assert inputs["ship[0]"] == {"sku": "x"}
    assert inputs["ship[1]"] == {"sku": "y"}
    assert inputs["done"] == {"all": [{"sku": "x"}, {"sku": "y"}]}
    for n in ("pack[0]", "pack[1]", "ship[0]", "ship[1]"):
        assert r.step_status(n) == "succeeded"
    # within an iteration the body is sequential
    order = r.dispatched()
    assert order.index("pack[0]") < order.index("ship[0]")


def test_foreach_max_parallel_respected() -> None:
    items = list(range(7))
    sim = Simulator(
        wf("""
        - name: each
          type: foreach
          foreach: "inputs.items"
          max-parallel: 2
          steps: [{name: ship, type: noop, with: {n: "{{ foreach.item }}"}}]
        """),
        {"items": items},
        # different durations so iterations finish out of order
        script=lambda step, attempt, inp: ok(inp, duration=1.0 + (inp["n"] * 7) % 3),
    )
    d = sim.start()
    assert dispatched(d) == ["ship[0]", "ship[1]"]
    r = sim.run()
    assert r.status == "succeeded"
    assert r.max_in_flight["ship"] == 2
    # at no point more than 2 iterations queued/running
    for _, snap in r.snapshots:
        assert (
            sum(1 for n, s in snap.items() if n.startswith("ship[") and s in ("queued", "running"))
            <= 2
        )
    assert r.state["steps"]["each"]["output"] == [{"n": i} for i in items]


def test_foreach_empty_list() -> None:
    r = simulate(
        wf("""
        - name: each
          type: foreach
          foreach: "inputs.items"
          steps: [{name: ship, type: noop}]
        - {name: after, type: noop}
        """),
        {"items": []},
    )
    assert r.status == "succeeded"
    assert r.dispatched() == ["after"]
    assert r.step_status("each") == "succeeded"
    assert r.state["steps"]["each"]["output"] == []


# --------------------------------------------------------------------------- run timeout


def test_run_timeout() -> None:
    sim = Simulator(
        wf(
            """
            - {name: a, type: noop}
            """,
            "timeout: 10s",
        )
    )
    d = sim.start()
    assert d.state["deadline"] == T0 + 10
    before = copy.deepcopy(d.state)
    d = sim.feed(RunTimedOut(T0 + 5))  # before the deadline: ignored
    assert d.state == before
    assert cmds(d, DispatchAttempt) == [] and cmds(d, CloseAttempt) == []
    d = sim.feed(RunTimedOut(T0 + 10))
    assert d.state["status"] == "failed"
    assert d.state["error"]["type"] == "RunTimeout"
    assert cmds(d, CloseAttempt) == [CloseAttempt("a", 1, "cancelled")]
    assert d.state["steps"]["a"]["status"] == "cancelled"


def test_run_timeout_via_simulator() -> None:
    r = simulate(
        wf("""- {name: a, type: noop}""", "timeout: 10s"),
        script={"a": ok(duration=60)},
        run_timeout=True,
    )
    assert r.status == "failed"
    assert r.state["error"]["type"] == "RunTimeout"


# --------------------------------------------------------------------------- retry


RETRY = """
- name: a
  type: noop
  on-failure:
    retry: {{max-attempts: 3, delay: 1s{extra}}}
"""


def test_retry_counts_exactly_max_attempts_retries() -> None:
    r = simulate(wf(RETRY.format(extra="")), script={"a": fail()})
    assert r.status == "failed"
    assert r.executions("a") == 4
    assert [d.attempt for d in r.dispatches] == [1, 2, 3, 4]
    assert r.state["steps"]["a"]["retries"] == 3
    assert r.state["error"]["step"] == "a"


def test_retry_then_success() -> None:
    r = simulate(wf(RETRY.format(extra="")), script={"a": [fail(), fail(), ok(7)]})
    assert r.status == "succeeded"
    assert r.executions("a") == 3
    assert r.state["output"] == {"a": 7}


@pytest.mark.parametrize(
    ("extra", "jitter", "expected"),
    [
        ("", 1.0, [1, 1, 1]),
        (", strategy: fixed", 0.8, [1, 1, 1]),  # jitter factor ignored without `jitter: true`
        (", strategy: linear", 1.0, [1, 2, 3]),
        (", strategy: exponential", 1.0, [1, 2, 4]),
        (", strategy: exponential, multiplier: 3", 1.0, [1, 3, 9]),
        (", strategy: exponential, multiplier: 3, max-delay: 5s", 1.0, [1, 3, 5]),
        (", strategy: linear, max-delay: 2s", 1.0, [1, 2, 2]),
        (", strategy: linear, jitter: true", 0.75, [0.75, 1.5, 2.25]),
        (", strategy: exponential, jitter: true, max-delay: 3s", 1.25, [1.25, 2.5, 3.75]),
    ],
)
def test_retry_waits_follow_policy(extra: str, jitter: float, expected: list[float]) -> None:
    r = simulate(
        wf(RETRY.format(extra=extra)),
        script={"a": fail(duration=0.5)},
        jitter=lambda step, attempt: jitter,
    )
    assert [w.step for w in r.waits] == ["a"] * 3
    assert [w.seconds for w in r.waits] == pytest.approx(expected)
    # each retry is dispatched exactly when its timer comes due
    attempts = r.dispatches[1:]
    assert [d.at for d in attempts] == pytest.approx([w.due for w in r.waits])


def test_retry_without_delay_dispatches_at_once() -> None:
    sim = Simulator(wf("""- {name: a, type: noop, on-failure: {retry: {max-attempts: 2}}}"""))
    sim.start()
    d = sim.feed(AttemptFailed(T0 + 1, "a", 1, {"type": "X", "message": ""}))
    assert [(c.step, c.attempt) for c in cmds(d, DispatchAttempt)] == [("a", 2)]
    assert cmds(d, SetTimer) == []


def test_retry_status_short_and_long_waits() -> None:
    text = wf("""- {name: a, type: noop, on-failure: {retry: {max-attempts: 2, delay: 1m}}}""")
    for short_wait, expected in ((120.0, "running"), (30.0, "waiting")):
        sim = Simulator(text, short_wait=short_wait)
        sim.start()
        d = sim.feed(AttemptFailed(T0 + 1, "a", 1, {"type": "X", "message": ""}))
        assert d.state["steps"]["a"]["status"] == "retrying"
        assert cmds(d, SetTimer) == [SetTimer("a", T0 + 61)]
        assert d.state["status"] == expected
        assert engine.next_due(d.state) == T0 + 61
        # an early timer does nothing
        d2 = sim.feed(TimerFired(T0 + 30, "a"))
        assert dispatched(d2) == []
        d3 = sim.feed(TimerFired(T0 + 61, "a"))
        assert [(c.step, c.attempt) for c in cmds(d3, DispatchAttempt)] == [("a", 2)]
        assert d3.state["status"] == "running"


@pytest.mark.parametrize(
    ("error_type", "executions"), [("ValidationError", 1), ("TimeoutError", 4)]
)
def test_retry_condition_uses_error_type(error_type: str, executions: int) -> None:
    r = simulate(
        wf(RETRY.format(extra=", condition: \"error.type != 'ValidationError'\"")),
        script={"a": fail(error_type)},
    )
    assert r.status == "failed"
    assert r.executions("a") == executions


@pytest.mark.parametrize(
    ("error_type", "executions"),
    [("ConnectionError", 4), ("HTTPStatusError", 4), ("ValueError", 1)],
)
def test_retry_on(error_type: str, executions: int) -> None:
    r = simulate(
        wf(RETRY.format(extra=", retry-on: [ConnectionError, HTTPStatusError]")),
        script={"a": fail(error_type)},
    )
    assert r.executions("a") == executions


@pytest.mark.parametrize(("error_type", "executions"), [("ValidationError", 1), ("Other", 4)])
def test_do_not_retry_on(error_type: str, executions: int) -> None:
    r = simulate(
        wf(RETRY.format(extra=", do-not-retry-on: [ValidationError]")),
        script={"a": fail(error_type)},
    )
    assert r.executions("a") == executions


def test_retry_on_and_do_not_retry_on_and_condition_all_apply() -> None:
    extra = ", retry-on: [A, B], do-not-retry-on: [B], condition: \"error.message != 'stop'\""
    text = wf(RETRY.format(extra=extra))
    assert simulate(text, script={"a": fail("A")}).executions("a") == 4
    assert simulate(text, script={"a": fail("B")}).executions("a") == 1
    assert simulate(text, script={"a": fail("C")}).executions("a") == 1
    assert simulate(text, script={"a": fail("A", "stop")}).executions("a") == 1


# --------------------------------------------------------------------------- fallback / continue


def test_fallback_runs_only_after_retries_and_run_still_fails() -> None:
    r = simulate(
        wf("""
        - name: a
          type: noop
          on-failure:
            retry: {max-attempts: 2, delay: 1s}
            fallback:
              - {name: fb1, type: noop}
              - {name: fb2, type: noop}
        - {name: b, type: noop}
        """),
        script={"a": fail()},
    )
    assert r.dispatched() == ["a", "a", "a", "fb1", "fb2"]
    assert r.status == "failed"
    assert r.state["error"]["type"] == "Boom"  # the original error is preserved
    assert r.state["error"]["step"] == "a"
    assert r.step_status("fb1") == "succeeded"
    assert r.step_status("b") == "cancelled"
    assert r.dispatches[3].kind == "fallback"


def test_fallback_not_run_when_retry_succeeds() -> None:
    r = simulate(
        wf("""
        - name: a
          type: noop
          on-failure:
            retry: {max-attempts: 2}
            fallback: [{name: fb, type: noop}]
        """),
        script={"a": [fail(), ok()]},
    )
    assert r.status == "succeeded"
    assert "fb" not in r.dispatched()


def test_fallback_with_continue_run_succeeds() -> None:
    r = simulate(
        wf("""
        - name: a
          type: noop
          on-failure:
            fallback: [{name: fb, type: noop}]
            continue: true
        - {name: b, type: noop}
        """),
        script={"a": fail()},
    )
    assert r.dispatched() == ["a", "fb", "b"]
    assert r.status == "succeeded"
    assert r.step_status("a") == "failed"


def test_continue_run_succeeds_with_step_failed() -> None:
    r = simulate(
        wf("""
        - name: a
          type: noop
          on-failure: {retry: {max-attempts: 1}, continue: true}
        - {name: b, type: noop, with: {prev: "{{ steps.a.status }}"}}
        """),
        script={"a": fail("Nope", "bad")},
    )
    assert r.status == "succeeded"
    assert r.step_status("a") == "failed"
    assert r.state["steps"]["a"]["error"] == {"type": "Nope", "message": "bad"}
    assert r.executions("a") == 2
    assert r.dispatches[-1].input == {"prev": "failed"}
    assert "a" not in r.state["output"]


def test_step_level_on_failure_replaces_workflow_level_entirely() -> None:
    text = wf(
        """
        - name: a
          type: noop
          on-failure: {continue: true}
        - {name: b, type: noop}
        """,
        """
        on-failure:
          retry: {max-attempts: 3}
          fallback: [{name: wfb, type: noop}]
        """,
    )
    r = simulate(text, script={"a": fail()})
    # no retry and no fallback from the workflow level for a
    assert r.executions("a") == 1
    assert not any(s.startswith("wfb") for s in r.dispatched())
    assert r.status == "succeeded"
    # b has no policy of its own: the workflow-level one applies (3 retries, then fallback)
    r2 = simulate(text, script={"b": fail()})
    assert r2.executions("b") == 4
    assert [s for s in r2.dispatched() if s.startswith("wfb")] != []
    assert r2.status == "failed"


def test_flow_steps_do_not_take_workflow_level_on_failure() -> None:
    text = wf(
        """
        - name: each
          type: foreach
          foreach: "inputs.items"
          steps: [{name: ship, type: noop}]
        - {name: after, type: noop}
        """,
        """
        on-failure: {retry: {max-attempts: 2}, continue: true}
        """,
    )
    spec = load(text)
    nodes = engine.index(spec)
    assert nodes["each"].policy is None
    assert nodes["ship"].policy is spec.settings.on_failure
    # the foreach expression does not yield a list: the flow step fails, no retry, no continue
    r = simulate(spec, {"items": "not-a-list"})
    assert r.status == "failed"
    assert r.step_status("each") == "failed"
    assert r.state["steps"]["each"]["attempt"] == 1
    assert "after" not in r.dispatched()


def test_fallback_compensation_and_handler_steps_never_take_on_failure() -> None:
    text = wf(
        """
        - name: a
          type: noop
          compensate: {name: undo-a, type: noop}
        - name: b
          type: noop
          on-failure:
            retry: {max-attempts: 1}
            fallback: [{name: fb, type: noop}]
        """,
        """
        on-failure: {retry: {max-attempts: 3}, continue: true}
        on-error: [{name: h, type: noop}]
        """,
    )
    nodes = engine.index(load(text))
    for name in ("fb", "undo-a", "h"):
        assert nodes[name].policy is None
    r = simulate(text, script={"b": fail(), "fb": fail(), "undo-a": fail(), "h": fail()})
    assert r.executions("b") == 2
    assert r.executions("fb") == 1
    assert r.executions("h") == 1
    assert r.executions("undo-a") == 1
    assert r.status == "failed"  # the compensation failed


# --------------------------------------------------------------------------- escalation


ESCALATE = wf("""
- name: a
  type: noop
  on-failure: {retry: {max-attempts: 1}, escalate: true}
- {name: b, type: noop}
""")


def _escalated() -> Simulator:
    sim = Simulator(ESCALATE)
    sim.start()
    sim.feed(AttemptFailed(T0 + 1, "a", 1, {"type": "X", "message": "m"}))
    d = sim.feed(AttemptFailed(T0 + 2, "a", 2, {"type": "X", "message": "m"}))
    [oi] = cmds(d, OpenIntervention)
    assert oi.step == "a" and oi.kind == "escalation"
    assert {"retry", "skip", "abort"} <= set(oi.options)
    assert d.state["status"] == "awaiting_intervention"
    assert dispatched(d) == []
    return sim


def test_escalate_retry() -> None:
    sim = _escalated()
    d = sim.feed(InterventionDecided(T0 + 3, "a", "retry"))
    assert [(c.step, c.attempt) for c in cmds(d, DispatchAttempt)] == [("a", 3)]
    assert d.state["status"] == "running"
    d = sim.feed(AttemptSucceeded(T0 + 4, "a", 3))
    assert dispatched(d) == ["b"]
    assert sim.run().status == "succeeded"


def test_escalate_retry_gets_fresh_retries() -> None:
    sim = _escalated()
    sim.feed(InterventionDecided(T0 + 3, "a", "retry"))
    d = sim.feed(AttemptFailed(T0 + 4, "a", 3, {"type": "X", "message": "m"}))
    assert [(c.step, c.attempt) for c in cmds(d, DispatchAttempt)] == [("a", 4)]


def test_escalate_skip() -> None:
    sim = _escalated()
    d = sim.feed(InterventionDecided(T0 + 3, "a", "skip", output={"manual": True}))
    assert d.state["steps"]["a"]["status"] == "skipped"
    assert d.state["steps"]["a"]["output"] == {"manual": True}
    assert dispatched(d) == ["b"]
    assert sim.run().status == "succeeded"


def test_escalate_abort() -> None:
    sim = _escalated()
    d = sim.feed(InterventionDecided(T0 + 3, "a", "abort"))
    # the lead's choice: abort stops the run as a cancel does (no handlers, no compensation)
    assert d.state["status"] in ("cancelled", "failed")
    assert d.state["steps"]["b"]["status"] == "cancelled"
    assert dispatched(d) == []
    assert sim.run().status == d.state["status"]


def test_escalate_compensate_runs_handlers_and_compensations() -> None:
    text = wf(
        """
        - name: a
          type: noop
          compensate: {name: undo-a, type: noop}
        - name: b
          type: noop
          on-failure: {escalate: true}
        - {name: c, type: noop}
        """,
        "on-error: [{name: h, type: noop}]",
    )
    r = simulate(text, script={"b": fail()}, escalations={"b": "compensate"})
    assert r.dispatched() == ["a", "b", "h", "undo-a"]
    assert r.status == "compensated"
    assert r.step_status("c") == "cancelled"


def test_escalate_bad_action() -> None:
    sim = _escalated()
    with pytest.raises(EngineError):
        sim.feed(InterventionDecided(T0 + 3, "a", "approve"))


def test_escalation_via_simulator() -> None:
    r = simulate(ESCALATE, script={"a": [fail(), fail(), ok()]}, escalations={"a": "retry"})
    assert r.status == "succeeded"
    assert r.executions("a") == 3
    assert len(r.interventions) == 1


# --------------------------------------------------------------------------- on-error / compensation


COMPENSATED = """
- name: a
  type: noop
  compensate: {name: undo-a, type: noop}
- name: b
  type: noop
  compensate: {name: undo-b, type: noop}
- {name: plain, type: noop}
- {name: c, type: noop}
"""


def test_handlers_then_compensations_newest_first() -> None:
    r = simulate(
        wf(COMPENSATED, "on-error: [{name: h1, type: noop}, {name: h2, type: noop}]"),
        script={"c": fail()},
    )
    assert r.dispatched() == ["a", "b", "plain", "c", "h1", "h2", "undo-b", "undo-a"]
    assert r.status == "compensated"
    assert r.executions("h1") == 1
    assert r.step_status("a") == "compensated"
    assert r.step_status("b") == "compensated"
    assert r.step_status("plain") == "succeeded"
    assert r.step_status("c") == "failed"
    assert r.dispatches[-1].kind == "compensation"
    assert r.dispatches[4].kind == "handler"


def test_compensation_order_follows_completion_not_listing() -> None:
    r = simulate(
        wf("""
        - name: a
          type: noop
          compensate: {name: undo-a, type: noop}
        - name: b
          type: noop
          needs: []
          compensate: {name: undo-b, type: noop}
        - {name: c, type: noop, needs: [a, b]}
        """),
        script={"a": ok(duration=5), "b": ok(duration=1), "c": fail()},
    )
    assert r.state["completed"][:2] == ["b", "a"]
    assert r.dispatched()[-2:] == ["undo-a", "undo-b"]
    assert r.status == "compensated"


def test_handler_failure_still_compensates() -> None:
    r = simulate(
        wf(COMPENSATED, "on-error: [{name: h1, type: noop}, {name: h2, type: noop}]"),
        script={"c": fail(), "h1": fail()},
    )
    assert r.dispatched()[-4:] == ["h1", "h2", "undo-b", "undo-a"]
    assert r.status == "compensated"


def test_compensation_failure_means_failed() -> None:
    r = simulate(wf(COMPENSATED), script={"c": fail(), "undo-b": fail()})
    assert r.dispatched()[-2:] == ["undo-b", "undo-a"]
    assert r.status == "failed"
    assert r.state["error"]["compensation_failed"] == ["undo-b"]
    assert r.step_status("undo-a") == "succeeded"


def test_no_compensations_means_failed() -> None:
    r = simulate(
        wf(
            """
    - {name: a, type: noop}
    - {name: b, type: noop}
    """,
            "on-error: [{name: h, type: noop}]",
        ),
        script={"b": fail()},
    )
    assert r.dispatched() == ["a", "b", "h"]
    assert r.status == "failed"


def test_compensation_branch_only_failed_branch() -> None:
    text = """
    - name: a
      type: noop
      compensate: {name: undo-a, type: noop}
    - name: other
      type: noop
      needs: []
      compensate: {name: undo-other, type: noop}
    - {name: c, type: noop, needs: [a]}
    """
    r = simulate(wf(text, "compensation: branch"), script={"c": fail()})
    assert r.dispatched()[-1] == "undo-a"
    assert "undo-other" not in r.dispatched()
    assert r.status == "compensated"
    r2 = simulate(wf(text), script={"c": fail()})
    assert "undo-other" in r2.dispatched() and "undo-a" in r2.dispatched()


def test_compensate_foreach_iterations() -> None:
    r = simulate(
        wf("""
        - name: each
          type: foreach
          foreach: "inputs.items"
          steps:
            - name: ship
              type: noop
              with: {n: "{{ foreach.item }}"}
              compensate: {name: unship, type: noop, with: {n: "{{ foreach.item }}"}}
        - {name: c, type: noop}
        """),
        {"items": [1, 2]},
        script={"c": fail()},
    )
    assert r.status == "compensated"
    comps = [d for d in r.dispatches if d.kind == "compensation"]
    assert sorted(d.step for d in comps) == ["unship[0]", "unship[1]"]
    assert {d.step: d.input for d in comps} == {"unship[0]": {"n": 1}, "unship[1]": {"n": 2}}


# --------------------------------------------------------------------------- approval / sleep


APPROVAL = wf("""
- {name: review, type: approval, with: {prompt: "Ship {{ inputs.id }}?"}}
- {name: after, type: noop}
""")


def test_approval_approve() -> None:
    sim = Simulator(APPROVAL, {"id": "o-1"})
    d = sim.start()
    [oi] = cmds(d, OpenIntervention)
    assert oi.kind == "approval" and oi.prompt == "Ship o-1?"
    assert set(oi.options) == {"approve", "reject"}
    assert cmds(d, RecordAttempt)[0].step == "review"
    assert dispatched(d) == []
    assert d.state["status"] == "awaiting_intervention"
    d = sim.feed(InterventionDecided(T0 + 5, "review", "approve", by="alice", comment="ok"))
    assert d.state["steps"]["review"]["status"] == "succeeded"
    assert d.state["steps"]["review"]["output"]["action"] == "approve"
    assert d.state["steps"]["review"]["output"]["by"] == "alice"
    assert dispatched(d) == ["after"]
    assert cmds(d, CloseInterventions) == [CloseInterventions("review")]


def test_approval_reject_fails_the_run() -> None:
    r = simulate(APPROVAL, {"id": "o-1"}, approvals={"review": "reject"})
    assert r.status == "failed"
    assert r.step_status("review") == "failed"
    assert r.state["steps"]["review"]["error"]["type"] == "Rejected"
    assert "after" not in r.dispatched()


def test_approval_bad_action() -> None:
    sim = Simulator(APPROVAL, {"id": "o-1"})
    sim.start()
    with pytest.raises(EngineError):
        sim.feed(InterventionDecided(T0 + 1, "review", "retry"))


def test_sleep_long_timer_waiting_then_succeeds() -> None:
    sim = Simulator(
        wf("""
    - {name: nap, type: sleep, with: {duration: 2h}}
    - {name: after, type: noop}
    """)
    )
    d = sim.start()
    assert cmds(d, SetTimer) == [SetTimer("nap", T0 + 7200)]
    assert cmds(d, RecordAttempt)[0].step_type == "sleep"
    assert dispatched(d) == []
    assert d.state["status"] == "waiting"
    assert engine.next_due(d.state) == T0 + 7200
    d = sim.feed(TimerFired(T0 + 10, "nap"))  # too early
    assert d.state["steps"]["nap"]["status"] == "running"
    d = sim.feed(TimerFired(T0 + 7200, "nap"))
    assert d.state["steps"]["nap"]["output"] == {"slept": 7200}
    assert cmds(d, CloseAttempt) == [CloseAttempt("nap", 1, "succeeded", {"slept": 7200})]
    assert dispatched(d) == ["after"]
    assert d.state["status"] == "running"


def test_sleep_status_short_and_long() -> None:
    text = wf("""- {name: nap, type: sleep, with: {duration: 5s}}""")
    d = Simulator(text, short_wait=30.0).start()
    # a durable timer holds no worker; CONTRACT: `waiting` = "a durable timer or a long retry delay"
    assert d.state["status"] in ("waiting", "running")
    d_long = Simulator(text, short_wait=1.0).start()
    assert d_long.state["status"] == "waiting"
    assert simulate(text).state["steps"]["nap"]["output"] == {"slept": 5}


# --------------------------------------------------------------------------- operator actions


SEQ = wf("""
- {name: a, type: noop}
- {name: b, type: noop, with: {prev: "{{ steps.a.output }}"}}
""")


def test_pause_and_resume() -> None:
    sim = Simulator(SEQ)
    sim.start()
    d = sim.feed(PauseRun(T0 + 0.5))
    assert d.state["status"] == "paused"
    d = sim.feed(AttemptSucceeded(T0 + 1, "a", 1, 42))
    assert d.state["steps"]["a"]["status"] == "succeeded"
    assert dispatched(d) == []
    assert d.state["status"] == "paused"
    d = sim.feed(ResumeRun(T0 + 2))
    assert [(c.step, c.input) for c in cmds(d, DispatchAttempt)] == [("b", {"prev": 42})]
    assert d.state["status"] == "running"


def test_pause_holds_retry_timer_until_resume() -> None:
    sim = Simulator(
        wf("""- {name: a, type: noop, on-failure: {retry: {max-attempts: 1, delay: 5s}}}""")
    )
    sim.start()
    sim.feed(AttemptFailed(T0 + 1, "a", 1, {"type": "X", "message": ""}))
    sim.feed(PauseRun(T0 + 2))
    d = sim.feed(TimerFired(T0 + 6, "a"))
    assert dispatched(d) == []
    d = sim.feed(ResumeRun(T0 + 7))
    assert [(c.step, c.attempt) for c in cmds(d, DispatchAttempt)] == [("a", 2)]


def test_cancel() -> None:
    sim = Simulator(
        wf("""
        - {name: a, type: noop}
        - {name: b, type: noop, needs: []}
        - {name: c, type: noop, needs: [a, b]}
        """)
    )
    sim.start()
    sim.feed(AttemptSucceeded(T0 + 1, "b", 1))
    d = sim.feed(CancelRun(T0 + 2))
    assert d.state["status"] == "cancelled"
    assert CloseAttempt("a", 1, "cancelled") in cmds(d, CloseAttempt)
    assert statuses(d.state) == {"a": "cancelled", "b": "succeeded", "c": "cancelled"}
    assert dispatched(d) == []
    # a late report of the cancelled attempt changes nothing
    d2 = sim.feed(AttemptSucceeded(T0 + 3, "a", 1))
    assert d2.state == d.state and dispatched(d2) == []
    with pytest.raises(EngineError):
        sim.feed(CancelRun(T0 + 4))


def test_retry_step_reopens_failed_run() -> None:
    sim = Simulator(SEQ, script={"a": [fail(), ok(5)]})
    r = sim.run()
    assert r.status == "failed"
    d = sim.feed(RetryStep(sim.now + 1, "a"))
    assert [(c.step, c.attempt) for c in cmds(d, DispatchAttempt)] == [("a", 2)]
    assert d.state["status"] == "running"
    assert d.state["error"] is None
    assert d.state["steps"]["b"]["status"] == "pending"
    r = sim.run()
    assert r.status == "succeeded"
    assert r.dispatches[-1].input == {"prev": 5}


def test_skip_step_with_output_reopens_failed_run() -> None:
    sim = Simulator(SEQ, script={"a": fail()})
    assert sim.run().status == "failed"
    d = sim.feed(SkipStep(sim.now + 1, "a", {"k": 1}))
    assert d.state["steps"]["a"]["status"] == "skipped"
    assert [(c.step, c.input) for c in cmds(d, DispatchAttempt)] == [("b", {"prev": {"k": 1}})]
    assert sim.run().status == "succeeded"


def test_retry_step_not_allowed_on_succeeded_step_or_after_compensation() -> None:
    sim = Simulator(SEQ)
    sim.run()
    with pytest.raises(EngineError):
        sim.feed(RetryStep(sim.now, "a"))
    sim2 = Simulator(wf(COMPENSATED), script={"c": fail()})
    assert sim2.run().status == "compensated"
    with pytest.raises(EngineError):
        sim2.feed(RetryStep(sim2.now, "c"))


# --------------------------------------------------------------------------- stale reports


def test_stale_and_duplicate_reports_change_nothing() -> None:
    sim = Simulator(
        wf("""
    - {name: a, type: noop, on-failure: {retry: {max-attempts: 2}}}
    - {name: b, type: noop}
    """)
    )
    sim.start()
    sim.feed(AttemptFailed(T0 + 1, "a", 1, {"type": "X", "message": ""}))  # attempt 2 queued
    state = copy.deepcopy(sim.state)
    for event in (
        AttemptSucceeded(T0 + 2, "a", 1),  # old attempt
        AttemptFailed(T0 + 2, "a", 1, {"type": "X", "message": ""}),
        AttemptSucceeded(T0 + 2, "a", 3),  # future attempt
        AttemptSucceeded(T0 + 2, "b", 1),  # not started
        AttemptSucceeded(T0 + 2, "nope", 1),  # unknown step
        TimerFired(T0 + 2, "b"),
    ):
        d = sim.feed(event)
        assert d.state == state, event
        assert d.commands == (), event
    sim.feed(AttemptSucceeded(T0 + 3, "a", 2, "x"))
    state = copy.deepcopy(sim.state)
    d = sim.feed(AttemptSucceeded(T0 + 4, "a", 2, "y"))  # duplicate
    assert d.state == state and d.commands == ()
    d = sim.feed(AttemptFailed(T0 + 4, "a", 2, {"type": "X", "message": ""}))
    assert d.state == state and d.commands == ()


# --------------------------------------------------------------------------- errors and purity


def test_engine_errors_for_events_not_allowed() -> None:
    sim = Simulator(SEQ)
    with pytest.raises(EngineError):
        sim.feed(PauseRun(T0))  # not started
    sim.start()
    with pytest.raises(EngineError):
        sim.start()
    with pytest.raises(EngineError):
        sim.feed(ResumeRun(T0 + 1))  # not paused
    sim.feed(PauseRun(T0 + 1))
    with pytest.raises(EngineError):
        sim.feed(PauseRun(T0 + 1))  # already paused
    sim.feed(ResumeRun(T0 + 2))
    with pytest.raises(EngineError):
        sim.feed(InterventionDecided(T0 + 2, "a", "approve"))  # nothing to decide
    with pytest.raises(EngineError):
        sim.feed(SkipStep(T0 + 2, "a"))  # queued
    with pytest.raises(EngineError):
        sim.feed(RetryStep(T0 + 2, "zzz"))
    sim.run()
    assert sim.state["status"] == "succeeded"
    for event in (PauseRun(T0 + 9), ResumeRun(T0 + 9), CancelRun(T0 + 9)):
        with pytest.raises(EngineError):
            sim.feed(event)


def test_decide_never_mutates_input_state() -> None:
    spec = load(wf(COMPENSATED, "on-error: [{name: h, type: noop}]"))
    state = engine.new_state()
    events: list[Any] = [StartRun(T0, "r", {"x": 1})]
    seen = 0
    while events:
        event = events.pop(0)
        before = copy.deepcopy(state)
        decision = decide(spec, state, event)
        assert state == before
        seen += 1
        state = decision.state
        for c in cmds(decision, DispatchAttempt):
            if c.step == "c":
                events.append(
                    AttemptFailed(T0 + seen, c.step, c.attempt, {"type": "X", "message": ""})
                )
            else:
                events.append(AttemptSucceeded(T0 + seen, c.step, c.attempt, {"n": seen}))
    assert state["status"] == "compensated"
    # the simulator checks the same on every event it feeds (check_purity=True)


def test_injected_faults_only_for_listed_attempts() -> None:
    fault = {"step": "a", "attempts": [1, 2], "error": "TimeoutError", "message": "injected"}
    r = simulate(
        wf("""
        - {name: a, type: noop, on-failure: {retry: {max-attempts: 3}}}
        - {name: b, type: noop}
        """),
        faults=[fault],
    )
    assert r.status == "succeeded"
    faults = [(d.step, d.attempt, d.fault) for d in r.dispatches]
    assert faults[0][:2] == ("a", 1) and faults[0][2] is not None
    assert faults[0][2]["error"] == "TimeoutError"
    assert faults[1][:2] == ("a", 2) and faults[1][2] is not None
    assert faults[2] == ("a", 3, None)
    assert faults[3] == ("b", 1, None)
    assert r.state["steps"]["a"]["retries"] == 2


def test_fault_on_foreach_iteration_by_base_name() -> None:
    fault = {"step": "ship", "attempts": [1], "error": "E", "message": "m"}
    r = simulate(
        wf("""
        - name: each
          type: foreach
          foreach: "inputs.items"
          steps: [{name: ship, type: noop, on-failure: {continue: true}}]
        """),
        {"items": [1, 2]},
        faults=[fault],
    )
    assert all(d.fault is not None for d in r.dispatches)
    assert r.status == "succeeded"


def test_engine_does_not_import_django() -> None:
    code = "import sys, workflows.engine, workflows.spec; print('django' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False", out.stderr


def test_fallback_cut_short_by_run_failure_does_not_escalate() -> None:
    """Regression: a fallback cut short by the run failing must not open an escalation."""
    r = simulate(
        wf(
            """
            - name: a
              type: noop
              on-failure:
                fallback: [{name: fb, type: noop}]
                escalate: true
            - {name: b, type: noop, needs: []}
            """,
            "on-error: [{name: h, type: noop}]",
        ),
        script={"a": fail(duration=1), "fb": ok(duration=5), "b": fail(duration=2)},
        escalations={"a": "retry"},
    )
    assert r.interventions == []
    assert r.executions("a") == 1
    assert r.status == "failed"
    assert r.step_status("fb") == "succeeded"  # in flight when the run failed: it finishes
    assert r.step_status("a") == "failed"


def test_pause_holds_immediate_retry_until_resume() -> None:
    """Regression: a retry without delay must not dispatch while the run is paused."""
    sim = Simulator(wf("""- {name: a, type: noop, on-failure: {retry: {max-attempts: 1}}}"""))
    sim.start()
    sim.feed(PauseRun(T0 + 0.5))
    d = sim.feed(AttemptFailed(T0 + 1, "a", 1, {"type": "X", "message": ""}))
    assert dispatched(d) == []
    assert d.state["steps"]["a"]["status"] == "retrying"
    assert d.state["status"] == "paused"
    d = sim.feed(ResumeRun(T0 + 2))
    assert [(c.step, c.attempt) for c in cmds(d, DispatchAttempt)] == [("a", 2)]


def test_step_in_flight_when_the_run_fails_finishes_and_is_compensated() -> None:
    """The side effect of an attempt a worker already has happens anyway: record it and
    compensate it, before the run ends."""
    r = simulate(
        wf(
            """
            - {name: slow, type: noop, needs: [], compensate: {name: undo-slow, type: noop}}
            - {name: boom, type: noop, needs: []}
            """
        ),
        script={"slow": ok(duration=5), "boom": fail(duration=1)},
    )
    assert r.step_status("slow") == "compensated"
    assert r.step_status("undo-slow") == "succeeded"
    assert r.status == "compensated"


def test_retrying_a_step_that_waits_for_its_retry_keeps_the_count() -> None:
    sim = Simulator(
        wf(
            """
            - name: a
              type: noop
              on-failure: {retry: {max-attempts: 2, delay: 10s}}
            """
        )
    )
    d = sim.start()
    d = sim.feed(AttemptFailed(T0 + 1, "a", 1, {"type": "X"}))
    assert d.state["steps"]["a"]["status"] == "retrying"
    d = sim.feed(RetryStep(T0 + 2, "a"))
    assert cmds(d, DispatchAttempt)[0].attempt == 2
    assert d.state["steps"]["a"]["retries"] == 1  # kept: one retry used
    d = sim.feed(TimerFired(T0 + 11, "a"))  # the old timer finds nothing to do
    assert cmds(d, DispatchAttempt) == []
