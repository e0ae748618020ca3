"""What one Flowmend step costs, in-process and without a broker.

A chain of noop steps is started with the broker send stubbed out, then its first
attempt is executed in this thread with an unlimited inline slice, so
``executor.execute`` runs the whole chain here: claim, run the noop, ``store.apply``
(one transaction that closes the attempt, decides, and claims the next one), and so on.
Every SQL statement is timed with a Django ``execute_wrapper``; ``engine.decide`` and
``store.write_checkpoint`` are wrapped (in this process only) to time them.

Called by ``bench/run.py`` (its ``cost`` part) after ``django.setup()``.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import json
import pstats
import re
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_TABLE = re.compile(r'(?:FROM|INTO|UPDATE)\s+"?(\w+)"?', re.I)


def statement_kind(sql: str) -> str:
    head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "?"
    m = _TABLE.search(sql)
    table = m.group(1) if m else ""
    extra = " FOR UPDATE" if head == "SELECT" and "FOR UPDATE" in sql.upper() else ""
    return f"{head} {table}{extra}".strip()


class Recorder:
    """Times SQL statements and a few named phases."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, float, str]] = []  # (kind, seconds, phase)
        self.phase = "other"
        self.phase_time: Counter[str] = Counter()
        self.step_marks: list[float] = []

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        t = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.statements.append((statement_kind(sql), time.perf_counter() - t, self.phase))

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        before, self.phase = self.phase, phase
        t = time.perf_counter()
        try:
            yield
        finally:
            self.phase_time[phase] += time.perf_counter() - t
            self.phase = before


@contextlib.contextmanager
def instrumented(rec: Recorder) -> Iterator[None]:
    from workflows import actors, engine, executor, store

    saved = (engine.decide, store.write_checkpoint, executor.apply, actors.dispatch_attempt)

    def decide(*a: Any, **k: Any) -> Any:
        with rec.timed("decide"):
            return saved[0](*a, **k)

    def write_checkpoint(*a: Any, **k: Any) -> Any:
        with rec.timed("checkpoint"):
            return saved[1](*a, **k)

    def apply(*a: Any, **k: Any) -> Any:
        try:
            return saved[2](*a, **k)
        finally:
            rec.step_marks.append(time.perf_counter())

    engine.decide, store.write_checkpoint, executor.apply = decide, write_checkpoint, apply
    try:
        yield
    finally:
        engine.decide, store.write_checkpoint, executor.apply, actors.dispatch_attempt = saved


def _workflow(n: int, policy: str | None) -> str:
    name = f"bench-cost-{n}" + (f"-{policy}" if policy else "")
    settings = f"settings: {{checkpoints: {{policy: {policy}}}}}\n" if policy else ""
    steps = "\n".join(f"  - {{name: s{i}, type: noop}}" for i in range(n))
    return f"name: {name}\n{settings}steps:\n{steps}\n", name


