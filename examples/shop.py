"""Python steps for the example workflows (allowed by FLOWMEND_PYTHON_MODULES=examples).

A python step is ``fn(args, context) -> JSON``: ``args`` is the step's ``with.args``
with its ``{{ }}`` expressions already evaluated; ``context`` has ``run_id``,
``workflow``, ``step``, ``attempt`` (1 for the first execution), ``idempotency_key``
and ``inputs``. Raise to fail; the exception's class name becomes ``error.type``.

Steps run at least once, so anything with a side effect should pass
``context.idempotency_key`` along (payment providers accept one) or check first.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any


class CardDeclined(Exception):
    """The card was refused: retrying will not help."""


class OutOfStock(Exception):
    pass


class CarrierUnavailable(Exception):
    pass


class UpstreamUnavailable(Exception):
    """A transient failure of a remote service."""


def _ref(prefix: str, *parts: Any) -> str:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()[:10]
    return f"{prefix}-{digest}"


# --------------------------------------------------------------------------- order saga


def reserve(args: dict[str, Any], context: Any) -> dict[str, Any]:
    """Reserve stock for every item of the order."""
    items = args.get("items") or []
    if any(item.get("sku") == "out-of-stock" for item in items if isinstance(item, dict)):
        raise OutOfStock("an item of the order is out of stock")
    return {
        "reservation": _ref("res", context.run_id, args.get("order")),
        "items": len(items),
    }


def release(args: dict[str, Any], context: Any) -> dict[str, Any]:
    """Compensation of reserve: give the stock back."""
    return {"released": args.get("reservation"), "order": args.get("order")}


def charge(args: dict[str, Any], context: Any) -> dict[str, Any]:
    """Charge the card. ``card: declined`` fails for good; ``card: flaky`` fails once."""
    card = args.get("card", "ok")
    if card == "declined":
        raise CardDeclined(f"card declined for order {args.get('order')}")
    if card == "flaky" and context.attempt < 2:
        raise UpstreamUnavailable("payment provider timed out; try again")
    return {
        "charge": _ref("ch", context.idempotency_key),
        "amount": args.get("amount"),
        "idempotency_key": context.idempotency_key,
    }


def refund(args: dict[str, Any], context: Any) -> dict[str, Any]:
    """Compensation of charge: give the money back."""
    return {"refunded": args.get("charge"), "amount": args.get("amount")}


def ship(args: dict[str, Any], context: Any) -> dict[str, Any]:
    """Hand the parcel to a carrier. ``address: nowhere`` fails (and triggers compensation)."""
    if args.get("address") == "nowhere":
        raise CarrierUnavailable("no carrier delivers to 'nowhere'")
    return {
        "tracking": _ref("trk", context.run_id, args.get("order")),
        "address": args.get("address"),
    }


# --------------------------------------------------------------------------- flaky api


def flaky_call(args: dict[str, Any], context: Any) -> dict[str, Any]:
    """Fails deterministically until attempt ``succeed_on`` (1 = the first execution)."""
    succeed_on = int(args.get("succeed_on", 3))
    if context.attempt < succeed_on:
        raise UpstreamUnavailable(
            f"attempt {context.attempt} failed on purpose (succeeds on attempt {succeed_on})"
        )
    return {"attempt": context.attempt, "answer": 42}


def cached_answer(args: dict[str, Any], context: Any) -> dict[str, Any]:
    """Fallback of flaky_call: a stale but usable answer."""
    return {"answer": args.get("default", 0), "stale": True}


# --------------------------------------------------------------------------- fan out


def process_item(args: dict[str, Any], context: Any) -> dict[str, Any]:
    """Work on one item of a foreach; ``delay`` seconds of pretend work (capped at 2)."""
    time.sleep(min(float(args.get("delay") or 0), 2.0))
    item = args.get("item")
    return {"index": args.get("index"), "item": item, "done": True}


def summarise(args: dict[str, Any], context: Any) -> dict[str, Any]:
    items = args.get("items") or []
    return {"count": len(items)}


# --------------------------------------------------------------------------- reports


def collect_metrics(args: dict[str, Any], context: Any) -> dict[str, Any]:
    day = args.get("day") or time.strftime("%Y-%m-%d", time.gmtime())
    seed = int(hashlib.sha256(str(day).encode()).hexdigest()[:6], 16)
    return {"day": day, "orders": seed % 500, "revenue": round((seed % 100000) / 10, 2)}


def render_report(args: dict[str, Any], context: Any) -> dict[str, Any]:
    metrics = args.get("metrics") or {}
    text = f"{metrics.get('day')}: {metrics.get('orders')} orders, {metrics.get('revenue')} revenue"
    return {"title": args.get("title", "Nightly report"), "text": text}
