"""Live push: after each committed change, tell the pages' Channels groups.

The store calls ``run_changed`` after every commit that changed a run, in web and worker
processes alike. It only notes the run id and its latest event seq (a dict update under a
lock). One daemon thread per process flushes every ``FLUSH_SECONDS``: one ``run.changed``
message per changed run to the group ``run.<id>`` and one ``dashboard.changed`` message to
``dashboard``. However busy the engine is, a group hears at most a few messages a second;
the consumers coalesce once more and render the fragments the page shows.

Messages are small and high level (ids and a seq, never HTML): rendering happens in the
consumer, with the viewer's permissions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.25
DASHBOARD_GROUP = "dashboard"
MAX_RUN_IDS_PER_MESSAGE = 200


def run_group(run_id: Any) -> str:
    return f"run.{run_id}"


class Publisher:
    """Collects changed runs and sends them to the channel layer from one thread."""

    def __init__(self, interval: float = FLUSH_SECONDS) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        # The event loop the in-memory layer's consumers run on (embedded mode, tests).
        self.home_loop: asyncio.AbstractEventLoop | None = None

    def note(self, run_id: str, seq: int) -> None:
        with self._lock:
            if seq >= self._pending.get(run_id, -1):
                self._pending[run_id] = seq
            self._ensure_thread()

    def take(self) -> dict[str, int]:
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    def _ensure_thread(self) -> None:
        alive = self._thread is not None and self._thread.is_alive()
        if alive and self._pid == os.getpid():
            return
        self._pid = os.getpid()  # after a fork the parent's thread does not exist here
        self._thread = threading.Thread(target=self._run, name="flowmend-live", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.run(self._flush_forever())

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            pending = self.take()
            if not pending:
                continue
            try:
                await self.send(pending)
            except Exception:  # a broken channel layer never breaks the engine
                log.exception("live update failed for %d runs", len(pending))

    async def send(self, pending: dict[str, int]) -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        home = self.home_loop
        if (
            isinstance(layer, InMemoryChannelLayer)
            and home is not None
            and home.is_running()
            and home is not asyncio.get_running_loop()
        ):
            # in-memory queues belong to the consumers' loop: send from there
            future = asyncio.run_coroutine_threadsafe(_send_all(layer, pending), home)
            await asyncio.wrap_future(future)
        else:
            await _send_all(layer, pending)


async def _send_all(layer: Any, pending: dict[str, int]) -> None:
    for run_id, seq in pending.items():
        await layer.group_send(
            run_group(run_id), {"type": "run.changed", "run_id": run_id, "seq": seq}
        )
    ids = list(pending)[:MAX_RUN_IDS_PER_MESSAGE]
    await layer.group_send(
        DASHBOARD_GROUP,
        {"type": "dashboard.changed", "run_ids": ids, "more": len(pending) > len(ids)},
    )


publisher = Publisher()


def run_changed(run: Any, state_version: int) -> None:
    """The store's listener: costs a dict update; the flusher thread does the rest."""
    publisher.note(str(run.pk), run.event_seq or 0)


def register() -> None:
    """Hook ``run_changed`` into the store, once."""
    from workflows import store

    if run_changed not in store.run_changed_listeners:
        store.run_changed_listeners.append(run_changed)
