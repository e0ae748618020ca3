"""A deterministic simulator around the pure engine (``workflows.engine.decide``).

No Django, no I/O, no real clock: a fake clock jumps to the next thing that happens
(a worker finishing an attempt, or a timer coming due). Every attempt's outcome comes
from a *script*.

    result = simulate(spec, {"x": 1}, script={"charge": [fail("Boom"), ok({"id": 1})]})
    result.state["status"], result.dispatches, result.waits

Script entries, per step instance name (``ship[0]`` or the base name ``ship``), are used
attempt by attempt (the last one repeats); an entry is ``ok(output)`` or
``fail(error_type)``. A callable ``script(step, attempt, input) -> Outcome`` also works.
Without an entry an attempt succeeds with its rendered input as output (like ``noop``).
"""

from __future__ import annotations

import copy
import heapq
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workflows import engine
from workflows.engine import (
    AttemptFailed,
    AttemptSucceeded,
    CancelAttempts,
    CloseAttempt,
    CloseInterventions,
    DispatchAttempt,
    Event,
    InterventionDecided,
    OpenIntervention,
    RunTimedOut,
    SetTimer,
    StartRun,
    TimerFired,
)
from workflows.spec import WorkflowSpec, parse_workflow


class NonTermination(AssertionError):
    """More events than the simulator's bound: the run did not terminate."""


@dataclass(frozen=True)
class Outcome:
    ok: bool
    output: Any = None
    error: dict[str, Any] | None = None
    duration: float = 1.0  # seconds the worker takes


def ok(output: Any = None, duration: float = 1.0) -> Outcome:
    return Outcome(True, output, None, duration)


def fail(error_type: str = "Boom", message: str = "failed", duration: float = 1.0) -> Outcome:
    return Outcome(False, None, {"type": error_type, "message": message}, duration)


Script = Mapping[str, Sequence[Outcome] | Outcome] | Callable[[str, int, Any], Outcome | None]


@dataclass(frozen=True)
class Dispatch:
    at: float
    step: str
    attempt: int
    kind: str
    input: Any
    fault: dict[str, Any] | None


@dataclass(frozen=True)
class Wait:
    at: float  # when the timer was set
    step: str
    due: float

    @property
    def seconds(self) -> float:
        return self.due - self.at


@dataclass
class SimResult:
    state: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    decisions: list[engine.Decision] = field(default_factory=list)
    dispatches: list[Dispatch] = field(default_factory=list)
    waits: list[Wait] = field(default_factory=list)
    interventions: list[tuple[float, OpenIntervention]] = field(default_factory=list)
    #: (time, statuses of every step) after each decision
    snapshots: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    max_in_flight: dict[str, int] = field(default_factory=dict)
    stuck: bool = False  # nothing left to happen but the run is not terminal
    now: float = 0.0

    @property
    def status(self) -> str:
        return str(self.state["status"])

    @property
    def commands(self) -> list[engine.Command]:
        return [c for d in self.decisions for c in d.commands]

    def dispatched(self, step: str | None = None) -> list[str]:
        return [d.step for d in self.dispatches if step is None or d.step == step]

    def executions(self, step: str) -> int:
        return sum(1 for d in self.dispatches if d.step == step)

    def step_status(self, step: str) -> str:
        return str(self.state["steps"][step]["status"])

    def emitted(self, type_: str) -> list[engine.Emit]:
        return [c for c in self.commands if isinstance(c, engine.Emit) and c.type == type_]


def load(text: str) -> WorkflowSpec:
    return parse_workflow(text).spec


def _outcome(script: Script | None, step: str, base: str, attempt: int, input_: Any) -> Outcome:
    if script is None:
        return ok(input_)
    if callable(script):
        got = script(step, attempt, input_)
        return ok(input_) if got is None else got
    entry = script.get(step, script.get(base))
    if entry is None:
        return ok(input_)
    if isinstance(entry, Outcome):
        return entry
    if not entry:
        return ok(input_)
    return entry[min(attempt, len(entry)) - 1]


