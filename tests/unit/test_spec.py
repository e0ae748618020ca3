"""The workflow language (CONTRACT §1): parsing and every validation rule.

Pure tests: no Django, no database.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from workflows import spec as spec_module
from workflows.spec import (
    OnFailureSpec,
    RetrySpec,
    SpecError,
    StepSpec,
    WorkflowSpec,
    checksum_of,
    dependencies,
    known_step_types,
    load_text,
    parse_duration,
    parse_workflow,
    register_step_type,
    unregister_step_type,
    validate_data,
)

# The CONTRACT §1 example with the "Further blocks" merged in. The only addition:
# `call-partner` gets a `with.url` (an http step needs one).
CONTRACT_EXAMPLE = """
name: order-fulfilment            # required; 1-100 chars of [a-z0-9_-]
description: Reserve, charge, ship.
inputs:                           # optional JSON Schema; a run's input is validated against it
  type: object
  required: [order_id]
  properties: {order_id: {type: string}}
settings:
  timeout: 1h                     # whole-run timeout (default 1h)
  step-timeout: 5m                # default timeout of every action step (default 5m)
  on-failure:                     # default for every action step that has no on-failure of its own
    retry: {max-attempts: 2, delay: 1s}
  on-error:                       # handler steps run once when the run is about to fail
    - name: tell-ops
      type: noop
  checkpoints:                   # when checkpoints are taken automatically
    policy: after-each-step      # after-each-step (default) | every-n-steps | interval | critical-only
    every: 5                     # with every-n-steps
    interval: 30s                # with interval
    compress-above: 1024         # bytes (default 1024)
    keep: 50                     # per run (default 50); the newest valid one is never deleted
    max-age: 7d                  # default 7d
  recovery:                      # automatic recovery of undeclared failures, per error class
    timeout: {strategy: increase_timeout_and_retry, multiplier: 2, max-timeout: 30m, max-attempts: 3, fallback: manual_intervention}
    resource_exhaustion: {strategy: queue_for_later, delay: 1m, max-attempts: 3, fallback: manual_intervention}
    unknown: {strategy: retry_step, max-attempts: 3, delay: 1s, backoff: exponential, fallback: manual_intervention}
    retry-budget: 20             # all retries of one run together
  interventions:
    approvals: 1                 # 2 = four eyes: two different operators; the requester never approves
    timeout: 24h
    on-timeout: abort            # abort | compensate | wait (re-alert)
  compensation: entire-workflow  # entire-workflow (default) | branch: only the failed branch's steps
  alerts: [ops-slack, oncall-email]   # names of alert channels configured in admin
steps:
  - name: reserve                 # unique across the whole workflow (nested, fallback, compensate and handler steps included)
    type: http
    with:
      method: POST
      url: "http://inventory.local/reserve/{{ inputs.order_id }}"
    timeout: 30s
    critical: true                # checkpoint of kind critical_point when it completes
    compensate:                   # undo step, run in reverse completion order when the run fails
      name: release
      type: http
      with: {method: POST, url: "http://inventory.local/release/{{ inputs.order_id }}"}
  - name: charge                  # no `needs`: runs after the step listed before it
    type: python
    with: {function: "examples.shop:charge", args: {order: "{{ inputs.order_id }}"}}
    on-failure:
      retry:
        max-attempts: 3           # required, >= 1: up to 3 RETRIES after the first attempt (at most 4 executions)
        delay: 1s                 # fixed: every wait; linear: n-th wait = delay*n; exponential: n-th wait = delay*multiplier^(n-1)
        strategy: exponential     # fixed (default) | linear | exponential
        multiplier: 2             # default 2
        max-delay: 1m             # caps every wait
        jitter: true              # default false; true = each wait randomised within +-25%
        condition: "error.type != 'ValidationError'"   # retry only when true
      fallback:                   # runs only after retries are exhausted; the run still FAILS afterwards...
        - name: charge-backup
          type: noop
      continue: true              # ...unless continue is true: the failure is recorded and the run goes on
      # escalate: true            # instead of failing the run: open an intervention and wait for a human
  - name: notify
    needs: [reserve]              # explicit dependencies: runs as soon as all of them are done
    if: "steps.charge.status == 'succeeded'"   # false -> the step is skipped
    type: noop
  - name: big-order
    type: if
    condition: "inputs.amount > 1000"
    steps:                        # then-branch
      - {name: review, type: approval, with: {prompt: "Approve large order?"}}
    else:
      - {name: auto-ok, type: noop}
  - name: ship-each
    type: foreach
    foreach: "inputs.items"       # expression yielding a list; item is `foreach.item`, index `foreach.index`
    max-parallel: 4
    steps:
      - {name: ship, type: noop, with: {sku: "{{ foreach.item.sku }}"}}
  - name: call-partner
    type: http
    with: {url: "http://partner.local/api"}
    circuit-breaker:             # shared by every run and worker with the same key
      key: partner-api           # default: the step type, and for http the URL's host
      failure-threshold: 50%
      minimum-throughput: 10
      open-for: 30s
      half-open-successes: 3
    on-failure:
      retry:
        max-attempts: 5
        retry-on: [ConnectionError, HTTPStatusError]   # only these error types (beside condition)
        do-not-retry-on: [ValidationError]
