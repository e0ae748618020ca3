"""CEL expressions and {{ }} rendering (pure: no Django, no database)."""

from __future__ import annotations

import pytest

from workflows.expressions import (
    ExpressionError,
    check_expression,
    check_templates,
    evaluate,
    evaluate_bool,
    iter_template_errors,
    make_context,
    render,
    strip_wrapper,
)

CTX = make_context(
    inputs={"order_id": "o-1", "amount": 1500, "price": 9.5, "items": [{"sku": "a"}, {"sku": "b"}]},
    steps={
        "charge": {"status": "succeeded", "output": {"id": 7, "ok": True}, "error": None},
        "a-b": {"status": "failed", "output": None, "error": {"type": "X", "message": "m"}},
    },
    run={"id": "r-1"},
)


@pytest.mark.parametrize(
    ("source", "bare"),
    [
        ("${{ inputs.x }}", "inputs.x"),
        ("  ${{inputs.x}}  ", "inputs.x"),
        ("inputs.x", "inputs.x"),
        ("  a == b ", "a == b"),
    ],
)
def test_strip_wrapper(source: str, bare: str) -> None:
    assert strip_wrapper(source) == bare


def test_check_expression_returns_bare() -> None:
    assert check_expression("${{ steps.charge.status == 'succeeded' }}") == (
        "steps.charge.status == 'succeeded'"
    )
    assert check_expression("size(inputs.items) > 0 && has(inputs.x)") == (
        "size(inputs.items) > 0 && has(inputs.x)"
    )


@pytest.mark.parametrize("source", ["x +", "a ==== b", "(", "", "   ", "${{ }}"])
def test_check_expression_rejects_syntax(source: str) -> None:
    with pytest.raises(ValueError) as info:
        check_expression(source)
    message = str(info.value)
    assert "\n" not in message
    assert len(message) < 200


def test_check_expression_message_has_column() -> None:
    with pytest.raises(ValueError, match=r"'x \+' does not parse: .*column 4"):
        check_expression("x +")


@pytest.mark.parametrize("source", [5, None, True, ["a"], {"a": 1}])
def test_check_expression_rejects_non_strings(source: object) -> None:
    with pytest.raises(ValueError, match="must be an expression"):
        check_expression(source)


def test_int_double_comparison() -> None:
    assert evaluate("inputs.amount > 1000.5", CTX) is True
    assert evaluate("inputs.amount > 1000", CTX) is True
    assert evaluate("inputs.amount == 1500.0", CTX) is True
    assert evaluate("inputs.price < 10", CTX) is True
    assert evaluate("${{ inputs.amount >= 2000.5 }}", CTX) is False


def test_names_and_dash_access() -> None:
    assert evaluate("steps['a-b'].status", CTX) == "failed"
    assert evaluate('steps["a-b"].error.type', CTX) == "X"
    assert evaluate("steps.charge.output.id", CTX) == 7
    assert evaluate("run.id", CTX) == "r-1"
    assert evaluate("inputs.items[1].sku", CTX) == "b"
    assert evaluate("'a' in ['a', 'b']", CTX) is True
    assert evaluate("size(inputs.items)", CTX) == 2
    assert evaluate("has(inputs.nothing)", CTX) is False
    assert evaluate("!(steps.charge.status == 'failed') || false", CTX) is True


def test_error_and_foreach_only_when_given() -> None:
    ctx = make_context(
        inputs={},
        error={"type": "ValidationError", "message": "bad", "status": None},
        foreach={"item": {"sku": "z"}, "index": 3},
    )
    assert evaluate("error.type != 'ValidationError'", ctx) is False
    assert evaluate("foreach.item.sku + string(foreach.index)", ctx) == "z3"
    with pytest.raises(ExpressionError, match="error"):
        evaluate("error.type == 'x'", make_context())


