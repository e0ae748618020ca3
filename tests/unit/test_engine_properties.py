"""Properties of the pure engine over random workflows and random outcome scripts.

Random DAGs of 1-12 noop steps (random ``needs`` of earlier steps, random on-failure
policies with retry/fallback/continue/escalate, compensate blocks, on-error handlers,
occasional ``if`` conditions, ``if`` flow steps and ``foreach``) run through the simulator
with random outcomes. No Django, no database.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.sim import Outcome, SimResult, Simulator, fail, load, ok
from workflows import engine
from workflows.engine import (
    AttemptFailed,
    DispatchAttempt,
    InterventionDecided,
    SetTimer,
)
from workflows.spec import OnFailureSpec, WorkflowSpec

ESCALATION_CHOICES = (["abort"], ["skip"], ["retry", "abort"], ["retry", "skip"])


@st.composite
def retry_policies(draw: st.DrawFn) -> dict[str, Any]:
    retry: dict[str, Any] = {"max-attempts": draw(st.integers(1, 3))}
    delay = draw(st.sampled_from([None, "0s", "500ms", "1s", "2s"]))
    if delay is not None:
        retry["delay"] = delay
    strategy = draw(st.sampled_from([None, "fixed", "linear", "exponential"]))
    if strategy is not None:
        retry["strategy"] = strategy
    if draw(st.booleans()):
        retry["multiplier"] = draw(st.sampled_from([1.5, 2, 3]))
    if draw(st.booleans()):
        retry["max-delay"] = draw(st.sampled_from(["1s", "3s"]))
    if draw(st.booleans()):
        retry["jitter"] = True
    if draw(st.integers(0, 4)) == 0:
        retry["retry-on"] = ["A"]
    if draw(st.integers(0, 4)) == 0:
        retry["do-not-retry-on"] = ["B"]
    return retry


@st.composite
def policies(draw: st.DrawFn, owner: str) -> dict[str, Any]:
    policy: dict[str, Any] = {}
    if draw(st.booleans()):
        policy["retry"] = draw(retry_policies())
    if draw(st.integers(0, 3)) == 0:
        n = draw(st.integers(1, 2))
        policy["fallback"] = [{"name": f"{owner}-fb{k}", "type": "noop"} for k in range(n)]
    end = draw(st.sampled_from(["fail", "fail", "continue", "escalate"]))
    if end == "continue":
        policy["continue"] = True
    elif end == "escalate":
        policy["escalate"] = True
    return policy


@st.composite
def action_steps(draw: st.DrawFn, name: str) -> dict[str, Any]:
    step: dict[str, Any] = {"name": name, "type": "noop", "with": {"n": name}}
    if draw(st.integers(0, 2)) == 0:
        step["on-failure"] = draw(policies(name))
    if draw(st.integers(0, 2)) == 0:
        step["compensate"] = {"name": f"{name}-undo", "type": "noop"}
    return step


@st.composite
def workflows(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 12))
    steps: list[dict[str, Any]] = []
    for i in range(n):
        name = f"s{i}"
        shape = draw(st.integers(0, 19))
        if shape == 0:
            body = draw(action_steps(f"e{i}"))
            step: dict[str, Any] = {
                "name": name,
                "type": "foreach",
                "foreach": "inputs.items",
                "steps": [body],
            }
            if draw(st.booleans()):
                step["max-parallel"] = draw(st.integers(1, 2))
        elif shape == 1:
            step = {
                "name": name,
                "type": "if",
                "condition": "inputs.flag",
                "steps": [draw(action_steps(f"t{i}"))],
                "else": [draw(action_steps(f"u{i}"))],
            }
        else:
            step = draw(action_steps(name))
            if draw(st.integers(0, 7)) == 0:
                step["if"] = draw(st.sampled_from(["inputs.flag", "!inputs.flag"]))
        if i > 0 and draw(st.integers(0, 2)) == 0:
            earlier = [f"s{j}" for j in range(i)]
            step["needs"] = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3))
        steps.append(step)
    data: dict[str, Any] = {"name": "prop", "steps": steps, "settings": {}}
    if draw(st.integers(0, 2)) == 0:
        data["settings"]["on-failure"] = draw(policies("wf"))
    handlers = draw(st.integers(0, 2))
    if handlers:
        data["settings"]["on-error"] = [{"name": f"h{k}", "type": "noop"} for k in range(handlers)]
    if draw(st.booleans()):
        data["settings"]["compensation"] = "branch"
    return data


def all_names(data: dict[str, Any]) -> list[str]:
    names: list[str] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            if "name" in obj and "type" in obj:
                names.append(obj["name"])
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    walk(data["steps"])
    walk(data["settings"])
    return names


# mostly successes, so that runs get deep before something fails for good
outcomes = st.lists(
    st.tuples(
        st.sampled_from([True, True, True, False]),
        st.sampled_from(["A", "B"]),
        st.sampled_from([0.5, 1.0, 2.0, 3.0]),
    ),
    min_size=1,
    max_size=4,
)


def _jitter(step: str, attempt: int) -> float:
    return 0.75 + (zlib.crc32(f"{step}#{attempt}".encode()) % 51) / 100


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[WorkflowSpec, dict[str, Any], Simulator]:
    data = draw(workflows())
    spec = load(json.dumps(data))
    inputs = {"flag": draw(st.booleans()), "items": draw(st.lists(st.integers(0, 9), max_size=3))}
    script: dict[str, list[Outcome]] = {}
    for name in all_names(data):
        script[name] = [
            ok({"n": name}, duration=d) if good else fail(etype, duration=d)
            for good, etype, d in draw(outcomes)
        ]
    escalations = {
        name: list(draw(st.sampled_from(ESCALATION_CHOICES))) for name in all_names(data)
    }
    sim = Simulator(
        spec,
        inputs,
        script,
        escalations=escalations,
        jitter=_jitter,
        max_events=3000,
    )
    return spec, data, sim


def _policy(spec: WorkflowSpec, base: str) -> OnFailureSpec | None:
    return engine.index(spec)[base].policy


def _done(st_: dict[str, Any]) -> bool:
    return st_["status"] in engine.DONE or (
        st_["status"] == "failed" and bool(st_.get("continued"))
    )


def expected_wait(retry: Any, n: int, jitter: float) -> float:
    """CONTRACT §1, written out independently of ``RetrySpec.wait_before_retry``."""
    delay = retry.delay or 0.0
    if retry.strategy == "linear":
        wait = delay * n
    elif retry.strategy == "exponential":
        wait = delay * retry.multiplier ** (n - 1)
    else:
        wait = delay
    if retry.max_delay is not None and wait > retry.max_delay:
        wait = retry.max_delay
    return float(wait * jitter if retry.jitter else wait)


def check_terminated(r: SimResult) -> None:
    assert not r.stuck, f"stuck in {r.status}: {r.state['steps']}"
    assert r.status in engine.TERMINAL_RUN


def check_dependencies(spec: WorkflowSpec, r: SimResult) -> None:
    nodes = engine.index(spec)
    for decision in r.decisions:
        steps = decision.state["steps"]
        for c in decision.commands:
            if not isinstance(c, DispatchAttempt) or c.kind != "action":
                continue
            st_ = steps[c.step]
            for dep in nodes[st_["base"]].deps:
                dst = steps[dep + st_["suffix"]]
                assert _done(dst), f"{c.step} dispatched while {dep} is {dst['status']}"


def check_retries_and_waits(spec: WorkflowSpec, r: SimResult) -> None:
    retries: dict[str, int] = {}
    rounds: dict[str, int] = {}  # 1 + escalation retries granted
    for event, decision in zip(r.events, r.decisions, strict=True):
        if isinstance(event, InterventionDecided) and event.action == "retry":
            retries[event.step] = 0
            rounds[event.step] = rounds.get(event.step, 1) + 1
        if not isinstance(event, AttemptFailed):
            continue
        step = event.step
        before = decision.state["steps"].get(step)
        if before is None or not any(
            isinstance(c, engine.Emit)
            and c.step == step
            and c.type in ("step.retrying", "step.failed")
            for c in decision.commands
        ):
            continue  # a stale report
        policy = _policy(spec, before["base"])
        timers = [c for c in decision.commands if isinstance(c, SetTimer) and c.step == step]
        redispatch = [
            c for c in decision.commands if isinstance(c, DispatchAttempt) and c.step == step
        ]
        retried = bool(timers or redispatch)
        if policy is None or policy.retry is None:
            assert not retried
            continue
        retry = policy.retry
        if not retried and before.get("draining"):
            continue  # the run had already failed: an in-flight step's failure is final
        if not retried:
            used = retries.get(step, 0)
            assert used == retry.max_attempts or not retry.allows(event.error["type"]), (
                f"{step}: gave up after {used} of {retry.max_attempts} retries"
            )
            continue
        n = retries.get(step, 0) + 1
        retries[step] = n
        assert n <= retry.max_attempts
        expected = expected_wait(retry, n, event.jitter)
        if timers:
            assert abs((timers[0].due - event.now) - expected) < 1e-9
        else:
            assert expected <= 0
    for step in {d.step for d in r.dispatches}:
        st_ = r.state["steps"][step]
        policy = _policy(spec, st_["base"])
        max_attempts = policy.retry.max_attempts if policy and policy.retry else 0
        # a fallback runs again after each escalation retry of its owner
        owner = st_["scope"].split("/")[0] if st_["kind"] == "fallback" else step
        assert r.executions(step) <= (1 + max_attempts) * rounds.get(owner, 1), step


def check_compensation_order(spec: WorkflowSpec, r: SimResult) -> None:
    comps = [d for d in r.dispatches if d.kind == "compensation"]
    if not comps:
        return
    assert r.status in ("failed", "compensated")
    nodes = engine.index(spec)
    owners = []
    for d in comps:
        st_ = r.state["steps"][d.step]
        owners.append(nodes[st_["base"]].parent + st_["suffix"])  # type: ignore[operator]
    assert len(set(owners)) == len(owners)
    completed = r.state["completed"]
    order = [completed.index(o) for o in owners]
    assert order == sorted(order, reverse=True), (owners, completed)
    # every compensation starts after the previous one finished: they are sequential
    first = r.dispatches.index(comps[0])
    assert all(d.kind == "compensation" for d in r.dispatches[first:])
    if spec.settings.compensation == "entire-workflow":
        expected = [
            n
            for n in completed
            if r.state["steps"][n]["kind"] != "compensation"
            and nodes[r.state["steps"][n]["base"]].spec.compensate is not None
        ]
        assert sorted(owners) == sorted(expected)


def check_terminal_state(r: SimResult) -> None:
    for name, st_ in r.state["steps"].items():
        assert st_["status"] not in ("queued", "running", "retrying", "pending"), (name, st_)
    assert engine.next_due(r.state) is None
    if r.status == "succeeded":
        for st_ in r.state["steps"].values():
            assert (
                st_["status"] in engine.DONE
                or (st_["status"] == "failed" and st_.get("continued"))
                or st_["kind"] == "fallback"
            )
    if r.status == "compensated":
        assert all(
            st_["status"] == "succeeded"
            for st_ in r.state["steps"].values()
            if st_["kind"] == "compensation"
        )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_workflows(scenario: tuple[WorkflowSpec, dict[str, Any], Simulator]) -> None:
    spec, _data, sim = scenario
    r = sim.run()  # also checks on every event that decide does not mutate its input
    check_terminated(r)
    check_dependencies(spec, r)
    check_retries_and_waits(spec, r)
    check_compensation_order(spec, r)
    check_terminal_state(r)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.lists(st.integers(0, 40), max_size=4), st.integers(0, 60))
def test_random_pause_resume_and_cancel(
    scenario: tuple[WorkflowSpec, dict[str, Any], Simulator], pauses: list[int], cancel_at: int
) -> None:
    """Pauses (each resumed a little later) and maybe a cancel, at random points of a run."""
    _spec, _data, sim = scenario
    sim.start()
    count = 0
    paused = False
    while sim.state["status"] not in engine.TERMINAL_RUN:
        count += 1
        if count == cancel_at:
            d = sim.feed(engine.CancelRun(sim.now))
            assert d.state["status"] == "cancelled"
            assert not [c for c in d.commands if isinstance(c, DispatchAttempt)]
            break
        if paused:
            sim.feed(engine.ResumeRun(sim.now))
            paused = False
        elif count in pauses:
            sim.feed(engine.PauseRun(sim.now))
            paused = True
            # a paused run starts nothing new: deliver one pending report, expect no dispatch
            if sim.step_once():
                last = sim.result.decisions[-1]
                if isinstance(sim.result.events[-1], AttemptFailed | engine.AttemptSucceeded):
                    fresh = [
                        c
                        for c in last.commands
                        if isinstance(c, DispatchAttempt) and c.kind == "action"
                    ]
                    if last.state["phase"] == "main":
                        assert fresh == []
            continue
        if not sim.step_once():
            break
    r = sim.result
    check_terminated(r)
    check_terminal_state(r)