"""


def base() -> dict[str, Any]:
    """A minimal valid workflow to mutate."""
    return {
        "name": "wf",
        "steps": [
            {"name": "a", "type": "noop"},
            {"name": "b", "type": "noop"},
        ],
    }


def errors_of(data: Any) -> list[dict[str, str]]:
    with pytest.raises(SpecError) as info:
        validate_data(data)
    errors = info.value.errors
    assert errors, "SpecError without errors"
    for err in errors:
        assert set(err) == {"path", "message"}
    return errors


def paths(data: Any) -> dict[str, str]:
    return {e["path"]: e["message"] for e in errors_of(data)}


def assert_error(data: Any, path: str, fragment: str) -> None:
    found = paths(data)
    assert path in found, f"no error at {path}: {found}"
    assert fragment in found[path], f"{path}: {found[path]!r} lacks {fragment!r}"


# --------------------------------------------------------------------------- the example


def test_contract_example_parses() -> None:
    parsed = parse_workflow(CONTRACT_EXAMPLE)
    wf = parsed.spec
    assert wf.name == "order-fulfilment"
    assert parsed.source == CONTRACT_EXAMPLE
    assert parsed.checksum == checksum_of(parsed.data)
    assert parsed.data["steps"][0]["name"] == "reserve"
    s = wf.settings
    assert (s.timeout, s.step_timeout) == (3600.0, 300.0)
    assert s.on_failure is not None and s.on_failure.retry is not None
    assert s.on_failure.retry.max_attempts == 2 and s.on_failure.retry.delay == 1.0
    assert [h.name for h in s.on_error] == ["tell-ops"]
    assert s.checkpoints.policy == "after-each-step" and s.checkpoints.max_age == 7 * 86400
    assert s.checkpoints.interval == 30.0 and s.checkpoints.compress_above == 1024
    assert s.interventions.timeout == 86400 and s.interventions.on_timeout == "abort"
    assert s.compensation == "entire-workflow"
    assert s.alerts == ("ops-slack", "oncall-email")
    assert s.retry_budget == 20
    timeout = s.recovery_for("timeout")
    assert timeout is not None
    assert timeout.strategy == "increase_timeout_and_retry" and timeout.max_timeout == 1800
    unknown = s.recovery_for("unknown")
    assert unknown is not None and unknown.backoff == "exponential"
    assert s.recovery_for("deadlock") is None
    assert s.recovery["resource_exhaustion"]["strategy"] == "queue_for_later"

    reserve, charge, notify, big, ship_each, partner = wf.steps
    assert reserve.with_["method"] == "POST" and reserve.timeout == 30.0 and reserve.critical
    assert reserve.compensate is not None and reserve.compensate.name == "release"
    assert charge.on_failure is not None
    retry = charge.on_failure.retry
    assert retry is not None
    assert (retry.max_attempts, retry.delay, retry.strategy) == (3, 1.0, "exponential")
    assert (retry.multiplier, retry.max_delay, retry.jitter) == (2.0, 60.0, True)
    assert retry.condition == "error.type != 'ValidationError'"
    assert [f.name for f in charge.on_failure.fallback] == ["charge-backup"]
    assert charge.on_failure.continue_ and not charge.on_failure.escalate
    assert notify.needs == ("reserve",) and notify.if_ == "steps.charge.status == 'succeeded'"
    assert big.is_flow and big.condition == "inputs.amount > 1000"
    assert [x.name for x in big.steps] == ["review"] and [x.name for x in big.else_] == ["auto-ok"]
    assert big.steps[0].with_ == {"prompt": "Approve large order?"}
    assert ship_each.foreach == "inputs.items" and ship_each.max_parallel == 4
    assert ship_each.steps[0].with_ == {"sku": "{{ foreach.item.sku }}"}
    cb = partner.circuit_breaker
    assert cb is not None and cb.key == "partner-api" and cb.threshold == 0.5
    assert (cb.minimum_throughput, cb.open_for, cb.half_open_successes) == (10, 30.0, 3)
    assert partner.with_["method"] == "GET"  # the http default
    pr = partner.on_failure.retry if partner.on_failure else None
    assert pr is not None and pr.retry_on == ("ConnectionError", "HTTPStatusError")
    assert pr.do_not_retry_on == ("ValidationError",)

    kinds = [(st.name, kind) for st, kind in wf.all_steps()]
    assert kinds == [
        ("reserve", "action"),
        ("release", "compensation"),
        ("charge", "action"),
        ("charge-backup", "fallback"),
        ("notify", "action"),
        ("big-order", "action"),
        ("review", "action"),
        ("auto-ok", "action"),
        ("ship-each", "action"),
        ("ship", "action"),
        ("call-partner", "action"),
        ("tell-ops", "handler"),
    ]
    assert set(wf.step_index()) == {name for name, _ in kinds}


def test_contract_main_example_parses_alone() -> None:
    text = (
        CONTRACT_EXAMPLE.split("  checkpoints:")[0]
        + "steps:"
        + CONTRACT_EXAMPLE.split("steps:", 1)[1]
    )
    parsed = parse_workflow(text)
    assert parsed.spec.settings.recovery == {}


def test_same_text_same_checksum_and_json_equivalent() -> None:
    one = parse_workflow(CONTRACT_EXAMPLE)
    two = parse_workflow(CONTRACT_EXAMPLE)
    assert one.checksum == two.checksum
    as_json = json.dumps(one.data)
    three = parse_workflow(as_json, "application/json")
    assert three.checksum == one.checksum
    assert parse_workflow(as_json).checksum == one.checksum  # YAML reads JSON too
    changed = parse_workflow(CONTRACT_EXAMPLE.replace("Reserve, charge", "Reserve and charge"))
    assert changed.checksum != one.checksum


def test_on_failure_for() -> None:
    wf = parse_workflow(CONTRACT_EXAMPLE).spec
    index = wf.step_index()
    reserve, kind = index["reserve"]
    assert wf.on_failure_for(reserve, kind) is wf.settings.on_failure
    charge, kind = index["charge"]
    assert wf.on_failure_for(charge, kind) is charge.on_failure
    big, kind = index["big-order"]
    assert wf.on_failure_for(big, kind) is None  # flow steps take no workflow-level default
    backup, kind = index["charge-backup"]
    assert kind == "fallback" and wf.on_failure_for(backup, kind) is None
    release, kind = index["release"]
    assert wf.on_failure_for(release, kind) is None
    ops, kind = index["tell-ops"]
    assert wf.on_failure_for(ops, kind) is None


def test_dependencies_helper() -> None:
    wf = parse_workflow(CONTRACT_EXAMPLE).spec
    assert dependencies(wf.steps) == {
        "reserve": (),
        "charge": ("reserve",),
        "notify": ("reserve",),
        "big-order": ("notify",),
        "ship-each": ("big-order",),
        "call-partner": ("ship-each",),
    }
    data = base()
    data["steps"][1]["needs"] = []
    assert dependencies(validate_data(data).steps) == {"a": (), "b": ()}


def test_models_keep_python_names_and_are_frozen() -> None:
    step = StepSpec(name="x", type="noop", with_={"a": 1}, on_failure=OnFailureSpec(continue_=True))
    assert step.with_ == {"a": 1} and step.on_failure is not None
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error
        step.name = "y"  # type: ignore[misc]
    assert list(step.children()) == []
    wf = WorkflowSpec(name="w", steps=(step,))
    assert wf.settings.timeout == 3600.0


# --------------------------------------------------------------------------- text


def test_yaml_syntax_error_has_line() -> None:
    with pytest.raises(SpecError) as info:
        load_text("name: x\nsteps: [\n")
    (err,) = info.value.errors
    assert err["path"] == "line 3" and err["message"].startswith("invalid YAML")


def test_yaml_syntax_error_mapping() -> None:
    with pytest.raises(SpecError) as info:
        parse_workflow("name: x\n  bad: indent: here\n")
    assert info.value.errors[0]["path"].startswith("line ")


def test_json_syntax_error() -> None:
    with pytest.raises(SpecError) as info:
        load_text('{"name": "x",\n "steps": }', "application/json")
    (err,) = info.value.errors
    assert (
        err["path"] == "line 2" and "invalid JSON" in err["message"] and "column" in err["message"]
    )


@pytest.mark.parametrize(
    ("text", "fragment"), [("", "empty"), ("- a\n- b\n", "mapping"), ("hello", "mapping")]
)
def test_top_level_must_be_mapping(text: str, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_workflow(text)
    (err,) = info.value.errors
    assert err["path"] == "(text)" and fragment in err["message"]


def test_validate_data_rejects_non_mapping() -> None:
    assert errors_of([1])[0]["path"] == "(text)"


def test_yaml_values_normalised() -> None:
    data = load_text(
        "name: w\nsteps:\n  - {name: a, type: noop, with: {day: 2024-01-02, 200: ok}}\n"
    )
    assert data["steps"][0]["with"] == {"day": "2024-01-02", "200": "ok"}


def test_boolean_yaml_key_rejected() -> None:
    with pytest.raises(SpecError) as info:
        load_text("name: w\non: 1\n")
    assert "quote the key" in info.value.errors[0]["message"]


# --------------------------------------------------------------------------- keys and names


def test_unknown_keys() -> None:
    data = base()
    data["bogus"] = 1
    data["steps"][0]["bogus"] = 2
    data["settings"] = {"checkpoints": {"polcy": "x"}}
    data["steps"][1]["on-failure"] = {"retry": {"max-attempts": 1, "tries": 3}}
    found = paths(data)
    assert found["bogus"] == "unknown key"
    assert found["steps[0].bogus"] == "unknown key"
    assert found["settings.checkpoints.polcy"] == "unknown key"
    assert found["steps[1].on-failure.retry.tries"] == "unknown key"


def test_python_names_are_unknown_keys_in_text() -> None:
    data = base()
    data["steps"][0]["on-failure"] = {"retry": {"max_attempts": 1}}
    found = paths(data)
    assert found["steps[0].on-failure.retry.max_attempts"] == "unknown key"
    assert found["steps[0].on-failure.retry.max-attempts"] == "required"


def test_every_problem_listed() -> None:
    data = base()
    data["name"] = "Bad Name"
    data["steps"][0]["type"] = "frob"
    data["steps"][1]["on-failure"] = {"retry": {"max-attempts": 0, "delay": "soon"}}
    data["settings"] = {"timeout": "1 hour"}
    found = paths(data)
    assert set(found) >= {
        "name",
        "steps[0].type",
        "steps[1].on-failure.retry.max-attempts",
        "steps[1].on-failure.retry.delay",
        "settings.timeout",
    }


@pytest.mark.parametrize("name", ["Order", "a b", "x" * 101, "", "a.b", "ü"])
def test_workflow_name(name: str) -> None:
    data = base()
    data["name"] = name
    assert_error(data, "name", "1-100 characters of a-z, 0-9, _ and -")


@pytest.mark.parametrize("name", ["ok", "a-b_c9", "x" * 100])
def test_workflow_name_ok(name: str) -> None:
    data = base()
    data["name"] = name
    validate_data(data)


def test_workflow_name_required_and_steps_required() -> None:
    found = paths({"steps": []})
    assert found["name"] == "required"
    assert found["steps"] == "must have at least 1 item"
    assert paths({"name": "w"})["steps"] == "required"


@pytest.mark.parametrize("name", ["ship[0]", "a.b", "a b", "", "x" * 101])
def test_step_name(name: str) -> None:
    data = base()
    data["steps"][1]["name"] = name
    assert_error(data, "steps[1].name", "letters, digits, _ and -")


def test_step_name_may_have_capitals_and_dashes() -> None:
    data = base()
    data["steps"][1]["name"] = "Call_partner-2"
    validate_data(data)


def test_duplicate_names_top_level() -> None:
    data = base()
    data["steps"][1]["name"] = "a"
    assert_error(data, "steps[1].name", "duplicate step name 'a' (already used at steps[0])")


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (
            lambda d: d["steps"].append(
                {
                    "name": "f",
                    "type": "if",
                    "condition": "true",
                    "steps": [{"name": "a", "type": "noop"}],
                }
            ),
            "steps[2].steps[0].name",
        ),
        (
            lambda d: d["steps"].append(
                {
                    "name": "f",
                    "type": "if",
                    "condition": "true",
                    "steps": [{"name": "x", "type": "noop"}],
                    "else": [{"name": "b", "type": "noop"}],
                }
            ),
            "steps[2].else[0].name",
        ),
        (
            lambda d: d["steps"].append(
                {
                    "name": "f",
                    "type": "foreach",
                    "foreach": "[1]",
                    "steps": [{"name": "a", "type": "noop"}],
                }
            ),
            "steps[2].steps[0].name",
        ),
        (
            lambda d: d["steps"][1].update(
                {"on-failure": {"fallback": [{"name": "a", "type": "noop"}]}}
            ),
            "steps[1].on-failure.fallback[0].name",
        ),
        (
            lambda d: d["steps"][1].update({"compensate": {"name": "a", "type": "noop"}}),
            "steps[1].compensate.name",
        ),
        (
            lambda d: d.update({"settings": {"on-error": [{"name": "b", "type": "noop"}]}}),
            "settings.on-error[0].name",
        ),
        (
            lambda d: d.update(
                {"settings": {"on-failure": {"fallback": [{"name": "a", "type": "noop"}]}}}
            ),
            "settings.on-failure.fallback[0].name",
        ),
    ],
)
def test_duplicate_names_everywhere(mutate: Any, path: str) -> None:
    data = base()
    mutate(data)
    assert_error(data, path, "duplicate step name")


# --------------------------------------------------------------------------- types


def test_unknown_type_lists_known() -> None:
    data = base()
    data["steps"][0]["type"] = "frob"
    assert_error(data, "steps[0].type", "unknown step type 'frob'; known types: noop, sleep, http")


def test_register_step_type() -> None:
    data = base()
    data["steps"][0]["type"] = "email"
    data["steps"][0]["with"] = {"to": 3}
    errors_of(data)

    def check(with_: dict[str, Any]) -> Iterator[tuple[str, str]]:
        if not isinstance(with_.get("to"), str):
            yield "to", "must be an address"

    register_step_type("email", check)
    try:
        assert "email" in known_step_types()
        assert paths(data) == {"steps[0].with.to": "must be an address"}
        data["steps"][0]["with"] = {"to": "ops@example.com"}
        assert validate_data(data).steps[0].type == "email"
    finally:
        unregister_step_type("email")
    assert "email" not in known_step_types()
    with pytest.raises(ValueError):
        register_step_type("noop")
    with pytest.raises(ValueError):
        register_step_type("Bad Name")


def test_known_types_builtin() -> None:
    assert known_step_types()[:7] == (
        "noop",
        "sleep",
        "http",
        "python",
        "approval",
        "if",
        "foreach",
    )


# --------------------------------------------------------------------------- needs and ordering


def test_unknown_needs() -> None:
    data = base()
    data["steps"][1]["needs"] = ["zzz"]
    assert_error(data, "steps[1].needs[0]", "unknown step 'zzz'")


def test_needs_self() -> None:
    data = base()
    data["steps"][1]["needs"] = ["b"]
    assert_error(data, "steps[1].needs[0]", "cannot need itself")


def test_needs_listed_twice() -> None:
    data = base()
    data["steps"][1]["needs"] = ["a", "a"]
    assert_error(data, "steps[1].needs[1]", "listed twice")


def test_needs_only_siblings() -> None:
    data = base()
    data["steps"].append(
        {
            "name": "f",
            "type": "if",
            "condition": "true",
            "steps": [{"name": "inner", "type": "noop", "needs": ["a"]}],
        }
    )
    data["steps"][1]["needs"] = ["inner"]
    found = paths(data)
    assert "not a sibling" in found["steps[1].needs[0]"]
    assert "not a sibling" in found["steps[2].steps[0].needs[0]"]


def test_nested_needs_between_siblings_ok() -> None:
    data = base()
    data["steps"].append(
        {
            "name": "f",
            "type": "foreach",
            "foreach": "inputs.items",
            "steps": [{"name": "x", "type": "noop"}, {"name": "y", "type": "noop", "needs": ["x"]}],
        }
    )
    validate_data(data)


def test_explicit_cycle() -> None:
    data = base()
    data["steps"][0]["needs"] = ["b"]
    data["steps"][1]["needs"] = ["a"]
    found = paths(data)
    assert found["steps[0].needs"].startswith("dependency cycle: a -> b -> a")


def test_cycle_through_implicit_order() -> None:
    data = base()
    data["steps"].append({"name": "c", "type": "noop"})
    data["steps"][0]["needs"] = ["c"]  # a waits for c, c waits for b (implicit), b for a
    assert_error(data, "steps[0].needs", "dependency cycle: a -> c -> b -> a")


def test_needs_forward_without_cycle_ok() -> None:
    data = base()
    data["steps"][0]["needs"] = ["b"]
    data["steps"][1]["needs"] = []
    validate_data(data)


def test_cycle_reported_once() -> None:
    data = base()
    data["steps"][0]["needs"] = ["b"]
    data["steps"][1]["needs"] = ["a"]
    cycles = [e for e in errors_of(data) if "cycle" in e["message"]]
    assert len(cycles) == 1


# --------------------------------------------------------------------------- flow steps


def test_if_requires_condition_and_steps() -> None:
    data = base()
    data["steps"][1] = {"name": "b", "type": "if"}
    found = paths(data)
    assert found["steps[1].condition"] == "required for if steps"
    assert "at least one step" in found["steps[1].steps"]


def test_foreach_requires_foreach_and_steps() -> None:
    data = base()
    data["steps"][1] = {"name": "b", "type": "foreach", "steps": []}
    found = paths(data)
    assert "required for foreach steps" in found["steps[1].foreach"]
    assert "at least one step" in found["steps[1].steps"]


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("steps", [{"name": "x", "type": "noop"}], "only allowed on if and foreach"),
        ("else", [{"name": "x", "type": "noop"}], "only allowed on if steps"),
        ("foreach", "inputs.items", "only allowed on foreach steps"),
        ("condition", "true", "only allowed on if steps"),
        ("max-parallel", 2, "only allowed on foreach steps"),
    ],
)
def test_flow_keys_on_action_steps(key: str, value: Any, fragment: str) -> None:
    data = base()
    data["steps"][0][key] = value
    assert_error(data, f"steps[0].{key}", fragment)


def test_flow_keys_on_wrong_flow_type() -> None:
    data = base()
    data["steps"][0] = {
        "name": "a",
        "type": "if",
        "condition": "true",
        "steps": [{"name": "x", "type": "noop"}],
        "max-parallel": 2,
        "foreach": "[1]",
    }
    data["steps"][1] = {
        "name": "b",
        "type": "foreach",
        "foreach": "[1]",
        "steps": [{"name": "y", "type": "noop"}],
        "condition": "true",
        "else": [],
    }
    found = paths(data)
    assert found["steps[0].max-parallel"] == "only allowed on foreach steps"
    assert found["steps[0].foreach"] == "only allowed on foreach steps"
    assert "only allowed on if steps" in found["steps[1].condition"]
    assert found["steps[1].else"] == "only allowed on if steps"


def test_max_parallel_bounds() -> None:
    data = base()
    data["steps"][1] = {
        "name": "b",
        "type": "foreach",
        "foreach": "[1]",
        "max-parallel": 0,
        "steps": [{"name": "y", "type": "noop"}],
    }
    assert paths(data)["steps[1].max-parallel"] == "must be >= 1"


@pytest.mark.parametrize("key", ["on-failure", "compensate"])
def test_flow_steps_take_no_on_failure_or_compensate(key: str) -> None:
    data = base()
    value: Any = {"continue": True} if key == "on-failure" else {"name": "undo", "type": "noop"}
    data["steps"][1] = {
        "name": "b",
        "type": "if",
        "condition": "true",
        "steps": [{"name": "y", "type": "noop"}],
        key: value,
    }
    assert_error(data, f"steps[1].{key}", "flow steps take no")


@pytest.mark.parametrize(
    ("where", "path", "label"),
    [
        ("fallback", "steps[1].on-failure.fallback[0]", "fallback"),
        ("compensate", "steps[1].compensate", "compensate"),
        ("handler", "settings.on-error[0]", "on-error"),
        ("default-fallback", "settings.on-failure.fallback[0]", "fallback"),
    ],
)
def test_restricted_steps(where: str, path: str, label: str) -> None:
    inner = {
        "name": "r",
        "type": "if",
        "condition": "true",
        "steps": [{"name": "rx", "type": "noop"}],
        "needs": [],
        "on-failure": {"continue": True},
    }
    data = base()
    if where == "fallback":
        data["steps"][1]["on-failure"] = {"fallback": [inner]}
    elif where == "compensate":
        data["steps"][1]["compensate"] = inner
    elif where == "handler":
        data["settings"] = {"on-error": [inner]}
    else:
        data["settings"] = {"on-failure": {"fallback": [inner]}}
    found = paths(data)
    assert f"not allowed on {label} steps" in found[f"{path}.on-failure"]
    assert "no on-failure inside" in found[f"{path}.on-failure"]
    assert found[f"{path}.type"] == f"{label} steps cannot be flow steps (if, foreach)"
    assert f"not allowed on {label} steps" in found[f"{path}.needs"]


def test_fallback_action_steps_ok_and_compensate_of_compensate_rejected() -> None:
    data = base()
    data["steps"][1]["on-failure"] = {
        "fallback": [
            {"name": "fb", "type": "noop", "compensate": {"name": "fb-undo", "type": "noop"}}
        ]
    }
    validate_data(data)
    data["steps"][0]["compensate"] = {
        "name": "u",
        "type": "noop",
        "compensate": {"name": "uu", "type": "noop"},
    }
    assert_error(data, "steps[0].compensate.compensate", "not allowed on compensate steps")


def test_continue_and_escalate_exclusive() -> None:
    data = base()
    data["steps"][0]["on-failure"] = {"continue": True, "escalate": True}
    assert_error(data, "steps[0].on-failure", "cannot both be true")


# --------------------------------------------------------------------------- with


def test_sleep_duration() -> None:
    data = base()
    data["steps"][0] = {"name": "a", "type": "sleep"}
    assert_error(data, "steps[0].with.duration", "required for sleep steps")
    data["steps"][0]["with"] = {"duration": "5 minutes"}
    assert_error(data, "steps[0].with.duration", "not a duration")
    for ok in ("250ms", "2h", 0, "{{ inputs.wait }}"):
        data["steps"][0]["with"] = {"duration": ok}
        validate_data(data)
    data["steps"][0]["with"] = {"duration": 3}  # a bare number: the unit is required
    assert_error(data, "steps[0].with.duration", "3 needs a unit: write e.g. 3s")


def test_http_with() -> None:
    data = base()
    data["steps"][0] = {"name": "a", "type": "http"}
    assert_error(data, "steps[0].with.url", "required for http steps")
    data["steps"][0]["with"] = {"url": "http://x", "method": "FETCH"}
    assert_error(data, "steps[0].with.method", "unknown HTTP method 'FETCH'")
    data["steps"][0]["with"] = {"url": "ftp://x"}
    assert_error(data, "steps[0].with.url", "http:// or https://")
    data["steps"][0]["with"] = {
        "url": "http://x",
        "expect": [200, "300-399", "abc"],
        "timeout": "x",
    }
    found = paths(data)
    assert "status" in found["steps[0].with.expect[2]"]
    assert "not a duration" in found["steps[0].with.timeout"]
    data["steps"][0]["with"] = {
        "url": "{{ inputs.base }}/x",
        "method": "{{ inputs.m }}",
        "json": {"a": 1},
        "expect": 201,
        "timeout": "10s",
    }
    validate_data(data)
    data["steps"][0]["with"] = {"url": "https://x", "method": "post"}
    assert validate_data(data).steps[0].with_["method"] == "post"


def test_http_method_defaults_to_get() -> None:
    data = base()
    data["steps"][0] = {"name": "a", "type": "http", "with": {"url": "https://x"}}
    parsed = validate_data(data)
    assert parsed.steps[0].with_ == {"url": "https://x", "method": "GET"}
    assert data["steps"][0]["with"] == {"url": "https://x"}  # the input is left alone


@pytest.mark.parametrize("function", ["nocolon", "a.b:", ":f", "a b:c", 3])
def test_python_function(function: Any) -> None:
    data = base()
    data["steps"][0] = {"name": "a", "type": "python", "with": {"function": function}}
    assert_error(data, "steps[0].with.function", "module.path:callable")


def test_python_function_ok_and_required() -> None:
    data = base()
    data["steps"][0] = {"name": "a", "type": "python", "with": {"function": "examples.shop:charge"}}
    validate_data(data)
    data["steps"][0]["with"] = {}
    assert_error(data, "steps[0].with.function", "required for python steps")


def test_approval_prompt() -> None:
    data = base()
    data["steps"][0] = {"name": "a", "type": "approval"}
    validate_data(data)
    data["steps"][0]["with"] = {"prompt": ["x"]}
    assert_error(data, "steps[0].with.prompt", "must be a string")


def test_with_must_be_mapping_and_null_is_empty() -> None:
    data = base()
    data["steps"][0]["with"] = None
    assert validate_data(data).steps[0].with_ == {}
    data["steps"][0]["with"] = [1]
    assert_error(data, "steps[0].with", "must be a mapping")


def test_templates_in_with_checked_with_exact_path() -> None:
    data = base()
    data["steps"][0]["with"] = {
        "args": {"list": ["ok {{ inputs.x }}", "bad {{ inputs. }}"]},
        "u": "{{ ( }}",
    }
    found = paths(data)
    assert "expression 'inputs.' does not parse" in found["steps[0].with.args.list[1]"]
    assert "does not parse" in found["steps[0].with.u"]


# --------------------------------------------------------------------------- expressions


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d["steps"][0].update({"if": "x +"}), "steps[0].if"),
        (
            lambda d: d["steps"].__setitem__(
                1,
                {
                    "name": "b",
                    "type": "if",
                    "condition": "a ==",
                    "steps": [{"name": "y", "type": "noop"}],
                },
            ),
            "steps[1].condition",
        ),
        (
            lambda d: d["steps"].__setitem__(
                1,
                {
                    "name": "b",
                    "type": "foreach",
                    "foreach": "[1,",
                    "steps": [{"name": "y", "type": "noop"}],
                },
            ),
            "steps[1].foreach",
        ),
        (
            lambda d: d["steps"][0].update(
                {"on-failure": {"retry": {"max-attempts": 1, "condition": "error.type =="}}}
            ),
            "steps[0].on-failure.retry.condition",
        ),
    ],
)
def test_expressions_must_parse(mutate: Any, path: str) -> None:
    data = base()
    mutate(data)
    assert_error(data, path, "does not parse")


def test_expression_must_be_string() -> None:
    data = base()
    data["steps"][0]["if"] = 5
    assert_error(data, "steps[0].if", "must be an expression")


def test_expression_wrapper_stripped() -> None:
    data = base()
    data["steps"][0]["if"] = "${{ inputs.go }}"
    data["steps"][1] = {
        "name": "b",
        "type": "foreach",
        "foreach": "${{ inputs.items }}",
        "steps": [{"name": "y", "type": "noop"}],
    }
    wf = validate_data(data)
    assert wf.steps[0].if_ == "inputs.go"
    assert wf.steps[1].foreach == "inputs.items"


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("2m", 120.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1w", 604800.0),
        ("0s", 0.0),
        (3, 3.0),
        (1.5, 1.5),
        (" 5s ", 5.0),
    ],
)
def test_parse_duration(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["5", "5 s", "1.5s", "5sec", "-1s", "s", "", True, -1])
def test_parse_duration_rejects(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d["steps"][0].update({"timeout": "30 s"}), "steps[0].timeout"),
        (lambda d: d.update({"settings": {"step-timeout": "x"}}), "settings.step-timeout"),
        (
            lambda d: d.update({"settings": {"checkpoints": {"max-age": "7 days"}}}),
            "settings.checkpoints.max-age",
        ),
        (
            lambda d: d.update({"settings": {"interventions": {"timeout": "1day"}}}),
            "settings.interventions.timeout",
        ),
        (
            lambda d: d["steps"][0].update(
                {"on-failure": {"retry": {"max-attempts": 1, "max-delay": "1 m"}}}
            ),
            "steps[0].on-failure.retry.max-delay",
        ),
        (
            lambda d: d["steps"][0].update({"circuit-breaker": {"open-for": "soon"}}),
            "steps[0].circuit-breaker.open-for",
        ),
        (
            lambda d: d.update(
                {
                    "settings": {
                        "recovery": {"timeout": {"strategy": "retry_step", "max-timeout": "x"}}
                    }
                }
            ),
            "settings.recovery.timeout.max-timeout",
        ),
    ],
)
def test_bad_durations(mutate: Any, path: str) -> None:
    data = base()
    mutate(data)
    assert_error(data, path, "is not a duration")


# --------------------------------------------------------------------------- retry


def test_retry_max_attempts_path_and_message() -> None:
    data = base()
    data["steps"][1]["on-failure"] = {"retry": {"max-attempts": 0}}
    assert paths(data) == {"steps[1].on-failure.retry.max-attempts": "must be >= 1"}
    data["steps"][1]["on-failure"] = {"retry": {"delay": "1s"}}
    assert paths(data) == {"steps[1].on-failure.retry.max-attempts": "required"}


def test_retry_strategy_literal() -> None:
    data = base()
    data["steps"][1]["on-failure"] = {"retry": {"max-attempts": 1, "strategy": "random"}}
    assert_error(
        data, "steps[1].on-failure.retry.strategy", "must be 'fixed', 'linear' or 'exponential'"
    )


def retry(**kw: Any) -> RetrySpec:
    return RetrySpec.model_validate({"max-attempts": 5, **kw})


def test_wait_fixed() -> None:
    r = retry(delay="2s")
    assert [r.wait_before_retry(n) for n in (1, 2, 3)] == [2.0, 2.0, 2.0]


def test_wait_linear() -> None:
    r = retry(delay="2s", strategy="linear")
    assert [r.wait_before_retry(n) for n in (1, 2, 3)] == [2.0, 4.0, 6.0]


def test_wait_exponential() -> None:
    r = retry(delay="1s", strategy="exponential")
    assert [r.wait_before_retry(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    r3 = retry(delay="100ms", strategy="exponential", multiplier=3)
    assert [round(r3.wait_before_retry(n), 6) for n in (1, 2, 3)] == [0.1, 0.3, 0.9]


def test_wait_max_delay_caps() -> None:
    r = retry(delay="10s", strategy="exponential", **{"max-delay": "30s"})
    assert [r.wait_before_retry(n) for n in (1, 2, 3, 4)] == [10.0, 20.0, 30.0, 30.0]
    lin = retry(delay="10s", strategy="linear", **{"max-delay": "15s"})
    assert lin.wait_before_retry(5) == 15.0


def test_wait_jitter() -> None:
    r = retry(delay="4s", jitter=True)
    assert r.wait_before_retry(1, jitter_factor=0.75) == 3.0
    assert r.wait_before_retry(1, jitter_factor=1.25) == 5.0
    no = retry(delay="4s")
    assert no.wait_before_retry(1, jitter_factor=0.75) == 4.0
    capped = retry(delay="1m", jitter=True, **{"max-delay": "10s"})
    assert capped.wait_before_retry(1, jitter_factor=1.25) == 12.5  # jitter applies after the cap


def test_wait_defaults() -> None:
    r = retry()
    assert r.delay == 0.0 and r.strategy == "fixed" and r.multiplier == 2.0 and not r.jitter
    assert r.wait_before_retry(3) == 0.0


def test_retry_allows() -> None:
    r = retry(**{"retry-on": ["ConnectionError"], "do-not-retry-on": ["ValidationError"]})
    assert r.allows("ConnectionError") and not r.allows("TimeoutError")
    assert retry(**{"do-not-retry-on": ["ValidationError"]}).allows("X")
    assert not retry(**{"do-not-retry-on": ["ValidationError"]}).allows("ValidationError")


# --------------------------------------------------------------------------- settings


def test_recovery_validation() -> None:
    data = base()
    data["settings"] = {
        "recovery": {
            "timeout": {"strategy": "pray"},
            "unknown": {
                "strategy": "retry_step",
                "max-attempts": 0,
                "fallback": "nope",
                "extra": 1,
            },
            "transient": "retry",
            "weird": {"strategy": "retry_step"},
            "retry-budget": -1,
        }
    }
    found = paths(data)
    assert "unknown strategy 'pray'" in found["settings.recovery.timeout.strategy"]
    assert found["settings.recovery.unknown.max-attempts"] == "must be >= 1"
    assert "unknown strategy 'nope'" in found["settings.recovery.unknown.fallback"]
    assert found["settings.recovery.unknown.extra"] == "unknown key"
    assert "must be a mapping" in found["settings.recovery.transient"]
    assert "unknown error class" in found["settings.recovery.weird"]
    assert found["settings.recovery.retry-budget"] == "must be >= 0"
    data["settings"] = {"recovery": {"retry-budget": "many"}}
    assert paths(data) == {"settings.recovery.retry-budget": "must be an integer"}
    data["settings"] = {"recovery": {"timeout": {}}}
    assert paths(data) == {"settings.recovery.timeout.strategy": "required"}


def test_recovery_all_classes_and_strategies() -> None:
    data = base()
    data["settings"] = {
        "recovery": {
            cls: {"strategy": spec_module.RECOVERY_STRATEGIES[i % 6]}
            for i, cls in enumerate(spec_module.ERROR_CLASSES)
        }
        | {"retry-budget": 0}
    }
    wf = validate_data(data)
    assert wf.settings.retry_budget == 0
    rc = wf.settings.recovery_for("deadlock")
    assert rc is not None and rc.max_attempts == 3 and rc.fallback == "manual_intervention"


def test_settings_literals() -> None:
    data = base()
    data["settings"] = {
        "compensation": "some",
        "checkpoints": {"policy": "sometimes", "keep": 0},
        "interventions": {"on-timeout": "explode", "approvals": 0},
    }
    found = paths(data)
    assert found["settings.compensation"].startswith("must be 'entire-workflow' or 'branch'")
    assert found["settings.checkpoints.policy"].startswith("must be ")
    assert found["settings.checkpoints.keep"] == "must be >= 1"
    assert found["settings.interventions.on-timeout"].startswith("must be ")
    assert found["settings.interventions.approvals"] == "must be >= 1"


def test_settings_null_is_default() -> None:
    data = base()
    data["settings"] = None
    assert validate_data(data).settings.step_timeout == 300.0


@pytest.mark.parametrize(
    ("value", "ratio"), [("50%", 0.5), ("100%", 1.0), ("12.5%", 0.125), (0.25, 0.25), (1, 1.0)]
)
def test_failure_threshold_ok(value: Any, ratio: float) -> None:
    data = base()
    data["steps"][0]["circuit-breaker"] = {"failure-threshold": value}
    cb = validate_data(data).steps[0].circuit_breaker
    assert cb is not None and cb.threshold == ratio


@pytest.mark.parametrize("value", ["0%", "150%", "half", 0, 1.5, -0.1, True, None])
def test_failure_threshold_bad(value: Any) -> None:
    data = base()
    data["steps"][0]["circuit-breaker"] = {"failure-threshold": value}
    assert_error(data, "steps[0].circuit-breaker.failure-threshold", "percentage such as 50%")


def test_circuit_breaker_ints() -> None:
    data = base()
    data["steps"][0]["circuit-breaker"] = {"minimum-throughput": 0, "half-open-successes": 0}
    found = paths(data)
    assert found["steps[0].circuit-breaker.minimum-throughput"] == "must be >= 1"
    assert found["steps[0].circuit-breaker.half-open-successes"] == "must be >= 1"


# --------------------------------------------------------------------------- inputs


def test_inputs_must_be_json_schema() -> None:
    data = base()
    data["inputs"] = {"type": "objekt"}
    assert_error(data, "inputs.type", "not a valid JSON Schema")
    data["inputs"] = {"type": "object", "properties": {"n": {"type": "integr"}}}
    assert_error(data, "inputs.properties.n.type", "not a valid JSON Schema")
    data["inputs"] = {"type": "object", "required": "order_id"}
    assert_error(data, "inputs.required", "not a valid JSON Schema")
    data["inputs"] = [1]
    assert_error(data, "inputs", "must be a mapping")


def test_inputs_ok() -> None:
    data = base()
    data["inputs"] = {"type": "object", "properties": {"amount": {"type": "number", "minimum": 0}}}
    assert validate_data(data).inputs == data["inputs"]


# --------------------------------------------------------------------------- types of values


def test_type_messages() -> None:
    data = base()
    data["steps"][0]["critical"] = "maybe"
    data["steps"][0]["needs"] = "b"
    data["steps"][1] = "not a step"
    data["settings"] = {"alerts": "ops"}
    found = paths(data)
    assert found["steps[0].critical"] == "must be true or false"
    assert found["steps[0].needs"] == "must be a list"
    assert found["steps[1]"] == "must be a mapping"
    assert found["settings.alerts"] == "must be a list"


def test_errors_sorted_and_unique() -> None:
    data = copy.deepcopy(base())
    data["steps"][1]["bogus"] = 1
    data["steps"][0]["bogus"] = 1
    data["bogus"] = 1
    errors = errors_of(data)
    assert [e["path"] for e in errors] == ["bogus", "steps[0].bogus", "steps[1].bogus"]
    assert str(SpecError(errors)).startswith("bogus: unknown key")


def test_yaml_loaded_with_safe_loader() -> None:
    with pytest.raises(SpecError):
        parse_workflow("name: !!python/object/apply:os.system ['true']\nsteps: []\n")
    assert yaml.safe_load("a: 1") == {"a": 1}
