"""Dramatiq middleware: database connections and the lease/timeout watchdog."""

from __future__ import annotations

from typing import Any

from dramatiq.middleware import Middleware


class DatabaseConnections(Middleware):
    """Django's request-cycle connection hygiene, around every message."""

    def before_process_message(self, broker: Any, message: Any) -> None:
        from django.db import close_old_connections

        close_old_connections()

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        from django.db import close_old_connections

        close_old_connections()

    after_skip_message = after_process_message

    def before_worker_thread_shutdown(self, broker: Any, thread: Any) -> None:
        from django.db import connections

        connections.close_all()


class Watchdog(Middleware):
    """Starts the thread that extends leases and enforces step timeouts."""

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        from workflows.executor import watchdog

        watchdog.start()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        from workflows.executor import watchdog

        watchdog.stop()
