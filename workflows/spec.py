"""Workflow language: text -> immutable typed ``WorkflowSpec``.

Every validation rule lives here. Errors carry a path such as
``steps[1].on-failure.retry.max-attempts`` so a user knows where to look.

Entry points: ``parse_workflow(text)`` (text -> ``ParsedWorkflow``) and
``validate_data(data)`` (a plain dict -> ``WorkflowSpec``); both raise
``SpecError`` listing every problem found. ``WorkflowSpec.model_validate``
alone checks field types but not the cross-step rules (names, needs, cycles,
per-type ``with``): always go through ``validate_data``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jsonschema
import jsonschema.validators
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from workflows import expressions

NAME_RE = re.compile(r"^[a-z0-9_-]{1,100}$")
STEP_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
DURATION_RE = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
PYTHON_FUNCTION_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
STATUS_RANGE_RE = re.compile(r"^\s*(\d{3})\s*-\s*(\d{3})\s*$")
THRESHOLD_PERCENT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
STEP_TYPE_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,99}$")

ACTION_TYPES = ("noop", "sleep", "http", "python", "approval")
FLOW_TYPES = ("if", "foreach")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
ERROR_CLASSES = (
    "timeout",
    "resource_exhaustion",
    "rate_limited",
    "infinite_loop",
    "deadlock",
    "state_corruption",
    "transient",
    "permanent",
    "step_error",
    "unknown",
)
RECOVERY_STRATEGIES = (
    "retry_step",
    "increase_timeout_and_retry",
    "restart_from_checkpoint",
    "restore_from_last_valid_checkpoint",
    "queue_for_later",
    "manual_intervention",
)
RETRY_BUDGET_KEY = "retry-budget"

#: Kinds of step as reported by ``WorkflowSpec.all_steps`` (and the API's ``kind``).
StepKind = Literal["action", "fallback", "compensation", "handler"]


class SpecError(Exception):
    """A workflow that does not validate. ``errors`` is a list of {path, message}."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e['path']}: {e['message']}" for e in errors))


# --------------------------------------------------------------------------- step types

#: Extra ``with`` checks of registered step types: ``with`` dict -> (sub-path, message).
WithCheck = Callable[[dict[str, Any]], Iterable[tuple[str, str]]]

_REGISTERED_TYPES: dict[str, WithCheck | None] = {}


def register_step_type(name: str, check: WithCheck | None = None) -> None:
    """Make ``name`` a valid step ``type`` (an action step).

    ``check`` optionally validates the step's ``with`` at save time and yields
    ``(sub_path, message)`` pairs, ``sub_path`` relative to ``with`` (``""`` for
    ``with`` itself). Registering the same name again replaces the check.
    """
    if not isinstance(name, str) or not STEP_TYPE_RE.match(name):
        raise ValueError(f"invalid step type name {name!r}: use [a-z][a-z0-9_.-]*")
    if name in ACTION_TYPES or name in FLOW_TYPES:
        raise ValueError(f"{name!r} is a built-in step type")
    _REGISTERED_TYPES[name] = check


def unregister_step_type(name: str) -> None:
    """Forget a registered step type (mostly for tests)."""
    _REGISTERED_TYPES.pop(name, None)


def known_step_types() -> tuple[str, ...]:
    """Built-in types first, then the registered ones in alphabetical order."""
    return ACTION_TYPES + FLOW_TYPES + tuple(sorted(_REGISTERED_TYPES))


# --------------------------------------------------------------------------- durations


def parse_duration(value: str | int | float) -> float:
    """'250ms' -> 0.25, '5s' -> 5.0, '2h' -> 7200.0. Bare numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 250ms, 5s, 2m, 1h, 1d or 1w")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    match = DURATION_RE.match(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError(
            f"{value!r} is not a duration: use an integer and a unit, e.g. 250ms, 5s, 2m, 1h, 1d, 1w"
        )
    return int(match.group(1)) * DURATION_UNITS[match.group(2)]


class _NestedErrors(ValueError):
    """A ValueError carrying several (sub-path, message) problems below the field."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self.items = items
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in items))


# --------------------------------------------------------------------------- models


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        arbitrary_types_allowed=True,
    )


