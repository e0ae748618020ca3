"""Plain SQL for the store's hot path: one statement per table, no ORM compilation.

Measured (bench/stepcost.py): the ORM's compile and model machinery cost more CPU per
step than everything else together. These helpers write the same rows through Django's
connection (so they work on PostgreSQL and SQLite alike) with values adapted the way
the ORM would adapt them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import connection


class Json:
    """Marks a value to be stored in a JSON column (None stays SQL NULL)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


_PLAIN = (str, int, float, bool, bytes, type(None))


def _cursor() -> Any:
    return connection.cursor()


def adapt(value: Any) -> Any:
    if type(value) in _PLAIN:
        return value
    if isinstance(value, Json):
        if value.value is None:
            return None
        return json.dumps(value.value, ensure_ascii=False, separators=(",", ":"), default=str)
    if isinstance(value, datetime):
        return connection.ops.adapt_datetimefield_value(value)
    if isinstance(value, uuid.UUID) and connection.vendor != "postgresql":
        return value.hex
    return value


def insert(
    table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], returning: bool = False
) -> list[int]:
    """INSERT many rows in one statement; with ``returning``, their ids in order."""
    batch = Batch()
    batch.insert(table, columns, rows, returning=returning)
    return [row[0] for row in batch.run(fetch=returning)]


def update(table: str, where: str, where_params: Sequence[Any], values: dict[str, Any]) -> int:
    """UPDATE ``table`` SET values WHERE ``where``; returns the row count."""
    sets = ", ".join(f"{column} = %s" for column in values)
    params = [adapt(v) for v in values.values()] + [adapt(v) for v in where_params]
    with _cursor() as cur:
        cur.execute(f"UPDATE {table} SET {sets} WHERE {where}", params)
        return int(cur.rowcount)


class Batch:
    """Statements sent together: one round trip on PostgreSQL, one by one elsewhere.

    Only the first statement may return rows (e.g. ``INSERT ... RETURNING id``).
    """

    def __init__(self) -> None:
        self.statements: list[tuple[str, list[Any]]] = []

    def insert(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        returning: bool = False,
    ) -> None:
        if not rows:
            return
        one = "(" + ", ".join(["%s"] * len(columns)) + ")"
        text = f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join([one] * len(rows))
        if returning:
            if self.statements:
                raise ValueError("only the first statement of a batch may return rows")
            text += " RETURNING id"
        self.statements.append((text, [adapt(v) for row in rows for v in row]))

    def update(
        self, table: str, where: str, where_params: Sequence[Any], values: dict[str, Any]
    ) -> None:
        sets = ", ".join(f"{column} = %s" for column in values)
        params = [adapt(v) for v in values.values()] + [adapt(v) for v in where_params]
        self.statements.append((f"UPDATE {table} SET {sets} WHERE {where}", params))

    def run(self, fetch: bool = False) -> list[tuple[Any, ...]]:
        if not self.statements:
            return []
        with _cursor() as cur:
            if connection.vendor == "postgresql":
                text = ";\n".join(s for s, _ in self.statements)
                cur.execute(text, [p for _, params in self.statements for p in params])
                return list(cur.fetchall()) if fetch else []
            rows: list[tuple[Any, ...]] = []
            for i, (text, params) in enumerate(self.statements):
                cur.execute(text, params)
                if fetch and i == 0:
                    rows = list(cur.fetchall())
            return rows
