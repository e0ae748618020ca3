"""Thin Dramatiq actors: they take ids and are safe to run twice."""

from __future__ import annotations

import time

import dramatiq

QUEUE = "flowmend"


@dramatiq.actor(queue_name=QUEUE)
def run_attempt(attempt_id: int) -> None:
    from workflows.executor import execute

    execute(attempt_id)


@dramatiq.actor(queue_name=QUEUE)
def fire_timer(run_id: str, step: str) -> None:
    from workflows import engine, store

    try:
        store.apply(run_id, lambda run: engine.TimerFired(time.time(), step), "timer")
    except store.RunNotFound:
        return


def dispatch_attempt(attempt_id: int, delay: float = 0.0) -> None:
    run_attempt.send_with_options(args=(attempt_id,), delay=int(delay * 1000) or None)


def wake(run_id: str, step: str, delay: float) -> None:
    # a little late rather than early: the engine ignores a timer that is not yet due
    fire_timer.send_with_options(args=(run_id, step), delay=int(delay * 1000) + 5)
