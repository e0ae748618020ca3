"""Python steps used by the tests (allowed through FLOWMEND_PYTHON_MODULES=examples,tests)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def fail_until(args: dict[str, Any], context: Any) -> Any:
    """Fails while the attempt number is below ``succeed_on``."""
    if context.attempt < int(args.get("succeed_on", 2)):
        raise ConnectionError(f"attempt {context.attempt} refused")
    return {"attempt": context.attempt}


def always_fail(args: dict[str, Any], context: Any) -> Any:
    raise ValueError(args.get("message", "always fails"))


def slow(args: dict[str, Any], context: Any) -> Any:
    """Sleeps; records each execution in a file so tests can count them."""
    marker = args.get("marker")
    if marker:
        with Path(marker).open("a") as f:
            f.write(f"{context.step}:{context.attempt}:start\n")
    time.sleep(float(args.get("seconds", 1)))
    return {"slept": args.get("seconds", 1)}


def not_json(args: dict[str, Any], context: Any) -> Any:
    return {"value": object()}


def echo(args: dict[str, Any], context: Any) -> Any:
    return {"args": args, "inputs": context.inputs}