def parse_written_duration(value: Any) -> float:
    """A duration as a workflow writes it: always with its unit (CONTRACT: an integer
    followed by ms, s, m, h, d or w). Values rendered at run time use ``parse_duration``."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value != 0:
        raise ValueError(
            f"{value!r} needs a unit: write e.g. {value:g}s (units: ms, s, m, h, d, w)"
        )
    return parse_duration(value)


def _duration_field(v: Any) -> float:
    return parse_written_duration(v)


def _optional_duration(v: Any) -> float | None:
    return None if v is None else parse_written_duration(v)


def _optional_expression(v: Any) -> str | None:
    return None if v is None else expressions.check_expression(v)


class RetrySpec(_Model):
    max_attempts: int = Field(alias="max-attempts", ge=1, strict=True)
    delay: float = 0.0
    strategy: Literal["fixed", "linear", "exponential"] = "fixed"
    multiplier: float = Field(default=2.0, gt=0)
    max_delay: float | None = Field(default=None, alias="max-delay")
    jitter: bool = False
    condition: str | None = None
    retry_on: tuple[str, ...] | None = Field(default=None, alias="retry-on")
    do_not_retry_on: tuple[str, ...] = Field(default=(), alias="do-not-retry-on")

    _dur = field_validator("delay", "max_delay", mode="before")(_optional_duration)
    _cond = field_validator("condition", mode="before")(_optional_expression)

    def wait_before_retry(self, retry_number: int, jitter_factor: float = 1.0) -> float:
        """Seconds to wait before the n-th retry (1-based).

        ``jitter_factor`` comes from outside (the engine is deterministic) and is
        only applied when ``jitter`` is on; callers pass a value in [0.75, 1.25].
        """
        if self.strategy == "fixed":
            wait = self.delay
        elif self.strategy == "linear":
            wait = self.delay * retry_number
        else:
            wait = self.delay * self.multiplier ** (retry_number - 1)
        if self.max_delay is not None:
            wait = min(wait, self.max_delay)
        if self.jitter:
            wait *= jitter_factor
        return wait

    def allows(self, error_type: str | None) -> bool:
        """``retry-on`` / ``do-not-retry-on`` filter (the ``condition`` is separate)."""
        if error_type is not None and error_type in self.do_not_retry_on:
            return False
        return self.retry_on is None or error_type in self.retry_on


class OnFailureSpec(_Model):
    retry: RetrySpec | None = None
    fallback: tuple[StepSpec, ...] = ()
    continue_: bool = Field(default=False, alias="continue")
    escalate: bool = False

    @field_validator("fallback", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return () if v is None else v

    @model_validator(mode="after")
    def _continue_or_escalate(self) -> OnFailureSpec:
        if self.continue_ and self.escalate:
            raise ValueError("continue and escalate cannot both be true")
        return self


class CircuitBreakerSpec(_Model):
    key: str | None = None
    failure_threshold: str | float = Field(default="50%", alias="failure-threshold")
    minimum_throughput: int = Field(default=10, alias="minimum-throughput", ge=1)
    open_for: float = Field(default=30.0, alias="open-for")
    half_open_successes: int = Field(default=3, alias="half-open-successes", ge=1)

    _dur = field_validator("open_for", mode="before")(_duration_field)

    @field_validator("failure_threshold", mode="before")
    @classmethod
    def _threshold(cls, v: Any) -> Any:
        threshold_ratio(v)
        return v

    @property
    def threshold(self) -> float:
        """The failure threshold as a ratio in (0, 1]."""
        return threshold_ratio(self.failure_threshold)


def threshold_ratio(value: Any) -> float:
    """``'50%'`` -> 0.5, ``0.5`` -> 0.5; ValueError outside (0, 1] / (0%, 100%]."""
    message = "must be a percentage such as 50% or a number in (0, 1]"
    if isinstance(value, str):
        match = THRESHOLD_PERCENT_RE.match(value)
        if not match:
            raise ValueError(message)
        ratio = float(match.group(1)) / 100
    elif isinstance(value, int | float) and not isinstance(value, bool):
        ratio = float(value)
    else:
        raise ValueError(message)
    if not 0 < ratio <= 1:
        raise ValueError(message)
    return ratio


class StepSpec(_Model):
    """One step of any kind. ``type`` decides which fields matter."""

    name: str
    type: str
    description: str | None = None
    needs: tuple[str, ...] | None = None
    if_: str | None = Field(default=None, alias="if")
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    timeout: float | None = None
    critical: bool = False
    compensate: StepSpec | None = None
    on_failure: OnFailureSpec | None = Field(default=None, alias="on-failure")
    circuit_breaker: CircuitBreakerSpec | None = Field(default=None, alias="circuit-breaker")
    # flow steps
    condition: str | None = None  # type: if
    steps: tuple[StepSpec, ...] = ()  # if: then-branch; foreach: the body
    else_: tuple[StepSpec, ...] = Field(default=(), alias="else")
    foreach: str | None = None
    max_parallel: int | None = Field(default=None, alias="max-parallel", ge=1, strict=True)

    _dur = field_validator("timeout", mode="before")(_optional_duration)
    _expr = field_validator("if_", "condition", "foreach", mode="before")(_optional_expression)

    @model_validator(mode="before")
    @classmethod
    def _http_default_method(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") == "http":
            key = "with" if "with" in data or "with_" not in data else "with_"
            with_ = data.get(key)
            if isinstance(with_, dict) and "method" not in with_:
                return {**data, key: {**with_, "method": "GET"}}
        return data

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: Any) -> Any:
        if isinstance(v, str) and not STEP_NAME_RE.match(v):
            raise ValueError("must be 1-100 characters of letters, digits, _ and -")
        return v

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, v: Any) -> Any:
        if isinstance(v, str) and v not in known_step_types():
            raise ValueError(
                f"unknown step type {v!r}; known types: {', '.join(known_step_types())}"
            )
        return v

    @field_validator("with_", mode="before")
    @classmethod
    def _with(cls, v: Any) -> Any:
        if v is None:
            return {}
        problems = list(expressions.iter_template_errors(v))
        if problems:
            raise _NestedErrors(problems)
        return v

    @field_validator("steps", "else_", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return () if v is None else v

    @property
    def is_flow(self) -> bool:
        return self.type in FLOW_TYPES

    def children(self) -> Iterator[StepSpec]:
        """Every step nested directly in this one (branches, body, fallback, compensate)."""
        yield from self.steps
        yield from self.else_
        if self.on_failure:
            yield from self.on_failure.fallback
        if self.compensate:
            yield self.compensate


class CheckpointSettings(_Model):
    policy: Literal["after-each-step", "every-n-steps", "interval", "critical-only"] = (
        "after-each-step"
    )
    every: int = Field(default=5, ge=1)
    interval: float = 30.0
    compress_above: int = Field(default=1024, alias="compress-above", ge=0)
    keep: int = Field(default=50, ge=1)
    max_age: float = Field(default=7 * 86400.0, alias="max-age")

    _dur = field_validator("interval", "max_age", mode="before")(_duration_field)


def _strategy(v: Any) -> Any:
    if isinstance(v, str) and v not in RECOVERY_STRATEGIES:
        raise ValueError(f"unknown strategy {v!r}; use one of {', '.join(RECOVERY_STRATEGIES)}")
    return v


class RecoveryClassSpec(_Model):
    strategy: str
    multiplier: float = Field(default=2.0, gt=0)
    max_timeout: float | None = Field(default=None, alias="max-timeout")
    max_attempts: int = Field(default=3, alias="max-attempts", ge=1, strict=True)
    delay: float = 1.0
    backoff: Literal["fixed", "linear", "exponential"] = "fixed"
    fallback: str = "manual_intervention"

    _dur = field_validator("max_timeout", "delay", mode="before")(_optional_duration)
    _strat = field_validator("strategy", "fallback", mode="before")(_strategy)


class InterventionSettings(_Model):
    approvals: int = Field(default=1, ge=1)
    timeout: float = 86400.0
    on_timeout: Literal["abort", "compensate", "wait"] = Field(default="abort", alias="on-timeout")

    _dur = field_validator("timeout", mode="before")(_duration_field)


class SettingsSpec(_Model):
    timeout: float = 3600.0
    step_timeout: float = Field(default=300.0, alias="step-timeout")
    on_failure: OnFailureSpec | None = Field(default=None, alias="on-failure")
    on_error: tuple[StepSpec, ...] = Field(default=(), alias="on-error")
    checkpoints: CheckpointSettings = Field(default_factory=CheckpointSettings)
    #: Raw mapping as written: error class -> dict (see ``recovery_for``), and
    #: ``retry-budget`` -> int. Validated by ``validate_data``.
    recovery: dict[str, Any] = Field(default_factory=dict)
    interventions: InterventionSettings = Field(default_factory=InterventionSettings)
    compensation: Literal["entire-workflow", "branch"] = "entire-workflow"
    alerts: tuple[str, ...] = ()

    _dur = field_validator("timeout", "step_timeout", mode="before")(_duration_field)

    @field_validator("on_error", "alerts", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return () if v is None else v

    @field_validator("recovery", mode="before")
    @classmethod
    def _recovery(cls, v: Any) -> Any:
        if v is None:
            return {}
        if isinstance(v, dict):
            problems = list(_recovery_problems(v))
            if problems:
                raise _NestedErrors(problems)
        return v

    def recovery_for(self, error_class: str) -> RecoveryClassSpec | None:
        """The typed recovery policy of one error class, or None when not configured."""
        raw = self.recovery.get(error_class)
        if error_class == RETRY_BUDGET_KEY or not isinstance(raw, dict):
            return None
        return RecoveryClassSpec.model_validate(raw)

    @property
    def retry_budget(self) -> int | None:
        """``settings.recovery.retry-budget`` (all retries of one run together), or None."""
        value = self.recovery.get(RETRY_BUDGET_KEY)
        return value if isinstance(value, int) and not isinstance(value, bool) else None


def _recovery_problems(recovery: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for key, value in recovery.items():
        if key == RETRY_BUDGET_KEY:
            if isinstance(value, bool) or not isinstance(value, int):
                yield key, "must be an integer"
            elif value < 0:
                yield key, "must be >= 0"
        elif key in ERROR_CLASSES:
            if not isinstance(value, dict):
                yield key, "must be a mapping with a strategy"
                continue
            try:
                RecoveryClassSpec.model_validate(value, by_alias=True, by_name=False)
            except ValidationError as exc:
                for err in _convert_errors(exc, prefix=str(key)):
                    yield err["path"], err["message"]
        else:
            yield (
                str(key),
                f"unknown error class; use one of {', '.join(ERROR_CLASSES)} or {RETRY_BUDGET_KEY}",
            )


class WorkflowSpec(_Model):
    name: str
    description: str | None = None
    inputs: dict[str, Any] | None = None
    settings: SettingsSpec = Field(default_factory=SettingsSpec)
    steps: tuple[StepSpec, ...] = Field(min_length=1)

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: Any) -> Any:
        if isinstance(v, str) and not NAME_RE.match(v):
            raise ValueError("must be 1-100 characters of a-z, 0-9, _ and -")
        return v

    @field_validator("settings", mode="before")
    @classmethod
    def _settings(cls, v: Any) -> Any:
        return {} if v is None else v

    def all_steps(self) -> Iterator[tuple[StepSpec, str]]:
        """Every step in the workflow with its kind, depth first.

        Kinds: ``action`` (top-level, branch and body steps), ``fallback``,
        ``compensation`` and ``handler`` (``settings.on-error``). The fallback
        steps of ``settings.on-failure`` come last, as ``fallback``.
        """

        def walk(step: StepSpec, kind: str) -> Iterator[tuple[StepSpec, str]]:
            yield step, kind
            for s in step.steps:
                yield from walk(s, "action")
            for s in step.else_:
                yield from walk(s, "action")
            if step.on_failure:
                for s in step.on_failure.fallback:
                    yield from walk(s, "fallback")
            if step.compensate:
                yield from walk(step.compensate, "compensation")

        for s in self.steps:
            yield from walk(s, "action")
        for s in self.settings.on_error:
            yield from walk(s, "handler")
        if self.settings.on_failure:
            for s in self.settings.on_failure.fallback:
                yield from walk(s, "fallback")

    def step_index(self) -> dict[str, tuple[StepSpec, str]]:
        """name -> (step, kind) for every step (names are unique)."""
        return {step.name: (step, kind) for step, kind in self.all_steps()}

    def on_failure_for(self, step: StepSpec, kind: str = "action") -> OnFailureSpec | None:
        """The on-failure that applies: the step's own, else the workflow default.

        Flow steps never take the workflow default; fallback, compensation and
        handler steps never take any.
        """
        if kind != "action":
            return None
        if step.on_failure is not None:
            return step.on_failure
        if step.is_flow:
            return None
        return self.settings.on_failure


OnFailureSpec.model_rebuild()
StepSpec.model_rebuild()
SettingsSpec.model_rebuild()
WorkflowSpec.model_rebuild()


def dependencies(steps: Sequence[StepSpec]) -> dict[str, tuple[str, ...]]:
    """name -> names it waits for, among sibling ``steps``.

    A step without ``needs`` waits for the step listed before it (the first for
    nothing); ``needs: []`` waits for nothing.
    """
    deps: dict[str, tuple[str, ...]] = {}
    previous: str | None = None
    for step in steps:
        if step.needs is not None:
            deps[step.name] = tuple(step.needs)
        else:
            deps[step.name] = () if previous is None else (previous,)
        previous = step.name
    return deps


@dataclass(frozen=True)
class ParsedWorkflow:
    spec: WorkflowSpec
    source: str
    checksum: str
    data: dict[str, Any]


# --------------------------------------------------------------------------- errors


def _path_join(base: str, sub: str) -> str:
    if not sub:
        return base
    if not base:
        return sub
    return base + sub if sub.startswith("[") else f"{base}.{sub}"


def _loc_to_path(loc: Sequence[int | str]) -> str:
    path = ""
    for item in loc:
        path = _path_join(path, f"[{item}]" if isinstance(item, int) else str(item))
    return path


def _message(err: Any) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    simple = {
        "extra_forbidden": "unknown key",
        "missing": "required",
        "dict_type": "must be a mapping",
        "model_type": "must be a mapping",
        "model_attributes_type": "must be a mapping",
        "list_type": "must be a list",
        "tuple_type": "must be a list",
        "string_type": "must be a string",
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "int_from_float": "must be an integer",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
    }
    if kind in simple:
        return simple[kind]
    bounds = {
        "greater_than_equal": (">=", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        return f"must be {op} {ctx.get(key)}"
    if kind == "too_short":
        n = ctx.get("min_length")
        return f"must have at least {n} item{'' if n == 1 else 's'}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", err["msg"]))
    msg = str(err["msg"])
    if msg.startswith("Input should be"):
        return "must be" + msg[len("Input should be") :]
    return msg


def _convert_errors(exc: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    """pydantic errors -> [{path, message}] with the YAML keys (aliases)."""
    out: list[dict[str, str]] = []
    for err in exc.errors(include_url=False):
        # pydantic counts only the items that validated: the items' own errors say it all
        if (
            err["type"] == "too_short"
            and isinstance(err.get("input"), list | tuple)
            and len(err["input"]) >= int((err.get("ctx") or {}).get("min_length", 0))
        ):
            continue
        base = _path_join(prefix, _loc_to_path(err["loc"]))
        error = (err.get("ctx") or {}).get("error")
        if isinstance(error, _NestedErrors):
            for sub, message in error.items:
                out.append({"path": _path_join(base, sub) or "(root)", "message": message})
        else:
            out.append({"path": base or "(root)", "message": _message(err)})
    return out


def _sort_key(path: str) -> list[tuple[int, int | str]]:
    return [
        (0, int(tok)) if tok.isdigit() else (1, tok) for tok in re.split(r"[.\[\]]+", path) if tok
    ]


# --------------------------------------------------------------------------- loading


def _normalise(value: Any, path: str, errors: list[dict[str, str]]) -> Any:
    """YAML values -> JSON-compatible data (string keys, ISO dates, lists)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(key, str):
                name = key
            elif isinstance(key, bool) or key is None:
                shown = "null" if key is None else str(key).lower()
                errors.append(
                    {
                        "path": path or "(root)",
                        "message": f"key {shown} is not a string (YAML reads on/off/yes/no/null "
                        "unquoted as booleans or null: quote the key)",
                    }
                )
                continue
            else:
                name = str(key)
            out[name] = _normalise(item, _path_join(path, name), errors)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [_normalise(v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


def load_text(text: str, content_type: str | None = None) -> dict[str, Any]:
    """YAML or JSON text -> a plain dict, or SpecError with a line number."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise SpecError([{"path": "(text)", "message": "must be UTF-8 text"}]) from None
    if not isinstance(text, str):
        raise SpecError([{"path": "(text)", "message": "must be YAML or JSON text"}])
    if content_type and "json" in content_type.lower():
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(
                [
                    {
                        "path": f"line {exc.lineno}",
                        "message": f"invalid JSON: {exc.msg} (column {exc.colno})",
                    }
                ]
            ) from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or "invalid YAML"
            if exc.context:
                problem = f"{problem} ({exc.context})"
            if mark is not None:
                raise SpecError(
                    [
                        {
                            "path": f"line {mark.line + 1}",
                            "message": f"invalid YAML: {problem} (column {mark.column + 1})",
                        }
                    ]
                ) from None
            raise SpecError([{"path": "(text)", "message": f"invalid YAML: {problem}"}]) from None
        except yaml.YAMLError as exc:
            raise SpecError([{"path": "(text)", "message": f"invalid YAML: {exc}"}]) from None
    if data is None:
        raise SpecError([{"path": "(text)", "message": "the workflow is empty"}])
    if not isinstance(data, dict):
        raise SpecError(
            [
                {
                    "path": "(text)",
                    "message": f"the top level must be a mapping (name: ..., steps: ...), "
                    f"not {_type_name(data)}",
                }
            ]
        )
    errors: list[dict[str, str]] = []
    normalised = _normalise(data, "", errors)
    if errors:
        raise SpecError(errors)
    assert isinstance(normalised, dict)
    return normalised


def _type_name(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


# --------------------------------------------------------------------------- rules


class _Checker:
    """The cross-step rules, on the raw data (so they run even when fields are bad)."""

    def __init__(self) -> None:
        self.errors: list[dict[str, str]] = []
        self.names: dict[str, str] = {}  # step name -> path of its first definition
        self.lists: list[tuple[list[Any], str]] = []  # sibling lists whose needs to check

    def err(self, path: str, message: str) -> None:
        self.errors.append({"path": path, "message": message})

    def workflow(self, data: dict[str, Any]) -> None:
        self.step_list(data.get("steps"), "steps", "action")
        settings = data.get("settings")
        if isinstance(settings, dict):
            handlers = settings.get("on-error")
            self.step_list(handlers, "settings.on-error", "handler")
            on_failure = settings.get("on-failure")
            if isinstance(on_failure, dict):
                self.step_list(
                    on_failure.get("fallback"), "settings.on-failure.fallback", "fallback"
                )
        inputs = data.get("inputs")
        if isinstance(inputs, dict):
            self.json_schema(inputs)
        for items, path in self.lists:
            self.needs(items, path)

    def json_schema(self, schema: dict[str, Any]) -> None:
        try:
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
        except jsonschema.exceptions.SchemaError as exc:
            where = "inputs"
            for part in exc.absolute_path:
                where = _path_join(where, f"[{part}]" if isinstance(part, int) else str(part))
            self.err(where, f"not a valid JSON Schema: {exc.message}")

    def step_list(self, items: Any, path: str, kind: str) -> None:
        if not isinstance(items, list):
            return
        for index, step in enumerate(items):
            self.step(step, f"{path}[{index}]", kind)
        if kind == "action":
            self.lists.append((items, path))

    def step(self, step: Any, path: str, kind: str) -> None:
        if not isinstance(step, dict):
            return
        name = step.get("name")
        if isinstance(name, str) and STEP_NAME_RE.match(name):
            if name in self.names:
                self.err(
                    f"{path}.name",
                    f"duplicate step name {name!r} (already used at {self.names[name]}); "
                    "names are unique across the whole workflow",
                )
            else:
                self.names[name] = path
        type_ = step.get("type")
        is_flow = type_ in FLOW_TYPES
        kind_label = {"fallback": "fallback", "compensation": "compensate", "handler": "on-error"}
        if kind != "action":
            label = kind_label[kind]
            if "on-failure" in step:
                self.err(
                    f"{path}.on-failure",
                    f"not allowed on {label} steps (no on-failure inside fallback, "
                    "compensate and on-error blocks)",
                )
            if is_flow:
                self.err(f"{path}.type", f"{label} steps cannot be flow steps (if, foreach)")
            if "needs" in step:
                self.err(f"{path}.needs", f"not allowed on {label} steps (they run in order)")
            if kind in ("compensation", "handler") and "compensate" in step:
                self.err(f"{path}.compensate", f"not allowed on {label} steps")
        if is_flow and kind == "action":
            for key in ("on-failure", "compensate"):
                if key in step:
                    self.err(
                        f"{path}.{key}",
                        f"not allowed on {type_} steps: flow steps take no {key} "
                        "(put it on the steps inside)",
                    )
        self.flow_keys(step, path, type_)
        if isinstance(type_, str):
            self.with_(step, path, type_)
        # nested steps
        self.step_list(step.get("steps"), f"{path}.steps", "action")
        self.step_list(step.get("else"), f"{path}.else", "action")
        on_failure = step.get("on-failure")
        if isinstance(on_failure, dict):
            self.step_list(on_failure.get("fallback"), f"{path}.on-failure.fallback", "fallback")
        compensate = step.get("compensate")
        if isinstance(compensate, dict):
            self.step(compensate, f"{path}.compensate", "compensation")

    def flow_keys(self, step: dict[str, Any], path: str, type_: Any) -> None:
        has_steps = bool(step.get("steps"))
        if type_ == "if":
            if step.get("condition") is None:
                self.err(f"{path}.condition", "required for if steps")
            if not has_steps:
                self.err(f"{path}.steps", "an if step needs at least one step (the then-branch)")
            for key in ("foreach", "max-parallel"):
                if key in step:
                    self.err(f"{path}.{key}", "only allowed on foreach steps")
        elif type_ == "foreach":
            if step.get("foreach") is None:
                self.err(f"{path}.foreach", "required for foreach steps (a list expression)")
            if not has_steps:
                self.err(f"{path}.steps", "a foreach step needs at least one step (the body)")
            if "condition" in step:
                self.err(f"{path}.condition", "only allowed on if steps (use `if:` to skip a step)")
            if "else" in step:
                self.err(f"{path}.else", "only allowed on if steps")
        elif isinstance(type_, str):
            messages = {
                "steps": "only allowed on if and foreach steps",
                "else": "only allowed on if steps",
                "condition": "only allowed on if steps (use `if:` to skip a step)",
                "foreach": "only allowed on foreach steps",
                "max-parallel": "only allowed on foreach steps",
            }
            for key, message in messages.items():
                if key in step:
                    self.err(f"{path}.{key}", message)

    def with_(self, step: dict[str, Any], path: str, type_: str) -> None:
        raw = step.get("with")
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            return  # reported by the model
        where = f"{path}.with"
        templated = expressions.has_template
        if type_ == "sleep":
            if "duration" not in raw:
                self.err(f"{where}.duration", "required for sleep steps")
            elif not templated(raw["duration"]):
                try:
                    parse_written_duration(raw["duration"])
                except ValueError as exc:
                    self.err(f"{where}.duration", str(exc))
        elif type_ == "http":
            self.http(raw, where)
        elif type_ == "python":
            function = raw.get("function")
            if function is None:
                self.err(f"{where}.function", "required for python steps")
            elif not isinstance(function, str) or not PYTHON_FUNCTION_RE.match(function):
                self.err(f"{where}.function", "must be 'module.path:callable'")
        elif type_ == "approval":
            prompt = raw.get("prompt")
            if prompt is not None and not isinstance(prompt, str):
                self.err(f"{where}.prompt", "must be a string")
        elif type_ in _REGISTERED_TYPES:
            check = _REGISTERED_TYPES[type_]
            if check is not None:
                for sub, message in check(raw):
                    self.err(_path_join(where, sub), message)

    def http(self, raw: dict[str, Any], where: str) -> None:
        url = raw.get("url")
        if url is None:
            self.err(f"{where}.url", "required for http steps")
        elif not isinstance(url, str):
            self.err(f"{where}.url", "must be a string")
        elif not url.lstrip().startswith("{{") and not re.match(r"^https?://", url, re.I):
            self.err(f"{where}.url", "must be an http:// or https:// URL")
        method = raw.get("method")
        if (
            method is not None
            and not expressions.has_template(method)
            and (not isinstance(method, str) or method.upper() not in HTTP_METHODS)
        ):
            self.err(
                f"{where}.method",
                f"unknown HTTP method {method!r}; use one of {', '.join(HTTP_METHODS)}",
            )
        headers = raw.get("headers")
        if headers is not None and not isinstance(headers, dict):
            self.err(f"{where}.headers", "must be a mapping")
        if "json" in raw and "body" in raw:
            self.err(f"{where}.body", "use either json or body, not both")
        timeout = raw.get("timeout")
        if timeout is not None and not expressions.has_template(timeout):
            try:
                parse_duration(timeout)
            except ValueError as exc:
                self.err(f"{where}.timeout", str(exc))
        if "expect" in raw and not expressions.has_template(raw["expect"]):
            expect = raw["expect"]
            items = expect if isinstance(expect, list) else [expect]
            for index, item in enumerate(items):
                sub = f"{where}.expect" + (f"[{index}]" if isinstance(expect, list) else "")
                if not _status_ok(item):
                    self.err(sub, "must be a status (200) or a range ('200-299')")

    def needs(self, items: list[Any], path: str) -> None:
        names: dict[str, int] = {}
        for index, step in enumerate(items):
            if isinstance(step, dict) and isinstance(step.get("name"), str):
                names.setdefault(step["name"], index)
        siblings = ", ".join(names) or "none"
        deps: dict[int, list[int]] = {}
        explicit: set[int] = set()
        for index, step in enumerate(items):
            if not isinstance(step, dict):
                continue
            needs = step.get("needs")
            if needs is None:
                deps[index] = [index - 1] if index > 0 else []
                continue
            deps[index] = []
            if not isinstance(needs, list):
                continue  # reported by the model
            explicit.add(index)
            seen: set[str] = set()
            for j, need in enumerate(needs):
                where = f"{path}[{index}].needs[{j}]"
                if not isinstance(need, str):
                    continue
                if need == step.get("name"):
                    self.err(where, "a step cannot need itself")
                elif need in seen:
                    self.err(where, f"{need!r} is listed twice")
                elif need in names:
                    deps[index].append(names[need])
                elif need in self.names:
                    self.err(
                        where,
                        f"{need!r} is not a sibling step: needs may only name steps in the "
                        f"same list ({siblings})",
                    )
                else:
                    self.err(where, f"unknown step {need!r}; steps in this list: {siblings}")
                seen.add(need)
        self.cycles(items, path, deps, explicit)

    def cycles(
        self, items: list[Any], path: str, deps: dict[int, list[int]], explicit: set[int]
    ) -> None:
        state: dict[int, int] = {}  # 1 = on the stack, 2 = done
        stack: list[int] = []
        reported: set[frozenset[int]] = set()

        def label(i: int) -> str:
            step = items[i]
            return str(step.get("name", f"#{i}")) if isinstance(step, dict) else f"#{i}"

        def visit(node: int) -> None:
            state[node] = 1
            stack.append(node)
            for dep in deps.get(node, []):
                if dep not in deps:
                    continue
                if state.get(dep) == 1:
                    cycle = stack[stack.index(dep) :]
                    key = frozenset(cycle)
                    if key not in reported:
                        reported.add(key)
                        at = min((i for i in cycle if i in explicit), default=min(cycle))
                        order = cycle[cycle.index(at) :] + cycle[: cycle.index(at)]
                        chain = " -> ".join(label(i) for i in [*order, at])
                        self.err(
                            f"{path}[{at}].needs",
                            f"dependency cycle: {chain} (-> means 'waits for'; a step without "
                            "needs waits for the step before it)",
                        )
                elif dep not in state:
                    visit(dep)
            stack.pop()
            state[node] = 2

        for node in sorted(deps):
            if node not in state:
                visit(node)


def _status_ok(item: Any) -> bool:
    if isinstance(item, bool):
        return False
    if isinstance(item, int):
        return 100 <= item <= 599
    if isinstance(item, str):
        if item.strip().isdigit():
            return 100 <= int(item) <= 599
        match = STATUS_RANGE_RE.match(item)
        if match is None:
            return False
        return 100 <= int(match.group(1)) <= int(match.group(2)) <= 599
    return False


def validate_data(data: Any) -> WorkflowSpec:
    """A plain dict -> ``WorkflowSpec``, or SpecError listing every problem."""
    if not isinstance(data, dict):
        raise SpecError(
            [
                {
                    "path": "(text)",
                    "message": "the top level must be a mapping (name: ..., steps: ...)",
                }
            ]
        )
    errors: list[dict[str, str]] = []
    spec: WorkflowSpec | None = None
    try:
        spec = WorkflowSpec.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        errors.extend(_convert_errors(exc))
    checker = _Checker()
    checker.workflow(data)
    errors.extend(checker.errors)
    if errors:
        unique: dict[tuple[str, str], dict[str, str]] = {}
        for err in errors:
            unique.setdefault((err["path"], err["message"]), err)
        ordered = sorted(unique.values(), key=lambda e: _sort_key(e["path"]))
        raise SpecError(ordered)
    assert spec is not None
    return spec


def parse_workflow(text: str, content_type: str | None = None) -> ParsedWorkflow:
    """The one entry point: text -> validated spec, or SpecError listing every problem."""
    data = load_text(text, content_type)
    spec = validate_data(data)
    return ParsedWorkflow(spec=spec, source=text, checksum=checksum_of(data), data=data)


def checksum_of(data: dict[str, Any]) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


__all__ = [
    "ACTION_TYPES",
    "ERROR_CLASSES",
    "FLOW_TYPES",
    "RECOVERY_STRATEGIES",
    "CheckpointSettings",
    "CircuitBreakerSpec",
    "InterventionSettings",
    "OnFailureSpec",
    "ParsedWorkflow",
    "RecoveryClassSpec",
    "RetrySpec",
    "SettingsSpec",
    "SpecError",
    "StepSpec",
    "ValidationError",
    "WorkflowSpec",
    "checksum_of",
    "dependencies",
    "known_step_types",
    "load_text",
    "parse_duration",
    "parse_workflow",
    "register_step_type",
    "validate_data",
    "yaml",
]
