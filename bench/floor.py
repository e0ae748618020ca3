"""The floor: a bare Dramatiq chain on the same broker as Flowmend.

Each hop does one PostgreSQL UPDATE + COMMIT (psycopg, no ORM) and sends the next hop.
It is what one durable step costs at least on this machine and broker, so Flowmend's
per-step latency is reported as a ratio to it.

Run by ``bench/run.py`` as a worker of its own::

    python -m dramatiq bench.floor --processes 1 --threads 8 --queues flowmend-floor

with ``DATABASE_URL`` and ``BROKER_URL`` in the environment. Importing this module sets
the global Dramatiq broker (the ``dramatiq`` CLI needs that); ``bench/run.py`` imports it
only to send the first hop and puts its own broker back.
"""

from __future__ import annotations

import os
import threading
import time

import dramatiq
import psycopg
from dramatiq.middleware import AgeLimit, Callbacks, Pipelines, ShutdownNotifications

QUEUE = "flowmend-floor"
TABLE = "bench_floor"


def make_broker(url: str) -> dramatiq.Broker:
    # The same middleware as flowmend.broker.make_broker, minus the Django ones.
    middleware = [AgeLimit(), ShutdownNotifications(), Callbacks(), Pipelines()]
    if url.startswith(("redis://", "rediss://")):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=url, middleware=middleware)
    if url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url, middleware=middleware)
    raise RuntimeError(f"BROKER_URL must start with redis:// or amqp://, got {url!r}")


broker = make_broker(os.environ["BROKER_URL"])
dramatiq.set_broker(broker)

_local = threading.local()


def _connection() -> psycopg.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(os.environ["DATABASE_URL"])  # explicit commit below
        _local.conn = conn
    return conn


@dramatiq.actor(queue_name=QUEUE, broker=broker)
def hop(chain_id: int, remaining: int) -> None:
    at = time.time()
    conn = _connection()
    with conn.cursor() as cur:
        cur.execute(
            f"UPDATE {TABLE} SET hops = array_append(hops, %s::float8) WHERE id = %s",  # noqa: S608
            (at, chain_id),
        )
    conn.commit()
    if remaining > 1:
        hop.send(chain_id, remaining - 1)


def create_table(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} "
            "(id bigserial PRIMARY KEY, hops float8[] NOT NULL DEFAULT '{}')"
        )


def new_chain(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(f"INSERT INTO {TABLE} DEFAULT VALUES RETURNING id").fetchone()  # noqa: S608
        assert row is not None
        return int(row[0])


def hops_of(dsn: str, chain_id: int) -> list[float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(f"SELECT hops FROM {TABLE} WHERE id = %s", (chain_id,)).fetchone()  # noqa: S608
        return list(row[0]) if row else []