def run_chain(
    n: int, policy: str | None = None, profile: cProfile.Profile | None = None
) -> dict[str, Any]:
    from django.conf import settings
    from django.db import connection

    from workflows import actors, executor, services
    from workflows.models import Run, StepAttempt

    text, name = _workflow(n, policy)
    services.save_workflow(text)
    actors.dispatch_attempt = lambda *a, **k: None  # type: ignore[assignment]  # no broker here
    settings.FLOWMEND_INLINE_SLICE_SECONDS = 3600.0  # the whole chain inline, in this thread
    run = services.start_run(name)
    first = StepAttempt.objects.get(run=run, status="queued")
    rec = Recorder()
    connection.ensure_connection()
    real_commit = connection._commit

    def timed_commit(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return real_commit(*a, **k)
        finally:
            rec.statements.append(("COMMIT", time.perf_counter() - t, rec.phase))

    connection._commit = timed_commit  # type: ignore[method-assign]
    with instrumented(rec), connection.execute_wrapper(rec):
        t0 = time.perf_counter()
        cpu0 = time.thread_time()
        if profile is not None:
            profile.enable()
        executor.execute(first.pk)
        if profile is not None:
            profile.disable()
        wall = time.perf_counter() - t0
        cpu = time.thread_time() - cpu0
    del connection._commit  # back to the class's method
    run = Run.objects.select_related("definition").get(pk=run.pk)
    assert run.status == "succeeded", run.status

    marks = [t0, *rec.step_marks]
    per_step = [(b - a) * 1000 for a, b in zip(marks, marks[1:], strict=False)]
    k = max(1, n // 10)
    sql_s = sum(s for _, s, _ in rec.statements)
    commit_s = sum(s for kind, s, _ in rec.statements if kind == "COMMIT")
    kinds = Counter(kind for kind, _, _ in rec.statements if kind != "COMMIT")
    kind_time: Counter[str] = Counter()
    for kind, s, _ in rec.statements:
        kind_time[kind] += s
    sql_in = {
        phase: sum(s for _, s, p in rec.statements if p == phase)
        for phase in ("decide", "checkpoint")
    }
    return {
        "workflow": name,
        "checkpoint_policy": policy or "after-each-step (default)",
        "steps": n,
        "wall_ms_per_step": round(wall * 1000 / n, 3),
        # CPU this thread used (Django ORM, psycopg, JSON, engine): insensitive to machine load
        "cpu_ms_per_step": round(cpu * 1000 / n, 3),
        "first_tenth_ms_per_step": round(statistics.fmean(per_step[:k]), 3),
        "last_tenth_ms_per_step": round(statistics.fmean(per_step[-k:]), 3),
        "statements_per_step": round(sum(kinds.values()) / n, 2),
        "commits_per_step": round((len(rec.statements) - sum(kinds.values())) / n, 2),
        "db_ms_per_step": round(sql_s * 1000 / n, 3),
        "commit_ms_per_step": round(commit_s * 1000 / n, 3),
        "sql_ms_per_step": round((sql_s - commit_s) * 1000 / n, 3),
        "python_ms_per_step": round((wall - sql_s) * 1000 / n, 3),
        "decide_ms_per_step": round((rec.phase_time["decide"] - sql_in["decide"]) * 1000 / n, 3),
        "checkpoint_ms_per_step": round(rec.phase_time["checkpoint"] * 1000 / n, 3),
        "checkpoint_python_ms_per_step": round(
            (rec.phase_time["checkpoint"] - sql_in["checkpoint"]) * 1000 / n, 3
        ),
        "statements_by_kind": {kind: round(c / n, 2) for kind, c in kinds.most_common()},
        "sql_ms_per_step_by_kind": {
            kind: round(s * 1000 / n, 3) for kind, s in kind_time.most_common()
        },
        "final_state_json_bytes": len(json.dumps(run.state)),
        "definition_spec_json_bytes": len(json.dumps(run.definition.spec)),
        "definition_source_bytes": len(run.definition.source),
    }


def calibrate(rounds: int = 200) -> dict[str, float]:
    """Raw psycopg round trips from this process, right now (the machine may be busy)."""
    import os

    import psycopg

    dsn = os.environ["DATABASE_URL"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_calibrate (id int PRIMARY KEY, n bigint)")
        conn.execute("INSERT INTO bench_calibrate VALUES (1, 0) ON CONFLICT DO NOTHING")
    with psycopg.connect(dsn) as conn:
        t = time.perf_counter()
        for _ in range(rounds):
            conn.execute("SELECT 1").fetchone()
        select = (time.perf_counter() - t) / rounds
        conn.commit()
        t = time.perf_counter()
        for _ in range(rounds):
            conn.execute("UPDATE bench_calibrate SET n = n + 1 WHERE id = 1")
            conn.commit()
        update = (time.perf_counter() - t) / rounds
    return {"select_1_ms": round(select * 1000, 3), "update_commit_ms": round(update * 1000, 3)}


def measure(n: int, profile: bool = False, results_dir: Path | None = None) -> dict[str, Any]:
    run_chain(10)  # warm-up: imports, connection, spec cache, statement plans
    prof = cProfile.Profile() if profile else None
    calibration = calibrate()
    result = run_chain(n)
    result["calibration"] = calibration
    result["variants"] = {
        "critical-only checkpoints": run_chain(n, "critical-only"),
    }
    if prof is not None and results_dir is not None:
        run_chain(n, profile=prof)
        results_dir.mkdir(parents=True, exist_ok=True)
        pstats_file = results_dir / "profile.pstats"
        prof.dump_stats(pstats_file)
        text = io.StringIO()
        stats = pstats.Stats(prof, stream=text).strip_dirs()
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(30)
        (results_dir / "profile.txt").write_text(text.getvalue())
        result["profile_file"] = str(results_dir / "profile.txt")
        result["profile_top"] = _top(prof, 20)
    return result


def _top(prof: cProfile.Profile, count: int) -> list[dict[str, Any]]:
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{Path(file).name}:{line}:{func}",
                "calls": nc,
                "tottime_ms": round(tt * 1000, 2),
                "cumtime_ms": round(ct * 1000, 2),
            }
        )
    rows.sort(key=lambda r: r["tottime_ms"], reverse=True)
    return rows[:count]
