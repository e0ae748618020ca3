"""Dramatiq broker from BROKER_URL: redis://, amqp://, or in-process (embedded)."""

from __future__ import annotations

import dramatiq
from django.conf import settings
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, Callbacks, Pipelines, ShutdownNotifications

_configured = False


def make_broker(url: str) -> dramatiq.Broker:
    # Retries is left out on purpose: the engine owns retries. TimeLimit too: the
    # executor's watchdog enforces step timeouts (a message may run several steps inline).
    middleware = [AgeLimit(), ShutdownNotifications(), Callbacks(), Pipelines()]
    if url.startswith("redis://") or url.startswith("rediss://"):
        from dramatiq.brokers.redis import RedisBroker

        broker: dramatiq.Broker = RedisBroker(url=url, middleware=middleware)
    elif url.startswith("amqp://") or url.startswith("amqps://"):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=url, middleware=middleware)
    elif not url:
        broker = StubBroker(middleware=middleware)
        broker.emit_after("process_boot")
    else:
        raise RuntimeError(f"BROKER_URL must start with redis:// or amqp://, got {url!r}")
    from workflows.middleware import DatabaseConnections, Watchdog

    broker.add_middleware(DatabaseConnections())
    broker.add_middleware(Watchdog())
    return broker


def configure() -> dramatiq.Broker:
    global _configured
    if not _configured:
        dramatiq.set_broker(make_broker(settings.BROKER_URL))
        _configured = True
    return dramatiq.get_broker()
