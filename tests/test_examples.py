"""Every example workflow parses, and every Python function it names can be imported."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from workflows.spec import parse_workflow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FILES = sorted(EXAMPLES.glob("*.yaml"))


def _python_functions(steps: Any) -> Iterator[str]:
    for step, _kind in steps:
        if step.type == "python":
            yield step.with_["function"]


def test_there_are_examples() -> None:
    names = {p.stem for p in FILES}
    assert {"order-saga", "flaky-api", "fan-out", "approval-gate", "nightly-report"} <= names


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_example_parses(path: Path) -> None:
    parsed = parse_workflow(path.read_text())
    assert parsed.spec.name == path.stem
    assert parsed.spec.description
    assert parsed.spec.inputs and parsed.spec.inputs.get("type") == "object"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_python_functions_exist(path: Path) -> None:
    parsed = parse_workflow(path.read_text())
    for target in _python_functions(parsed.spec.all_steps()):
        module_name, _, attr = target.partition(":")
        assert any(
            module_name == p or module_name.startswith(p + ".")
            for p in settings.FLOWMEND_PYTHON_MODULES
        ), f"{target} is not allowed by FLOWMEND_PYTHON_MODULES"
        fn = getattr(importlib.import_module(module_name), attr)
        assert callable(fn), target


class _Context:
    def __init__(self, attempt: int = 1) -> None:
        self.run_id = "r1"
        self.workflow = "example"
        self.step = "s"
        self.attempt = attempt
        self.idempotency_key = f"r1:s:{attempt}"
        self.inputs: dict[str, Any] = {}


def test_shop_steps_behave() -> None:
    from examples import shop

    assert shop.charge({"order": "o", "amount": 5, "card": "ok"}, _Context())["amount"] == 5
    with pytest.raises(shop.CardDeclined):
        shop.charge({"order": "o", "card": "declined"}, _Context())
    with pytest.raises(shop.UpstreamUnavailable):
        shop.charge({"order": "o", "card": "flaky"}, _Context(1))
    assert shop.charge({"order": "o", "card": "flaky"}, _Context(2))["charge"]
    with pytest.raises(shop.CarrierUnavailable):
        shop.ship({"address": "nowhere"}, _Context())


def test_flaky_call_fails_until_succeed_on() -> None:
    from examples import flaky

    for attempt in (1, 2):
        with pytest.raises(Exception, match="on purpose"):
            flaky.flaky_call({"succeed_on": 3}, _Context(attempt))
    assert flaky.flaky_call({"succeed_on": 3}, _Context(3)) == {"attempt": 3, "answer": 42}
