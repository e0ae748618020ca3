"""The pure workflow engine: ``decide(spec, state, event) -> Decision(state, commands)``.

No Django, no I/O, no clock, no randomness: time and jitter arrive inside events.
The state is a JSON document (plain dicts and lists) so the store can persist it
as is. ``decide`` never mutates the state it is given.

State document::

    {
      "schema": 1,
      "phase": "main" | "handlers" | "compensating" | "done",
      "status": <run status>,
      "paused": bool, "cancelled": bool,
      "inputs": {...}, "run_id": str, "faults": [...],
      "deadline": float | None,
      "error": {...} | None, "output": ... ,
      "completed": [step, ...],          # completion order, for compensation
      "steps": {instance name: StepState},
      "checkpoint": {"count": n, "last": t},
    }

    StepState = {"base": spec name, "suffix": "[0]" or "", "kind": ..., "scope": scope key,
                 "status": ..., "attempt": executions started, "retries": retries used,
                 "output": ..., "error": ..., "due": float | None,
                 "started": float | None, "finished": float | None,
                 "continued": bool, "fallback_done": bool, "escalated": bool}

Scopes: ``""`` is the main list; ``"<flow instance>/then"``, ``"<flow instance>/else"`` and
``"<foreach instance>/<i>"`` are nested lists; ``"<step>/fallback"``, ``"/handlers"`` and
``"/compensations"`` are the sequential lists of those kinds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workflows import expressions
from workflows.spec import OnFailureSpec, StepSpec, WorkflowSpec

STATE_SCHEMA = 1
DONE = frozenset({"succeeded", "skipped", "compensated"})
FINISHED = frozenset({"succeeded", "skipped", "failed", "cancelled", "compensated"})
ACTIVE = frozenset({"queued", "running", "retrying"})
TERMINAL_RUN = frozenset({"succeeded", "failed", "cancelled", "compensated"})
DEFAULT_SHORT_WAIT = 30.0
# restore and restart are carried out by the services (they need the database)
ESCALATION_OPTIONS = ("retry", "skip", "restore", "restart", "compensate", "abort")


class EngineError(Exception):
    """An event that the run's current state does not allow (e.g. resume a finished run)."""


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class StartRun:
    now: float
    run_id: str
    inputs: dict[str, Any]
    faults: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class AttemptSucceeded:
    now: float
    step: str
    attempt: int
    output: Any = None


@dataclass(frozen=True)
class AttemptFailed:
    now: float
    step: str
    attempt: int
    error: dict[str, Any]
    jitter: float = 1.0  # in [0.75, 1.25]; used only when the retry policy has jitter


@dataclass(frozen=True)
class TimerFired:
    now: float
    step: str


@dataclass(frozen=True)
class InterventionDecided:
    now: float
    step: str
    action: str
    output: Any = None
    by: str = ""
    comment: str = ""


@dataclass(frozen=True)
class PauseRun:
    now: float


@dataclass(frozen=True)
class ResumeRun:
    now: float


@dataclass(frozen=True)
class CancelRun:
    now: float
    reason: str = "cancelled by operator"


@dataclass(frozen=True)
class RunTimedOut:
    now: float


@dataclass(frozen=True)
class RetryStep:
    now: float
    step: str


@dataclass(frozen=True)
class SkipStep:
    now: float
    step: str
    output: Any = None


@dataclass(frozen=True)
class RestoreState:
    """Continue from a checkpoint's state; steps not done there run again."""

    now: float
    state: dict[str, Any]
    checkpoint: str = ""


@dataclass(frozen=True)
class ResumeFromStep:
    """Run ``step`` and everything downstream of it again; keep the results upstream."""

    now: float
    step: str


@dataclass(frozen=True)
class SetBreakpoint:
    """Pause the run just before ``step`` starts (once). ``enabled=False`` removes it."""

    now: float
    step: str
    enabled: bool = True


@dataclass(frozen=True)
class MigrateVersion:
    """The run now follows a newer version of its workflow (passed as ``spec``)."""

    now: float
    from_version: int
    to_version: int


@dataclass(frozen=True)
class ManualCheckpoint:
    now: float


Event = (
    StartRun
    | AttemptSucceeded
    | AttemptFailed
    | TimerFired
    | InterventionDecided
    | PauseRun
    | ResumeRun
    | CancelRun
    | RunTimedOut
    | RetryStep
    | SkipStep
    | RestoreState
    | ResumeFromStep
    | SetBreakpoint
    | MigrateVersion
    | ManualCheckpoint
)

# --------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class DispatchAttempt:
    """Create attempt ``attempt`` of ``step`` and hand it to a worker."""

    step: str
    attempt: int
    kind: str
    step_type: str
    input: Any
    timeout: float
    fault: dict[str, Any] | None = None


@dataclass(frozen=True)
class RecordAttempt:
    """An attempt the engine runs itself (sleep timer, approval): open its record."""

    step: str
    attempt: int
    kind: str
    step_type: str
    input: Any


@dataclass(frozen=True)
class CloseAttempt:
    """Close an attempt record the worker will not report (timer, decision, cancel)."""

    step: str
    attempt: int
    status: str
    output: Any = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class SetTimer:
    step: str
    due: float


@dataclass(frozen=True)
class OpenIntervention:
    step: str
    kind: str  # approval | escalation
    reason: str
    options: tuple[str, ...]
    prompt: str = ""


@dataclass(frozen=True)
class CloseInterventions:
    step: str | None  # None: every open intervention of the run


@dataclass(frozen=True)
class CancelAttempts:
    steps: tuple[str, ...]


@dataclass(frozen=True)
class TakeCheckpoint:
    kind: str
    step: str


@dataclass(frozen=True)
class Emit:
    type: str
    step: str = ""
    attempt: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


Command = (
    DispatchAttempt
    | RecordAttempt
    | CloseAttempt
    | SetTimer
    | OpenIntervention
    | CloseInterventions
    | CancelAttempts
    | TakeCheckpoint
    | Emit
)


@dataclass(frozen=True)
class Decision:
    state: dict[str, Any]
    commands: tuple[Command, ...]


# --------------------------------------------------------------------------- spec index


@dataclass(frozen=True)
class Node:
    """A step of the spec with where it sits."""

    spec: StepSpec
    kind: str
    siblings: tuple[str, ...]  # names in the same list, in order
    deps: tuple[str, ...]  # sibling names this step waits for
    parent: str | None  # flow step or owner (fallback/compensate) name
    policy: OnFailureSpec | None  # the on-failure that applies (step's own or workflow's)


def _deps_of(steps: tuple[StepSpec, ...]) -> dict[str, tuple[str, ...]]:
    deps: dict[str, tuple[str, ...]] = {}
    for i, s in enumerate(steps):
        if s.needs is not None:
            deps[s.name] = tuple(s.needs)
        else:
            deps[s.name] = (steps[i - 1].name,) if i > 0 else ()
    return deps


