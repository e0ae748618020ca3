"""CEL expressions and ``{{ }}`` interpolation.

Compiled (and so syntax-checked) when a workflow is saved; evaluated with the
names ``inputs``, ``steps``, ``error``, ``foreach`` and ``run``. Nothing here
is a template engine: ``{{ expr }}`` is found with a regular expression and
``expr`` is evaluated as CEL.
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import cel

#: ``{{ expr }}`` anywhere in a string (non-greedy, may span lines).
TEMPLATE_RE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
#: A string that is exactly one ``{{ expr }}`` (whitespace around allowed).
WHOLE_TEMPLATE_RE = re.compile(r"^\s*\{\{((?:(?!\}\}).)*?)\}\}\s*$", re.DOTALL)
#: ``${{ expr }}`` wrapper accepted around bare expressions.
WRAPPER_RE = re.compile(r"^\$\{\{(.*)\}\}$", re.DOTALL)

#: The top-level names an expression may use.
NAMES = ("inputs", "steps", "error", "foreach", "run")


class ExpressionError(Exception):
    """An expression that does not parse or cannot be evaluated."""

    def __init__(self, expression: str, reason: str) -> None:
        self.expression = expression
        self.reason = reason
        super().__init__(f"{expression!r}: {reason}")


def strip_wrapper(source: str) -> str:
    """'${{ x }}' -> 'x'; anything else unchanged (stripped)."""
    text = source.strip()
    match = WRAPPER_RE.match(text)
    if match:
        return match.group(1).strip()
    return text


def _parse_message(exc: BaseException) -> str:
    """A short readable message out of a CEL parse error."""
    text = str(exc)
    lines = text.splitlines()
    first = lines[0] if lines else "does not parse"
    # "Failed to parse expression 'x +': ERROR: <input>:1:4: Syntax error: ..."
    match = re.search(r"<input>:(\d+):(\d+):\s*(.*)$", first)
    if match:
        line, col, reason = match.groups()
        where = f"column {col}" if line == "1" else f"line {line}, column {col}"
        reason = re.sub(r"\s*expecting \{.*\}$", "", reason)
        return f"{reason} at {where}"
    return first


@functools.lru_cache(maxsize=4096)
def _compile(source: str) -> cel.Program:
    return cel.compile(source)


def compile_expression(source: str) -> cel.Program:
    """Compile (cached) a bare expression; ValueError with a short message if it does not parse."""
    if not source.strip():
        raise ValueError("empty expression")
    try:
        return _compile(source)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ValueError(f"expression {source!r} does not parse: {_parse_message(exc)}") from None


def check_expression(source: Any) -> str:
    """Validate that ``source`` is a string holding a CEL expression that parses.

    Returns the bare expression (``${{ }}`` removed). Raises ValueError with a
    readable message otherwise (pydantic turns it into a path-precise error).
    """
    if isinstance(source, bool) or not isinstance(source, str):
        raise ValueError(f"must be an expression (a string), not {type(source).__name__}")
    bare = strip_wrapper(source)
    compile_expression(bare)
    return bare


def template_expressions(text: str) -> list[str]:
    """The bare expressions of every ``{{ expr }}`` in ``text``."""
    return [m.group(1).strip() for m in TEMPLATE_RE.finditer(text)]


def iter_template_errors(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, message) for every ``{{ expr }}`` nested in ``value`` that does not parse.

    Paths are relative to ``value``: ``url``, ``args.order``, ``items[2]``.
    """
    if isinstance(value, str):
        for expr in template_expressions(value):
            try:
                compile_expression(expr)
            except ValueError as exc:
                yield path, str(exc)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            yield from iter_template_errors(item, sub)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from iter_template_errors(item, f"{path}[{index}]")


def check_templates(value: Any) -> None:
    """Validate every ``{{ expr }}`` inside strings nested anywhere in ``value``."""
    problems = list(iter_template_errors(value))
    if problems:
        raise ValueError("; ".join(f"{path}: {msg}" if path else msg for path, msg in problems))


def has_template(value: Any) -> bool:
    """True when ``value`` is a string containing at least one ``{{ }}``."""
    return isinstance(value, str) and TEMPLATE_RE.search(value) is not None


def to_plain(value: Any) -> Any:
    """CEL results -> plain JSON-ish Python (dict, list, str, int, float, bool, None)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {
            (k if isinstance(k, str) else str(to_plain(k))): to_plain(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [to_plain(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    if isinstance(value, _dt.datetime | _dt.date):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, cel.OptionalValue):
        return to_plain(value.value()) if value.has_value() else None
    return str(value)


def make_context(
    *,
    inputs: Any = None,
    steps: Mapping[str, Any] | None = None,
    run: Mapping[str, Any] | None = None,
    error: Any = None,
    foreach: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The evaluation context with the documented names.

    ``error`` and ``foreach`` are only present when given, so using them where
    they make no sense is an ``ExpressionError`` (undefined name).
    """
    ctx: dict[str, Any] = {
        "inputs": {} if inputs is None else inputs,
        "steps": dict(steps or {}),
        "run": dict(run or {}),
    }
    if error is not None:
        ctx["error"] = error
    if foreach is not None:
        ctx["foreach"] = dict(foreach)
    return ctx


def _runtime_reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        key = exc.args[0] if exc.args else "?"
        return f"no such key or field: {key!r}"
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if first.startswith("No such overload"):
        return "no such overload (CEL does not mix types: convert with int(), double() or string())"
    # "Undefined variable or function: 'x'. Check that ..." -> the first sentence
    return first.split(". ", 1)[0]


def evaluate(source: str, context: dict[str, Any]) -> Any:
    """Evaluate a bare expression; results are plain Python (dict, list, str, int, float, bool, None)."""
    bare = strip_wrapper(source)
    try:
        program = compile_expression(bare)
    except ValueError as exc:
        raise ExpressionError(bare, str(exc)) from None
    try:
        result = program.execute(context)
    except Exception as exc:  # cel raises KeyError, RuntimeError, TypeError, ...
        raise ExpressionError(bare, _runtime_reason(exc)) from exc
    return to_plain(result)


def evaluate_bool(source: str, context: dict[str, Any]) -> bool:
    """Evaluate a condition; anything but a bool is an ExpressionError."""
    result = evaluate(source, context)
    if not isinstance(result, bool):
        raise ExpressionError(
            strip_wrapper(source), f"must yield true or false, got {type(result).__name__}"
        )
    return result


def to_text(value: Any) -> str:
    """How a value is written into a string: strings as they are, everything else as JSON (sorted keys)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))


def render(value: Any, context: dict[str, Any]) -> Any:
    """Render ``{{ expr }}`` in every string nested in ``value``.

    A string that is exactly one ``{{ expr }}`` keeps the expression's type.
    """
    if isinstance(value, str):
        if "{{" not in value:
            return value
        whole = WHOLE_TEMPLATE_RE.match(value)
        if whole:
            return evaluate(whole.group(1).strip(), context)
        return TEMPLATE_RE.sub(
            lambda m: to_text(evaluate(m.group(1).strip(), context)),
            value,
        )
    if isinstance(value, Mapping):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [render(v, context) for v in value]
    return value