class Simulator:
    """Feed events to ``decide`` one by one; see ``simulate`` for the one-call version."""

    def __init__(
        self,
        spec: WorkflowSpec | str,
        inputs: dict[str, Any] | None = None,
        script: Script | None = None,
        *,
        approvals: Mapping[str, str | Sequence[str]] | None = None,
        escalations: Mapping[str, str | Sequence[str]] | None = None,
        jitter: Callable[[str, int], float] | None = None,
        faults: Sequence[dict[str, Any]] = (),
        short_wait: float = engine.DEFAULT_SHORT_WAIT,
        max_events: int = 2000,
        start: float = 1000.0,
        run_timeout: bool = False,
        check_purity: bool = True,
    ) -> None:
        self.spec = load(spec) if isinstance(spec, str) else spec
        self.inputs = inputs or {}
        self.script = script
        self.approvals = {k: _as_list(v) for k, v in (approvals or {}).items()}
        self.escalations = {k: _as_list(v) for k, v in (escalations or {}).items()}
        self.jitter = jitter
        self.faults = tuple(faults)
        self.short_wait = short_wait
        self.max_events = max_events
        self.run_timeout = run_timeout
        self.check_purity = check_purity
        self.now = start
        self.result = SimResult(engine.new_state(), now=start)
        self._seq = itertools.count()
        # (time, seq, event): worker reports and decisions still to come
        self._queue: list[tuple[float, int, Event]] = []
        # step -> due of the timer currently set (a new SetTimer replaces the old one)
        self._timers: dict[str, float] = {}
        # (step, attempt) of attempts handed to a worker and not reported yet
        self._in_flight: set[tuple[str, int]] = set()

    # ------------------------------------------------------------------ feeding
    @property
    def state(self) -> dict[str, Any]:
        return self.result.state

    def feed(self, event: Event) -> engine.Decision:
        """Apply one event now and act on the commands (raises EngineError as decide does)."""
        if len(self.result.events) >= self.max_events:
            raise NonTermination(
                f"more than {self.max_events} events; status {self.state.get('status')}"
            )
        before = copy.deepcopy(self.state) if self.check_purity else None
        decision = engine.decide(self.spec, self.state, event, self.short_wait)
        if before is not None:
            assert self.state == before, f"decide mutated its input state on {event!r}"
        self.result.events.append(event)
        self.result.decisions.append(decision)
        self.result.state = decision.state
        self.result.now = self.now
        self.result.snapshots.append(
            (self.now, {n: s["status"] for n, s in decision.state["steps"].items()})
        )
        for command in decision.commands:
            self._act(command)
        if self.run_timeout and isinstance(event, StartRun):
            deadline = decision.state.get("deadline")
            if deadline is not None:
                self._push(deadline, RunTimedOut(deadline))
        return decision

    def _push(self, at: float, event: Event) -> None:
        heapq.heappush(self._queue, (at, next(self._seq), event))

    def _act(self, c: engine.Command) -> None:
        if isinstance(c, DispatchAttempt):
            self.result.dispatches.append(
                Dispatch(self.now, c.step, c.attempt, c.kind, c.input, c.fault)
            )
            self._in_flight.add((c.step, c.attempt))
            base = self.state["steps"][c.step]["base"]
            flows = {s.split("[", 1)[0] for s, _ in self._in_flight}
            for b in flows:
                count = sum(1 for s, _ in self._in_flight if s.split("[", 1)[0] == b)
                self.result.max_in_flight[b] = max(self.result.max_in_flight.get(b, 0), count)
            if c.fault is not None:
                out = Outcome(
                    False,
                    None,
                    {"type": c.fault.get("error", "Fault"), "message": c.fault.get("message", "")},
                )
            else:
                out = _outcome(self.script, c.step, base, c.attempt, c.input)
            at = self.now + out.duration
            if out.ok:
                self._push(at, AttemptSucceeded(at, c.step, c.attempt, out.output))
            else:
                assert out.error is not None
                j = self.jitter(c.step, c.attempt) if self.jitter else 1.0
                self._push(at, AttemptFailed(at, c.step, c.attempt, out.error, j))
        elif isinstance(c, SetTimer):
            self.result.waits.append(Wait(self.now, c.step, c.due))
            self._timers[c.step] = c.due
        elif isinstance(c, CloseAttempt) and c.status == "cancelled":
            self._drop(c.step, c.attempt)
        elif isinstance(c, CancelAttempts):
            for step in c.steps:
                self._drop(step, None)
        elif isinstance(c, CloseInterventions):
            # a closed intervention can no longer be decided: drop scripted decisions
            self._queue = [
                item
                for item in self._queue
                if not (isinstance(item[2], InterventionDecided) and c.step in (None, item[2].step))
            ]
            heapq.heapify(self._queue)
        elif isinstance(c, OpenIntervention):
            self.result.interventions.append((self.now, c))
            table = self.approvals if c.kind == "approval" else self.escalations
            actions = table.get(c.step) or table.get(c.step.split("[", 1)[0])
            if actions:
                action = actions.pop(0) if len(actions) > 1 else actions[0]
                self._push(self.now + 1.0, InterventionDecided(self.now + 1.0, c.step, action))

    def _drop(self, step: str, attempt: int | None) -> None:
        """A cancelled attempt: its worker is interrupted and never reports."""
        self._in_flight = {
            (s, a) for s, a in self._in_flight if not (s == step and attempt in (None, a))
        }
        self._queue = [
            item
            for item in self._queue
            if not (
                isinstance(item[2], AttemptSucceeded | AttemptFailed)
                and item[2].step == step
                and attempt in (None, item[2].attempt)
            )
        ]
        heapq.heapify(self._queue)

    # ------------------------------------------------------------------ running
    def start(self, run_id: str = "run-1") -> engine.Decision:
        return self.feed(StartRun(self.now, run_id, dict(self.inputs), self.faults))

    def step_once(self) -> bool:
        """Deliver the next thing that happens; False when nothing is left."""
        timer_at = min(self._timers.values(), default=None)
        queue_at = self._queue[0][0] if self._queue else None
        if timer_at is None and queue_at is None:
            return False
        if queue_at is None or (timer_at is not None and timer_at < queue_at):
            assert timer_at is not None
            step = min((due, s) for s, due in self._timers.items())[1]
            del self._timers[step]
            self.now = max(self.now, timer_at)
            self.feed(TimerFired(self.now, step))
            return True
        at, _, event = heapq.heappop(self._queue)
        self.now = max(self.now, at)
        if isinstance(event, AttemptSucceeded | AttemptFailed):
            self._in_flight.discard((event.step, event.attempt))
        self.feed(event)
        return True

    def run(self) -> SimResult:
        """Run until the run is terminal, or nothing is left to happen (``stuck``)."""
        if self.state.get("phase") == "new":
            self.start()
        while self.state["status"] not in engine.TERMINAL_RUN:
            if not self.step_once():
                self.result.stuck = True
                break
        return self.result


def _as_list(v: str | Sequence[str]) -> list[str]:
    return [v] if isinstance(v, str) else list(v)


def simulate(
    spec: WorkflowSpec | str,
    inputs: dict[str, Any] | None = None,
    script: Script | None = None,
    **kwargs: Any,
) -> SimResult:
    return Simulator(spec, inputs, script, **kwargs).run()