_index_cache: dict[int, tuple[WorkflowSpec, dict[str, Node]]] = {}


def index(spec: WorkflowSpec) -> dict[str, Node]:
    """Every step of the spec by name, with its dependencies and on-failure policy."""
    cached = _index_cache.get(id(spec))
    if cached is not None and cached[0] is spec:
        return cached[1]
    if len(_index_cache) > 512:
        _index_cache.clear()
    nodes = _build_index(spec)
    _index_cache[id(spec)] = (spec, nodes)
    return nodes


def _build_index(spec: WorkflowSpec) -> dict[str, Node]:
    nodes: dict[str, Node] = {}
    default = spec.settings.on_failure

    def add_list(
        steps: tuple[StepSpec, ...], kind: str, parent: str | None, sequential: bool
    ) -> None:
        names = tuple(s.name for s in steps)
        deps = (
            {n: ((names[i - 1],) if i else ()) for i, n in enumerate(names)}
            if sequential
            else _deps_of(steps)
        )
        for s in steps:
            if kind == "action" and not s.is_flow:
                policy = s.on_failure if s.on_failure is not None else default
            else:
                policy = None
            step_kind = "flow" if s.is_flow else ("approval" if s.type == "approval" else kind)
            nodes[s.name] = Node(s, step_kind, names, deps[s.name], parent, policy)
            add_list(s.steps, "action", s.name, False)
            add_list(s.else_, "action", s.name, False)
            if s.on_failure and s.on_failure.fallback:
                add_list(s.on_failure.fallback, "fallback", s.name, True)
            if s.compensate:
                add_list((s.compensate,), "compensation", s.name, True)

    add_list(spec.steps, "action", None, False)
    add_list(spec.settings.on_error, "handler", None, True)
    if default is not None and default.fallback:
        add_list(default.fallback, "fallback", None, True)
    return nodes


# --------------------------------------------------------------------------- the work area