def test_results_are_plain_python() -> None:
    assert evaluate("{'a': [1, 2.5, null, true]}", CTX) == {"a": [1, 2.5, None, True]}
    assert type(evaluate("3u", CTX)) is int
    assert evaluate("b'hi'", CTX) == "hi"
    assert evaluate("duration('90s')", CTX) == 90.0
    assert evaluate("timestamp('2024-01-02T03:04:05Z')", CTX) == "2024-01-02T03:04:05+00:00"
    assert evaluate("optional.none()", CTX) is None
    assert evaluate("optional.of(4)", CTX) == 4
    assert evaluate("inputs.items.map(i, i.sku)", CTX) == ["a", "b"]


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("inputs.missing", "no such key or field: 'missing'"),
        ("steps.nope.status", "no such key or field: 'nope'"),
        ("nobody", "Undefined variable or function: 'nobody'"),
        ("1 / 0", "division by zero"),
        ("inputs.items[9]", "index out of bounds"),
        ("'a' + 1", "string + int"),
        ("inputs.amount + 1.5", "no such overload"),
        ("x +", "does not parse"),
    ],
)
def test_evaluate_errors(source: str, reason: str) -> None:
    with pytest.raises(ExpressionError) as info:
        evaluate(source, CTX)
    assert info.value.expression == source
    assert reason in info.value.reason
    assert source in str(info.value)


def test_evaluate_unconvertible_context_is_expression_error() -> None:
    with pytest.raises(ExpressionError):
        evaluate("x", {"x": object()})


def test_evaluate_bool() -> None:
    assert evaluate_bool("inputs.amount > 1", CTX) is True
    with pytest.raises(ExpressionError, match="true or false"):
        evaluate_bool("inputs.amount", CTX)


def test_render_whole_template_keeps_type() -> None:
    assert render("{{ inputs.amount }}", CTX) == 1500
    assert render("  {{inputs.price}} ", CTX) == 9.5
    assert render("{{ steps.charge.output }}", CTX) == {"id": 7, "ok": True}
    assert render("{{ steps.charge.output.ok }}", CTX) is True
    assert render("{{ steps['a-b'].output }}", CTX) is None
    assert render("{{ inputs.items }}", CTX) == [{"sku": "a"}, {"sku": "b"}]


def test_render_embedded_templates_become_text() -> None:
    assert render("http://x/{{ inputs.order_id }}/{{ inputs.amount }}", CTX) == "http://x/o-1/1500"
    assert render("{{ inputs.amount }}{{ inputs.amount }}", CTX) == "15001500"
    assert render("ok={{ steps.charge.output.ok }} none={{ steps['a-b'].output }}", CTX) == (
        "ok=true none=null"
    )
    assert render("out={{ steps.charge.output }}", CTX) == 'out={"id": 7, "ok": true}'
    assert render("p={{ inputs.price }}", CTX) == "p=9.5"


def test_render_nested_and_untouched() -> None:
    value = {
        "url": "http://x/{{ inputs.order_id }}",
        "args": {"n": "{{ inputs.amount }}", "list": ["{{ run.id }}", 3, None, True]},
        "plain": "no templates",
        "number": 4,
    }
    assert render(value, CTX) == {
        "url": "http://x/o-1",
        "args": {"n": 1500, "list": ["r-1", 3, None, True]},
        "plain": "no templates",
        "number": 4,
    }
    assert render(("{{ 1 }}",), CTX) == [1]
    assert render(None, CTX) is None


def test_render_runtime_error() -> None:
    with pytest.raises(ExpressionError, match="inputs.nope"):
        render({"a": ["x {{ inputs.nope }}"]}, CTX)


def test_check_templates() -> None:
    check_templates({"a": ["{{ inputs.x }}", "plain", 3, None], "b": {"c": "x{{ 1 + 2 }}y"}})
    check_templates("no templates at all")
    with pytest.raises(ValueError, match=r"a\[1\]: expression 'x \+' does not parse"):
        check_templates({"a": ["{{ ok }}", "{{ x + }}"]})


def test_iter_template_errors_paths() -> None:
    problems = list(iter_template_errors({"url": "{{ ( }}", "args": {"k": ["ok", "{{ ]] }}"]}}))
    assert [p for p, _ in problems] == ["url", "args.k[1]"]


def test_compile_is_cached() -> None:
    from workflows.expressions import _compile

    _compile.cache_clear()
    evaluate("inputs.amount > 1", CTX)
    evaluate("inputs.amount > 1", CTX)
    assert _compile.cache_info().hits >= 1
