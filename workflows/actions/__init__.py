"""Built-in step types and the registry for user-defined ones.

An action is ``fn(params, context) -> JSON-serialisable output``; it raises to fail.
Register your own with::

    from workflows.actions import register

    @register("send-sms")
    def send_sms(params, context):
        ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workflows import spec as spec_mod


@dataclass(frozen=True)
class StepContext:
    run_id: str
    workflow: str
    step: str
    attempt: int
    idempotency_key: str
    inputs: dict[str, Any]


Action = Callable[[dict[str, Any], StepContext], Any]
_registry: dict[str, Action] = {}


def register(name: str) -> Callable[[Action], Action]:
    def deco(fn: Action) -> Action:
        _registry[name] = fn
        if name not in spec_mod.ACTION_TYPES:
            spec_mod.register_step_type(name)
        return fn

    return deco


def get(name: str) -> Action:
    try:
        return _registry[name]
    except KeyError:
        raise LookupError(f"no action registered for step type {name!r}") from None


class StepFailure(Exception):
    """Raise from an action to fail with a specific error type and extra fields."""

    def __init__(self, type_: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.type = type_
        self.extra = extra


from workflows.actions import builtin  # noqa: E402,F401  (registers the built-ins)