class _Work:
    """A copy-on-write view of the state plus the commands produced so far."""

    def __init__(self, spec: WorkflowSpec, state: dict[str, Any], now: float, short_wait: float):
        self.spec = spec
        self.nodes = index(spec)
        self.state = dict(state)
        self.state["steps"] = dict(state.get("steps", {}))
        self.now = now
        self.short_wait = short_wait
        self.commands: list[Command] = []
        self._copied: set[str] = set()

    # state access ---------------------------------------------------------
    @property
    def steps(self) -> dict[str, dict[str, Any]]:
        steps: dict[str, dict[str, Any]] = self.state["steps"]
        return steps

    def step(self, name: str) -> dict[str, Any]:
        """The step's state, copied once so it can be changed."""
        if name not in self._copied:
            self.steps[name] = dict(self.steps[name])
            self._copied.add(name)
        return self.steps[name]

    def forget(self, name: str) -> None:
        """Drop a step instance, remembering its attempt count so numbers never repeat."""
        st = self.steps.pop(name, None)
        if st is not None and st.get("attempt"):
            floor = dict(self.state.get("attempt_floor", {}))
            floor[name] = max(floor.get(name, 0), st["attempt"])
            self.state["attempt_floor"] = floor

    def new_step(self, name: str, base: str, suffix: str, kind: str, scope: str) -> None:
        if name in self.steps:
            self.forget(name)
        self.steps[name] = {
            "base": base,
            "suffix": suffix,
            "kind": kind,
            "scope": scope,
            "status": "pending",
            "attempt": self.state.get("attempt_floor", {}).get(name, 0),
            "retries": 0,
            "output": None,
            "error": None,
            "due": None,
            "started": None,
            "finished": None,
        }
        self._copied.add(name)

    def emit(self, type_: str, step: str = "", attempt: int | None = None, **data: Any) -> None:
        self.commands.append(Emit(type_, step, attempt, data))

    def node(self, name: str) -> Node:
        return self.nodes[self.steps[name]["base"]]

    # expression context ---------------------------------------------------
    def context(
        self, name: str | None = None, error: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        steps_view: dict[str, Any] = {
            n: {"status": "pending", "output": None, "error": None} for n in self.nodes
        }
        for n, st in self.steps.items():
            steps_view[n] = {"status": st["status"], "output": st["output"], "error": st["error"]}
        ctx: dict[str, Any] = {
            "inputs": self.state.get("inputs", {}),
            "run": {"id": self.state.get("run_id", "")},
            "steps": steps_view,
        }
        if name is not None:
            suffix = self.steps[name]["suffix"]
            if suffix:
                # inside a foreach iteration, plain names mean this iteration's steps
                for n, st in self.steps.items():
                    if st["suffix"] == suffix and n != st["base"]:
                        steps_view[st["base"]] = steps_view[n]
                item = self.state.get("iterations", {}).get(suffix)
                if item is not None:
                    ctx["foreach"] = item
        if error is not None:
            ctx["error"] = error
        return ctx


def _instance(base: str, suffix: str) -> str:
    return base + suffix


# --------------------------------------------------------------------------- decide


def new_state() -> dict[str, Any]:
    return {"schema": STATE_SCHEMA, "phase": "new", "status": "pending", "steps": {}}


def decide(
    spec: WorkflowSpec,
    state: dict[str, Any],
    event: Event,
    short_wait: float = DEFAULT_SHORT_WAIT,
) -> Decision:
    """Apply one event. Raises EngineError when the event is not allowed now."""
    w = _Work(spec, state, event.now, short_wait)
    handler = _HANDLERS[type(event)]
    handler(w, event)
    _advance(w)
    w.state["status"] = _derive_status(w)
    return Decision(w.state, tuple(w.commands))


def _require_open(w: _Work) -> None:
    if w.state.get("phase") in ("done", "new"):
        raise EngineError(f"the run is {w.state.get('status')}")


def _on_start(w: _Work, e: StartRun) -> None:
    if w.state.get("phase") != "new":
        raise EngineError("the run has already started")
    w.state.update(
        phase="main",
        paused=False,
        cancelled=False,
        inputs=e.inputs,
        run_id=e.run_id,
        faults=list(e.faults),
        deadline=e.now + w.spec.settings.timeout,
        error=None,
        output=None,
        completed=[],
        iterations={},
        checkpoint={"count": 0, "last": e.now},
        started=e.now,
    )
    for s in w.spec.steps:
        w.new_step(s.name, s.name, "", w.nodes[s.name].kind, "")
    w.emit("run.started")


def _running_step(w: _Work, name: str, attempt: int) -> dict[str, Any] | None:
    st = w.steps.get(name)
    if st is None or st["attempt"] != attempt or st["status"] not in ("queued", "running"):
        return None  # a late or duplicate report: nothing to do
    return st


def _on_success(w: _Work, e: AttemptSucceeded) -> None:
    if _running_step(w, e.step, e.attempt) is None:
        return
    _succeed(w, e.step, e.output, e.attempt)


def _succeed(w: _Work, name: str, output: Any, attempt: int | None) -> None:
    st = w.step(name)
    st.update(status="succeeded", output=output, error=None, due=None, finished=w.now)
    w.state["completed"] = [*w.state.get("completed", []), name]
    w.emit("step.succeeded", name, attempt)
    node = w.node(name)
    if node.kind == "compensation" and node.parent is not None:
        owner = _instance(node.parent, st["suffix"])
        if owner in w.steps:
            w.step(owner)["status"] = "compensated"
    _maybe_checkpoint(w, name, node)


def _maybe_checkpoint(w: _Work, name: str, node: Node) -> None:
    cfg = w.spec.settings.checkpoints
    cp = dict(w.state.get("checkpoint", {"count": 0, "last": w.now}))
    cp["count"] = cp.get("count", 0) + 1
    kind = "critical_point" if node.spec.critical else "step_complete"
    take = (
        cfg.policy == "after-each-step"
        or (cfg.policy == "every-n-steps" and cp["count"] % cfg.every == 0)
        or (cfg.policy == "interval" and w.now - cp.get("last", 0) >= cfg.interval)
        or node.spec.critical
    )
    if take:
        cp["last"] = w.now
        w.commands.append(TakeCheckpoint(kind, name))
    w.state["checkpoint"] = cp


def _on_failure(w: _Work, e: AttemptFailed) -> None:
    if _running_step(w, e.step, e.attempt) is None:
        return
    _fail_step(w, e.step, e.attempt, e.error, e.jitter)


def _retry_allowed(w: _Work, name: str, policy: OnFailureSpec, error: dict[str, Any]) -> bool:
    retry = policy.retry
    st = w.steps[name]
    if retry is None or st["retries"] >= retry.max_attempts:
        return False
    etype = str(error.get("type", ""))
    if etype in retry.do_not_retry_on:
        return False
    if retry.retry_on is not None and etype not in retry.retry_on:
        return False
    if retry.condition:
        try:
            return bool(expressions.evaluate(retry.condition, w.context(name, error)))
        except expressions.ExpressionError as exc:
            w.emit("step.retry_condition_error", name, message=str(exc))
            return False
    return True


def _fail_step(w: _Work, name: str, attempt: int, error: dict[str, Any], jitter: float) -> None:
    node = w.node(name)
    st = w.step(name)
    if st.get("draining"):  # the run already failed: no retry, fallback or escalation
        st.update(status="failed", error=error, due=None, finished=w.now)
        w.emit("step.failed", name, attempt, error=error)
        return
    policy = node.policy
    if policy is not None and _retry_allowed(w, name, policy, error):
        assert policy.retry is not None
        retries = st["retries"] + 1
        wait = policy.retry.wait_before_retry(retries, jitter)
        st.update(status="retrying", retries=retries, error=error, due=w.now + wait)
        w.emit("step.retrying", name, attempt, error=error, wait=wait, retry=retries)
        if wait <= 0 and not w.state.get("paused"):
            _dispatch(w, name)
        elif wait > 0:
            w.commands.append(SetTimer(name, w.now + wait))
        # else: paused; ResumeRun dispatches the retry that is already due
        return
    st.update(status="failed", error=error, due=None, finished=w.now)
    w.emit("step.failed", name, attempt, error=error)
    if policy is not None and policy.fallback and not st.get("fallback_done"):
        scope = f"{name}/fallback"
        if node.spec.on_failure is None:
            # the workflow-level fallback: one instance per failing step, e.g. `backup@charge`
            for fb in policy.fallback:
                w.new_step(f"{fb.name}@{name}", fb.name, st["suffix"], "fallback", scope)
        else:
            _start_sequence(w, scope, [s.name for s in policy.fallback], "fallback", st["suffix"])
        w.emit("step.fallback", name)
        return
    _resolve_failure(w, name)


def _resolve_failure(w: _Work, name: str) -> None:
    """Retries and fallback are over: continue, escalate or fail the run."""
    node = w.node(name)
    policy = node.policy
    st = w.step(name)
    if policy is not None and policy.continue_:
        st["continued"] = True
        w.emit("step.continued", name)
        return
    if policy is not None and policy.escalate:
        st["escalated"] = True
        w.commands.append(
            OpenIntervention(
                name,
                "escalation",
                f"Step {name} failed: {_error_text(st['error'])}",
                ESCALATION_OPTIONS,
            )
        )
        w.emit("step.escalated", name)
        return
    if node.kind in ("fallback", "handler", "compensation"):
        return  # their failure is recorded; the sequence they belong to goes on
    _fail_run(w, st["error"], name)


def _error_text(error: dict[str, Any] | None) -> str:
    if not error:
        return "unknown error"
    return f"{error.get('type', 'Error')}: {error.get('message', '')}"


def _start_sequence(w: _Work, scope: str, names: list[str], kind: str, suffix: str) -> None:
    for base in names:
        name = _instance(base, suffix)
        w.new_step(name, base, suffix, kind, scope)


def _fail_run(w: _Work, error: dict[str, Any] | None, step: str | None, drain: bool = True) -> None:
    """The run is failing: stop the main phase, run on-error handlers, then compensate.

    ``drain``: let attempts already with a worker finish first (a run timeout does not:
    the run is out of time, so they are cancelled)."""
    if w.state["phase"] != "main":
        return
    w.state["error"] = {**(error or {}), "step": step} if step else error
    w.state["phase"] = "handlers"
    _stop_main(w, "cancelled", drain=drain)
    w.emit("run.failing", step or "", error=error)
    handlers = [s.name for s in w.spec.settings.on_error]
    if handlers:
        _start_sequence(w, "/handlers", handlers, "handler", "")
    _after_handlers(w)


def _stop_main(w: _Work, status: str, drain: bool = False) -> None:
    """Stop every unfinished step of the main phase.

    With ``drain`` (the run is failing), attempts a worker already has are left to finish:
    their side effects happen anyway, so a success is recorded and compensated like any
    other. Otherwise (cancel) they are cancelled and their results ignored.
    """
    cancelled: list[str] = []
    for name, st in list(w.steps.items()):
        if st["kind"] in ("handler", "compensation"):
            continue
        if st["status"] in FINISHED:
            if st.get("escalated"):
                w.step(name)["escalated"] = False
            continue
        if drain and _in_flight(w, name):
            w.step(name)["draining"] = True
            continue
        if st["status"] in ("queued", "running") and st["attempt"]:
            cancelled.append(name)
            w.commands.append(CloseAttempt(name, st["attempt"], "cancelled"))
        w.step(name).update(status=status, due=None, finished=w.now)
    if cancelled:
        w.commands.append(CancelAttempts(tuple(cancelled)))
    w.commands.append(CloseInterventions(None))


def _in_flight(w: _Work, name: str) -> bool:
    """An attempt handed to a worker (not a timer, an approval or a flow)."""
    st = w.steps[name]
    if st["status"] not in ("queued", "running") or not st["attempt"] or st["kind"] == "flow":
        return False
    return w.node(name).spec.type not in ("sleep", "approval")


def _draining(w: _Work) -> bool:
    return any(
        st.get("draining") and st["status"] in ("queued", "running") for st in w.steps.values()
    )


def _after_handlers(w: _Work) -> None:
    """Once handlers are done and in-flight steps have reported, start compensations
    (newest completion first)."""
    if w.state["phase"] != "handlers" or not _sequence_done(w, "/handlers") or _draining(w):
        return
    comp_names: list[str] = []
    for name in reversed(w.state.get("completed", [])):
        st = w.steps.get(name)
        if st is None or st["status"] != "succeeded":
            continue
        node = w.node(name)
        if node.kind == "compensation" or node.spec.compensate is None:
            continue
        if w.spec.settings.compensation == "branch" and not _in_failed_branch(w, name):
            continue
        comp_names.append(_instance(node.spec.compensate.name, st["suffix"]))
    w.state["phase"] = "compensating"
    for cname in comp_names:
        base = cname.split("[", 1)[0]
        suffix = cname[len(base) :]
        w.new_step(cname, base, suffix, "compensation", "/compensations")
    w.state["compensations"] = comp_names
    if comp_names:
        w.emit("run.compensating", steps=comp_names)


def _in_failed_branch(w: _Work, name: str) -> bool:
    """With `compensation: branch`: is ``name`` upstream of the step that failed?"""
    failed = (w.state.get("error") or {}).get("step")
    if not failed or failed not in w.steps:
        return True
    seen: set[str] = set()
    todo = [failed]
    while todo:
        cur = todo.pop()
        if cur in seen or cur not in w.steps:
            continue
        seen.add(cur)
        st = w.steps[cur]
        for dep in w.node(cur).deps:
            todo.append(_instance(dep, st["suffix"]))
        parent = w.node(cur).parent
        if parent:
            todo.append(_instance(parent, _parent_suffix(st["suffix"])))
    return name in seen


def _parent_suffix(suffix: str) -> str:
    return suffix[: suffix.rfind("[")] if suffix else ""


def _sequence_done(w: _Work, scope: str) -> bool:
    return all(st["status"] in FINISHED for st in w.steps.values() if st["scope"] == scope)


def _finish_compensation(w: _Work) -> None:
    if w.state["phase"] != "compensating" or not _sequence_done(w, "/compensations"):
        return
    comps = w.state.get("compensations", [])
    failed = [c for c in comps if w.steps[c]["status"] != "succeeded"]
    w.state["phase"] = "done"
    if comps and not failed:
        w.state["final"] = "compensated"
    else:
        w.state["final"] = "failed"
        if failed:
            w.state["error"] = {
                **(w.state.get("error") or {}),
                "compensation_failed": failed,
            }
    w.state["finished"] = w.now
    w.emit(f"run.{w.state['final']}", error=w.state.get("error"))


def _on_timer(w: _Work, e: TimerFired) -> None:
    st = w.steps.get(e.step)
    if st is None or st["due"] is None or st["due"] > e.now + 1e-6:
        return
    if st["status"] == "retrying":
        if w.state.get("paused") or w.state["phase"] != "main" and st["kind"] == "action":
            return
        _dispatch(w, e.step)
    elif st["status"] == "running" and w.node(e.step).spec.type == "sleep":
        slept = round(e.now - (st["started"] or e.now), 3)
        w.commands.append(CloseAttempt(e.step, st["attempt"], "succeeded", {"slept": slept}))
        _succeed(w, e.step, {"slept": slept}, st["attempt"])


def _on_decided(w: _Work, e: InterventionDecided) -> None:
    _require_open(w)
    st = w.steps.get(e.step)
    if st is None:
        raise EngineError(f"no step {e.step!r} in this run")
    decision = {"action": e.action, "by": e.by, "comment": e.comment, "output": e.output}
    w.commands.append(CloseInterventions(e.step))
    w.emit("intervention.decided", e.step, **decision)
    if st["status"] == "running" and w.node(e.step).kind == "approval":
        if e.action == "approve":
            w.commands.append(CloseAttempt(e.step, st["attempt"], "succeeded", decision))
            _succeed(w, e.step, decision, st["attempt"])
        elif e.action == "reject":
            error = {
                "type": "Rejected",
                "message": e.comment or f"rejected by {e.by or 'operator'}",
            }
            w.commands.append(CloseAttempt(e.step, st["attempt"], "failed", None, error))
            _fail_step(w, e.step, st["attempt"], error, 1.0)
        else:
            raise EngineError(f"an approval takes approve or reject, not {e.action!r}")
        return
    if st.get("escalated"):
        w.step(e.step)["escalated"] = False
        if e.action == "retry":
            _retry(w, e.step)
        elif e.action == "skip":
            _skip(w, e.step, e.output)
        elif e.action == "compensate":
            _fail_run(w, st["error"], e.step)  # on-error handlers, then compensations
        elif e.action == "abort":
            _on_cancel(w, CancelRun(w.now, f"aborted by {e.by or 'operator'} at {e.step}"))
        else:
            raise EngineError(
                f"an escalation takes {', '.join(ESCALATION_OPTIONS)}, not {e.action!r}"
            )
        return
    raise EngineError(f"step {e.step!r} is not waiting for a decision")


def _retry(w: _Work, name: str) -> None:
    """A failed step starts over with its full retry budget; a step waiting for its next
    retry runs it now and keeps its count (the pending timer then finds nothing to do)."""
    st = w.step(name)
    if st["status"] != "retrying":
        st.update(retries=0, error=None, continued=False, fallback_done=False)
    _dispatch(w, name)


def _skip(w: _Work, name: str, output: Any) -> None:
    st = w.step(name)
    st.update(
        status="skipped", output=output, error=None, due=None, finished=w.now, continued=False
    )
    w.emit("step.skipped", name, reason="skipped by operator", output=output)


def _reopen(w: _Work) -> None:
    """A failed run that an operator retries or skips a step of goes back to work."""
    if w.state["phase"] == "main":
        return
    if (
        w.state["phase"] != "done"
        or w.state.get("final") != "failed"
        or w.state.get("compensations")
    ):
        raise EngineError("only a run that failed without compensating can be reopened")
    w.state.update(phase="main", error=None, final=None, finished=None)
    w.state["deadline"] = w.now + w.spec.settings.timeout
    for name, st in list(w.steps.items()):
        if st["kind"] == "handler":
            del w.steps[name]
        elif st["status"] == "cancelled":
            w.step(name).update(status="pending", finished=None)
    w.emit("run.reopened")


def _on_retry_step(w: _Work, e: RetryStep) -> None:
    st = w.steps.get(e.step)
    if st is None:
        raise EngineError(f"no step {e.step!r} in this run")
    if st["status"] not in ("failed", "cancelled", "retrying"):
        raise EngineError(f"step {e.step!r} is {st['status']}; only a failed step can be retried")
    if w.state.get("cancelled"):
        raise EngineError("the run was cancelled")
    _reopen(w)
    if st.get("escalated"):
        w.commands.append(CloseInterventions(e.step))
        w.step(e.step)["escalated"] = False
    w.emit("step.retry_requested", e.step)
    _retry(w, e.step)


def _on_skip_step(w: _Work, e: SkipStep) -> None:
    st = w.steps.get(e.step)
    if st is None:
        raise EngineError(f"no step {e.step!r} in this run (it may not have been reached yet)")
    if st["status"] in ("succeeded", "skipped", "compensated", "queued", "running"):
        raise EngineError(f"step {e.step!r} is {st['status']}; it cannot be skipped now")
    if w.state.get("cancelled"):
        raise EngineError("the run was cancelled")
    _reopen(w)
    if st.get("escalated"):
        w.commands.append(CloseInterventions(e.step))
        w.step(e.step)["escalated"] = False
    _skip(w, e.step, e.output)


def _on_pause(w: _Work, e: PauseRun) -> None:
    _require_open(w)
    if w.state.get("paused"):
        raise EngineError("the run is already paused")
    w.state["paused"] = True
    w.emit("run.paused")


def _on_resume(w: _Work, e: ResumeRun) -> None:
    _require_open(w)
    if not w.state.get("paused"):
        raise EngineError(f"the run is {w.state.get('status')}, not paused")
    w.state["paused"] = False
    w.emit("run.resumed")
    for name, st in list(w.steps.items()):
        if st["status"] == "retrying" and st["due"] is not None and st["due"] <= w.now:
            _dispatch(w, name)


def _on_cancel(w: _Work, e: CancelRun) -> None:
    _require_open(w)
    w.state["cancelled"] = True
    _stop_main(w, "cancelled")
    for name, st in list(w.steps.items()):
        if st["status"] not in FINISHED:
            if st["status"] in ("queued", "running") and st["attempt"]:
                w.commands.append(CloseAttempt(name, st["attempt"], "cancelled"))
            w.step(name).update(status="cancelled", finished=w.now)
    w.state.update(phase="done", final="cancelled", finished=w.now)
    w.state["error"] = {"type": "Cancelled", "message": e.reason}
    w.emit("run.cancelled", reason=e.reason)


def _on_run_timeout(w: _Work, e: RunTimedOut) -> None:
    deadline = w.state.get("deadline")
    if w.state.get("phase") != "main" or deadline is None or deadline > e.now + 1e-6:
        return
    error = {
        "type": "RunTimeout",
        "message": f"the run exceeded its timeout of {w.spec.settings.timeout:g}s",
    }
    _fail_run(w, error, None, drain=False)


def _cancel_active(w: _Work) -> None:
    """Close every attempt in flight (it will not be reported) and open interventions."""
    cancelled = []
    for name, st in w.steps.items():
        if st["status"] in ("queued", "running") and st["attempt"] and st["kind"] != "flow":
            w.commands.append(CloseAttempt(name, st["attempt"], "cancelled"))
            cancelled.append(name)
    if cancelled:
        w.commands.append(CancelAttempts(tuple(cancelled)))
    w.commands.append(CloseInterventions(None))


def _reset_step(w: _Work, name: str) -> None:
    st = w.step(name)
    st.update(
        status="pending",
        output=None,
        error=None,
        due=None,
        started=None,
        finished=None,
        retries=0,
        continued=False,
        fallback_done=False,
        escalated=False,
    )
    for other in [n for n, o in w.steps.items() if o["scope"] == f"{name}/fallback"]:
        w.forget(other)


def _back_to_main(w: _Work) -> None:
    """Leave the failure/compensation phases: handler and compensation instances go."""
    for name in [n for n, st in w.steps.items() if st["kind"] in ("handler", "compensation")]:
        w.forget(name)
    for name, st in list(w.steps.items()):
        if st["status"] == "compensated":
            w.step(name)["status"] = "succeeded"
        elif st["status"] == "cancelled":
            w.step(name).update(status="pending", finished=None)
    w.state.update(
        phase="main",
        error=None,
        final=None,
        finished=None,
        paused=False,
        cancelled=False,
        compensations=[],
        output=None,
    )
    w.state["deadline"] = w.now + w.spec.settings.timeout


def _on_restore(w: _Work, e: RestoreState) -> None:
    if w.state.get("phase") == "new":
        raise EngineError("the run has not started")
    problems = validate_state(e.state)
    if problems:
        raise EngineError("the checkpoint's state is not valid: " + "; ".join(problems[:5]))
    _cancel_active(w)
    floor = dict(w.state.get("attempt_floor", {}))
    for name, st in w.steps.items():
        floor[name] = max(floor.get(name, 0), st.get("attempt", 0))
    for name, n in e.state.get("attempt_floor", {}).items():
        floor[name] = max(floor.get(name, 0), n)
    restored = dict(e.state)
    restored["steps"] = {n: dict(st) for n, st in e.state["steps"].items()}
    restored["attempt_floor"] = floor
    restored["breakpoints"] = list(w.state.get("breakpoints", []))
    w.state = restored
    w._copied = set(restored["steps"])
    for name, st in w.steps.items():
        st["attempt"] = max(st.get("attempt", 0), floor.get(name, 0))
        if st["status"] in ("queued", "running", "retrying", "cancelled"):
            if st["kind"] == "flow" and st["status"] == "running":
                continue  # its children say what is left
            _reset_step(w, name)
        elif st["status"] == "failed" and not st.get("continued"):
            _reset_step(w, name)
    _back_to_main(w)
    w.emit("run.restored", checkpoint=e.checkpoint)


def _downstream(w: _Work, start: str) -> set[str]:
    """``start`` and every step instance that (transitively) waits for it."""
    reset = {start}
    changed = True
    while changed:
        changed = False
        for name, st in w.steps.items():
            if name in reset or st["kind"] in ("handler", "compensation", "fallback"):
                continue
            deps = {_instance(d, st["suffix"]) for d in w.node(name).deps}
            if deps & reset or _parent_instance(w, name) in reset:
                reset.add(name)
                changed = True
    return reset


def _parent_instance(w: _Work, name: str) -> str | None:
    """The flow step instance ``name`` is nested in (None at the top or for fallbacks)."""
    st = w.steps[name]
    node = w.node(name)
    if node.parent is None or st["kind"] in ("fallback", "compensation", "handler"):
        return None
    parent_is_if = w.nodes[node.parent].spec.type == "if"
    return _instance(node.parent, st["suffix"] if parent_is_if else _parent_suffix(st["suffix"]))


def _ancestors(w: _Work, name: str) -> list[str]:
    out = []
    parent = _parent_instance(w, name)
    while parent is not None and parent in w.steps:
        out.append(parent)
        parent = _parent_instance(w, parent)
    return out


def _on_resume_from(w: _Work, e: ResumeFromStep) -> None:
    if w.state.get("phase") == "new":
        raise EngineError("the run has not started")
    st = w.steps.get(e.step)
    if st is None:
        raise EngineError(f"no step {e.step!r} in this run (it may not have been reached yet)")
    if st["kind"] in ("handler", "compensation", "fallback"):
        raise EngineError(f"step {e.step!r} is a {st['kind']} step; resume from the step it serves")
    if w.state.get("status") in ("running", "waiting", "compensating", "pending"):
        raise EngineError(
            f"the run is {w.state.get('status')}: pause it first, then resume from a step"
        )
    _cancel_active(w)
    reset = _downstream(w, e.step)
    for name in list(reset):
        if name not in w.steps:
            continue
        if w.steps[name]["kind"] == "flow":
            for child in [n for n, c in w.steps.items() if c["scope"].startswith(name + "/")]:
                w.forget(child)
        _reset_step(w, name)
    for anc in _ancestors(w, e.step):
        if w.steps[anc]["status"] != "pending":
            w.step(anc).update(status="running", finished=None, output=w.steps[anc]["output"])
    w.state["completed"] = [
        n for n in w.state.get("completed", []) if n in w.steps and n not in reset
    ]
    was_paused = w.state.get("paused", False)
    _back_to_main(w)
    w.state["paused"] = False if w.state.get("status") == "paused" else was_paused
    w.emit("run.resumed_from", e.step, steps=sorted(reset))


def _on_breakpoint(w: _Work, e: SetBreakpoint) -> None:
    _require_open(w)
    if e.step not in w.nodes and e.step not in w.steps:
        raise EngineError(f"no step {e.step!r} in this workflow")
    points = [b for b in w.state.get("breakpoints", []) if b != e.step]
    if e.enabled:
        points.append(e.step)
    w.state["breakpoints"] = points
    w.emit("run.breakpoint_set" if e.enabled else "run.breakpoint_cleared", e.step)


def _on_migrate(w: _Work, e: MigrateVersion) -> None:
    unmapped = unmapped_steps(w.spec, w.state)
    if unmapped:
        raise EngineError(
            "these steps of the run do not exist in the new version: " + ", ".join(unmapped)
        )
    for name in [n for n, st in w.steps.items() if st["base"] not in w.nodes]:
        w.forget(name)  # pending steps the new version dropped
    for s in w.spec.steps:
        if s.name not in w.steps:
            w.new_step(s.name, s.name, "", w.nodes[s.name].kind, "")
    w.state["workflow_version"] = e.to_version
    w.emit("run.migrated", from_version=e.from_version, to_version=e.to_version)


def _on_manual_checkpoint(w: _Work, e: ManualCheckpoint) -> None:
    if w.state.get("phase") == "new":
        raise EngineError("the run has not started")
    w.commands.append(TakeCheckpoint("manual", ""))
    w.emit("checkpoint.requested")


def unmapped_steps(spec: WorkflowSpec, state: dict[str, Any]) -> list[str]:
    """Steps the run has begun or finished that ``spec`` does not have."""
    nodes = index(spec)
    return sorted(
        name
        for name, st in state.get("steps", {}).items()
        if st["base"] not in nodes and st["status"] != "pending"
    )


STEP_STATUSES = frozenset(
    {
        "pending",
        "queued",
        "running",
        "retrying",
        "succeeded",
        "failed",
        "skipped",
        "cancelled",
        "compensated",
    }
)
PHASES = frozenset({"new", "main", "handlers", "compensating", "done"})
_STEP_KEYS = ("base", "suffix", "kind", "scope", "status", "attempt")


def validate_state(state: Any) -> list[str]:
    """Schema check of a state document; returns the problems (empty: valid)."""
    if not isinstance(state, dict):
        return ["the state is not an object"]
    problems = []
    if state.get("schema") != STATE_SCHEMA:
        problems.append(f"schema is {state.get('schema')!r}, expected {STATE_SCHEMA}")
    if state.get("phase") not in PHASES:
        problems.append(f"phase {state.get('phase')!r} is not one of {sorted(PHASES)}")
    steps = state.get("steps")
    if not isinstance(steps, dict):
        return [*problems, "steps is not an object"]
    for name, st in steps.items():
        if not isinstance(st, dict):
            problems.append(f"steps.{name} is not an object")
            continue
        missing = [k for k in _STEP_KEYS if k not in st]
        if missing:
            problems.append(f"steps.{name} lacks {', '.join(missing)}")
        elif st["status"] not in STEP_STATUSES:
            problems.append(f"steps.{name}.status {st['status']!r} is not a step status")
        elif not isinstance(st["attempt"], int) or st["attempt"] < 0:
            problems.append(f"steps.{name}.attempt must be a non-negative integer")
    return problems


_HANDLERS: dict[type, Any] = {
    StartRun: _on_start,
    AttemptSucceeded: _on_success,
    AttemptFailed: _on_failure,
    TimerFired: _on_timer,
    InterventionDecided: _on_decided,
    PauseRun: _on_pause,
    ResumeRun: _on_resume,
    CancelRun: _on_cancel,
    RunTimedOut: _on_run_timeout,
    RetryStep: _on_retry_step,
    SkipStep: _on_skip_step,
    RestoreState: _on_restore,
    ResumeFromStep: _on_resume_from,
    SetBreakpoint: _on_breakpoint,
    MigrateVersion: _on_migrate,
    ManualCheckpoint: _on_manual_checkpoint,
}

# --------------------------------------------------------------------------- advancing


def _advance(w: _Work) -> None:
    """Start whatever is ready; finish flows, fallbacks, handlers and the run."""
    for _ in range(10_000):
        progressed = _advance_once(w)
        if not progressed:
            break
    _finish_compensation(w)
    if w.state["phase"] == "main" and _main_done(w):
        _complete_run(w)


def _advance_once(w: _Work) -> bool:
    progressed = False
    phase = w.state.get("phase")
    if phase in ("new", "done"):
        return False
    for name in list(w.steps):
        st = w.steps[name]
        status = st["status"]
        if status == "pending":
            if _ready(w, name) and _may_start(w, name):
                if _at_breakpoint(w, name):
                    return True
                _start(w, name)
                progressed = True
        elif status == "running" and st["kind"] == "flow" and _flow_done(w, name):
            _finish_flow(w, name)
            progressed = True
        elif (
            status == "failed"
            and st["kind"] in ("action", "approval")
            # once the run is failing, a fallback cut short resolves nothing (no escalation)
            and w.state["phase"] == "main"
            and (
                not st.get("fallback_done")
                and f"{name}/fallback" in _scopes(w)
                and _sequence_done(w, f"{name}/fallback")
            )
        ):
            w.step(name)["fallback_done"] = True
            w.emit("step.fallback_done", name)
            _resolve_failure(w, name)
            progressed = True
    if phase == "handlers" and _sequence_done(w, "/handlers"):
        _after_handlers(w)
        progressed = progressed or w.state["phase"] != "handlers"
    return progressed


def _at_breakpoint(w: _Work, name: str) -> bool:
    points = w.state.get("breakpoints") or []
    hit = (
        name
        if name in points
        else (w.steps[name]["base"] if w.steps[name]["base"] in points else None)
    )
    if hit is None:
        return False
    w.state["breakpoints"] = [p for p in points if p != hit]
    w.state["paused"] = True
    w.emit("run.paused", name, reason=f"breakpoint before {name}")
    return True


def _scopes(w: _Work) -> set[str]:
    return {st["scope"] for st in w.steps.values()}


def _may_start(w: _Work, name: str) -> bool:
    kind = w.steps[name]["kind"]
    phase = w.state["phase"]
    if kind == "handler":
        return bool(phase == "handlers")
    if kind == "compensation":
        return bool(phase == "compensating")
    if phase != "main":
        return False
    return not w.state.get("paused")


def _ready(w: _Work, name: str) -> bool:
    st = w.steps[name]
    node = w.node(name)
    scope = st["scope"]
    if st["kind"] in ("fallback", "handler", "compensation"):
        # sequential lists: wait for the one before
        if st["kind"] == "compensation":
            order = w.state.get("compensations", [])
            i = order.index(name) if name in order else 0
            prev = order[i - 1] if i else None
        else:
            # spec order, never the dict's: PostgreSQL's jsonb does not keep key order
            i = node.siblings.index(st["base"])
            prev = node.siblings[i - 1] + name[len(st["base"]) :] if i else None
        return prev is None or prev not in w.steps or w.steps[prev]["status"] in FINISHED
    suffix = st["suffix"]
    for dep in node.deps:
        dst = w.steps.get(_instance(dep, suffix))
        if dst is None:
            return False
        if dst["status"] in DONE:
            continue
        if dst["status"] == "failed" and dst.get("continued"):
            continue
        return False
    if scope.count("/") and scope.rsplit("/", 1)[1].isdigit():
        return _iteration_may_run(w, scope)
    return True


def _iteration_may_run(w: _Work, scope: str) -> bool:
    """max-parallel: iterations start in order, at most N in flight at once."""
    owner, idx = scope.rsplit("/", 1)
    limit = w.node(owner).spec.max_parallel
    if limit is None:
        return True
    members: dict[int, list[str]] = {}
    for st in w.steps.values():
        head, _, tail = st["scope"].rpartition("/")
        if head == owner and tail.isdigit():
            members.setdefault(int(tail), []).append(st["status"])
    in_flight = 0
    first_unstarted = None
    for i in sorted(members):
        statuses = members[i]
        begun = any(s != "pending" for s in statuses)
        if i == int(idx) and begun:
            return True
        if begun and not all(s in FINISHED for s in statuses):
            in_flight += 1
        if not begun and first_unstarted is None:
            first_unstarted = i
    return in_flight < limit and first_unstarted == int(idx)


def _start(w: _Work, name: str) -> None:
    node = w.node(name)
    spec = node.spec
    if spec.if_:
        try:
            go = bool(expressions.evaluate(spec.if_, w.context(name)))
        except expressions.ExpressionError as exc:
            _condition_error(w, name, exc)
            return
        if not go:
            w.step(name).update(status="skipped", finished=w.now)
            w.emit("step.skipped", name, reason=f"condition is false: {spec.if_}")
            return
    if spec.type == "if":
        _start_if(w, name)
    elif spec.type == "foreach":
        _start_foreach(w, name)
    elif spec.type == "sleep":
        _start_sleep(w, name)
    elif spec.type == "approval":
        _start_approval(w, name)
    else:
        _dispatch(w, name)


def _condition_error(w: _Work, name: str, exc: Exception) -> None:
    st = w.step(name)
    st["attempt"] = st["attempt"] + 1
    error = {"type": "ExpressionError", "message": str(exc)}
    st.update(status="running", started=w.now)
    w.commands.append(RecordAttempt(name, st["attempt"], st["kind"], w.node(name).spec.type, None))
    w.commands.append(CloseAttempt(name, st["attempt"], "failed", None, error))
    _fail_step(w, name, st["attempt"], error, 1.0)


def _render_with(w: _Work, name: str) -> Any:
    return expressions.render(dict(w.node(name).spec.with_), w.context(name))


def _dispatch(w: _Work, name: str) -> None:
    """Begin the next attempt of an action step."""
    st = w.step(name)
    node = w.node(name)
    try:
        rendered = _render_with(w, name) if node.spec.with_ else {}
    except expressions.ExpressionError as exc:
        _condition_error(w, name, exc)
        return
    attempt = st["attempt"] + 1
    st.update(status="queued", attempt=attempt, due=None, started=st["started"] or w.now)
    st["finished"] = None
    timeout = node.spec.timeout or w.spec.settings.step_timeout
    fault = _fault_for(w, name, attempt)
    w.commands.append(
        DispatchAttempt(name, attempt, st["kind"], node.spec.type, rendered, timeout, fault)
    )
    w.emit("step.queued", name, attempt)


def _fault_for(w: _Work, name: str, attempt: int) -> dict[str, Any] | None:
    for fault in w.state.get("faults", []):
        if fault.get("step") in (name, w.steps[name]["base"]):
            attempts = fault.get("attempts")
            if attempts is None or attempt in attempts:
                return dict(fault)
    return None


def _start_sleep(w: _Work, name: str) -> None:
    st = w.step(name)
    try:
        rendered = _render_with(w, name)
        from workflows.spec import parse_duration

        seconds = parse_duration(rendered.get("duration", 0))
    except (expressions.ExpressionError, ValueError) as exc:
        _condition_error(w, name, exc)
        return
    attempt = st["attempt"] + 1
    st.update(status="running", attempt=attempt, started=w.now, due=w.now + seconds)
    w.commands.append(RecordAttempt(name, attempt, st["kind"], "sleep", rendered))
    w.commands.append(SetTimer(name, w.now + seconds))
    w.emit("step.sleeping", name, attempt, seconds=seconds)


def _start_approval(w: _Work, name: str) -> None:
    st = w.step(name)
    try:
        rendered = _render_with(w, name)
    except expressions.ExpressionError as exc:
        _condition_error(w, name, exc)
        return
    attempt = st["attempt"] + 1
    st.update(status="running", attempt=attempt, started=w.now)
    prompt = str(rendered.get("prompt") or f"Approve step {name}?")
    w.commands.append(RecordAttempt(name, attempt, "approval", "approval", rendered))
    w.commands.append(
        OpenIntervention(
            name, "approval", f"Approval needed: {prompt}", ("approve", "reject"), prompt
        )
    )
    w.emit("step.awaiting_approval", name, attempt, prompt=prompt)


def _start_if(w: _Work, name: str) -> None:
    node = w.node(name)
    st = w.step(name)
    assert node.spec.condition is not None
    try:
        taken = bool(expressions.evaluate(node.spec.condition, w.context(name)))
    except expressions.ExpressionError as exc:
        _condition_error(w, name, exc)
        return
    st.update(status="running", started=w.now, output={"branch": "then" if taken else "else"})
    suffix = st["suffix"]
    for branch, steps in (("then", node.spec.steps), ("else", node.spec.else_)):
        for s in steps:
            child = _instance(s.name, suffix)
            w.new_step(child, s.name, suffix, w.nodes[s.name].kind, f"{name}/{branch}")
            if (branch == "then") != taken:
                w.step(child).update(status="skipped", finished=w.now)
    w.emit("step.branch", name, branch="then" if taken else "else")


def _start_foreach(w: _Work, name: str) -> None:
    node = w.node(name)
    st = w.step(name)
    assert node.spec.foreach is not None
    try:
        items = expressions.evaluate(node.spec.foreach, w.context(name))
        if not isinstance(items, list):
            raise expressions.ExpressionError(
                node.spec.foreach, f"gave {type(items).__name__}, not a list"
            )
    except expressions.ExpressionError as exc:
        _condition_error(w, name, exc)
        return
    st.update(status="running", started=w.now, output=None)
    st["items"] = len(items)
    iterations = dict(w.state.get("iterations", {}))
    for i, item in enumerate(items):
        suffix = f"{st['suffix']}[{i}]"
        iterations[suffix] = {"item": item, "index": i}
        for s in node.spec.steps:
            w.new_step(
                _instance(s.name, suffix), s.name, suffix, w.nodes[s.name].kind, f"{name}/{i}"
            )
    w.state["iterations"] = iterations
    w.emit("step.foreach", name, items=len(items))


def _flow_done(w: _Work, name: str) -> bool:
    prefix = name + "/"
    children = [
        s
        for s in w.steps.values()
        if s["scope"].startswith(prefix) and s["scope"].count("/") == 1 + name.count("/")
    ]
    for s in children:
        if s["status"] in DONE:
            continue
        if s["status"] == "failed" and s.get("continued"):
            continue
        return False
    return True


def _finish_flow(w: _Work, name: str) -> None:
    node = w.node(name)
    st = w.steps[name]
    if node.spec.type == "foreach":
        last = node.spec.steps[-1].name
        outputs = [
            w.steps[f"{last}{st['suffix']}[{i}]"]["output"] for i in range(st.get("items", 0))
        ]
        _succeed(w, name, outputs, None)
    else:
        _succeed(w, name, st["output"], None)


def _main_done(w: _Work) -> bool:
    for st in w.steps.values():
        if st["scope"] != "":
            continue
        if st["status"] in DONE:
            continue
        if st["status"] == "failed" and st.get("continued"):
            continue
        return False
    return True


def _complete_run(w: _Work) -> None:
    output = {
        name: st["output"]
        for name, st in w.steps.items()
        if st["scope"] == ""
        and (
            st["status"] == "succeeded" or (st["status"] == "skipped" and st["output"] is not None)
        )
    }
    w.state.update(phase="done", final="succeeded", output=output, finished=w.now)
    w.emit("run.succeeded")


def _derive_status(w: _Work) -> str:
    phase = w.state.get("phase")
    if phase == "new":
        return "pending"
    if phase == "done":
        return str(w.state["final"])
    if phase == "compensating":
        return "compensating"
    steps = w.steps.values()
    if w.state.get("paused") and phase == "main":
        return "paused"  # an operator's pause shows, even while a decision is pending
    if any(
        s.get("escalated") or (s["kind"] == "approval" and s["status"] == "running") for s in steps
    ):
        return "awaiting_intervention"
    if phase == "handlers":
        return "running"
    busy = any(
        s["status"] in ("queued", "running")
        and s["kind"] != "flow"
        and not (s["due"] is not None and s["status"] == "running")
        for s in steps
    )
    if busy:
        return "running"
    long_timer = any(s["due"] is not None and s["status"] in ("retrying", "running") for s in steps)
    short_only = all(
        s["due"] is None or s["due"] - w.now <= w.short_wait
        for s in steps
        if s["status"] == "retrying"
    ) and not any(s["due"] is not None and s["status"] == "running" for s in steps)
    if long_timer and not short_only:
        return "waiting"
    return "running"


# --------------------------------------------------------------------------- queries


def next_due(state: dict[str, Any]) -> float | None:
    """The earliest timer (retry wait, sleep) of the run, or None."""
    dues = [
        s["due"]
        for s in state.get("steps", {}).values()
        if s.get("due") is not None and s["status"] in ("retrying", "running")
    ]
    return min(dues) if dues else None


def progress(state: dict[str, Any]) -> dict[str, int]:
    counts = {"completed": 0, "running": 0, "pending": 0, "failed": 0}
    for s in state.get("steps", {}).values():
        if s["kind"] == "flow":
            continue
        status = s["status"]
        if status in DONE:
            counts["completed"] += 1
        elif status in ("queued", "running", "retrying"):
            counts["running"] += 1
        elif status == "pending":
            counts["pending"] += 1
        elif status == "failed":
            if s.get("continued"):
                counts["completed"] += 1
            else:
                counts["failed"] += 1
        else:
            counts["completed"] += 1
    total = sum(counts.values())
    counts["percent"] = round(100 * counts["completed"] / total) if total else 0
    return counts


def downstream_of(spec: WorkflowSpec, state: dict[str, Any], step: str) -> set[str]:
    """The steps that resume-from ``step`` would run again (``step`` included)."""
    return _downstream(_Work(spec, state, 0.0, DEFAULT_SHORT_WAIT), step)
