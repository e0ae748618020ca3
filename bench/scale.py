"""Flowmend scale bench: console pages' server time over 100k runs and ~1M step attempts.

    .venv/bin/python bench/scale.py            # 100k runs (seeded once), 50 requests per page
    .venv/bin/python bench/scale.py --quick    # 10k runs in <db>_quick, 10 requests per page

DATABASE_URL defaults to postgres://postgres@127.0.0.1:5432/flowmend_scale; the database is
created if missing (via the ``postgres`` db), migrated, and seeded with ``manage.py
seeddemo`` only when it holds fewer runs than asked for. Pages are requested in-process
with Django's test Client as a logged-in superuser (middleware, session, templates and
queries included; no network), median and p95 against the 150 ms target. For every page
one more request runs under CaptureQueriesContext: its query count, time in the database
and slowest statements (with EXPLAIN for the slowest) go to bench/results/scale.json.
The monitoring renderers and stats queries that pages call are timed the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

if str(ROOT) not in sys.path:  # run as a script: make the bench package importable
    sys.path.insert(0, str(ROOT))

from bench.common import ensure_database  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TARGET_MS = 150.0
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/flowmend_scale"


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("SECRET_KEY", "scale-bench-not-secret")
    os.environ.setdefault("DEBUG", "0")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flowmend.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def seed(runs: int, per_run: int) -> dict[str, int]:
    from django.core.management import call_command

    from workflows.models import Run, StepAttempt

    call_command("migrate", verbosity=0)
    have = Run.objects.count()
    if have < runs * 0.95:
        call_command("seeddemo", runs=runs - have, attempts_per_run=per_run)
    return {"runs": Run.objects.count(), "attempts": StepAttempt.objects.count()}


def timed(fn: Any, reps: int) -> dict[str, Any]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _ in range(2):
        fn()  # warm caches (templates, specs, connection)
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    with CaptureQueriesContext(connection) as ctx:
        fn()
    queries = sorted(ctx.captured_queries, key=lambda q: -float(q["time"]))
    return {
        "median_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.95))], 2),
        "max_ms": round(samples[-1], 2),
        "queries": len(queries),
        "db_ms": round(sum(float(q["time"]) for q in queries) * 1000, 2),
        "slowest": [
            {"ms": round(float(q["time"]) * 1000, 2), "sql": q["sql"][:400]} for q in queries[:3]
        ],
    }


# Indexes this bench proposes (not in the models): created for a second measurement with
# --proposed-indexes, dropped afterwards. See docs/performance.md, "Scale".
PROPOSED_INDEXES = {
    "bench_attempt_finished": "workflows_stepattempt (finished_at) WHERE finished_at IS NOT NULL",
    "bench_run_finished": "workflows_run (finished_at) INCLUDE (status, id) WHERE finished_at IS NOT NULL",
    "bench_error_fp_created": "workflows_errorrecord (fingerprint, created_at DESC) INCLUDE (run_id, id)",
    "bench_error_created": "workflows_errorrecord (created_at)",
}


def proposed_indexes(create: bool) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for name, target in PROPOSED_INDEXES.items():
            if create:
                cursor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {target}")
            else:
                cursor.execute(f"DROP INDEX IF EXISTS {name}")
        if create:
            for table in ("workflows_run", "workflows_stepattempt", "workflows_errorrecord"):
                cursor.execute(f"VACUUM ANALYZE {table}")


def explain(sql: str) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN ANALYZE " + sql)
        return "\n".join(row[0] for row in cursor.fetchall())


def pick_run() -> Any:
    from workflows.models import Run

    candidates = Run.objects.filter(workflow_name="demo-wide", status="succeeded").order_by(
        "-created_at"
    )
    for run in candidates[:200]:
        if len(run.state.get("steps", {})) == 20 and run.attempts.count() > 20:
            return run  # 20 steps, with at least one retry
    return candidates.first()


def measure(reps: int) -> dict[str, Any]:
    from django.contrib.auth import get_user_model
    from django.test import Client

    from monitoring import graph, stats

    user, _ = get_user_model().objects.get_or_create(
        username="scale-bench", defaults={"is_superuser": True, "is_staff": True}
    )
    client = Client()
    client.force_login(user)
    run = pick_run()
    pages = {
        "/runs/": "/runs/",
        "/runs/?status=failed": "/runs/?status=failed",
        "/runs/<id>/ (20 steps)": f"/runs/{run.pk}/",
        "/ (overview)": "/",
        "/errors/": "/errors/",
    }
    out: dict[str, Any] = {"pages": {}, "functions": {}, "run": str(run.pk)}

    def get(path: str) -> None:
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)

    for label, path in pages.items():
        out["pages"][label] = timed(lambda p=path: get(p), reps)
        report(label, out["pages"][label])
    functions = {
        "graph.workflow_graph_svg": lambda: graph.workflow_graph_svg(run),
        "graph.gantt_svg": lambda: graph.gantt_svg(run),
        "graph.progress": lambda: graph.progress(run),
        "stats.runs_by_status": stats.runs_by_status,
        "stats.throughput_per_minute": stats.throughput_per_minute,
        "stats.failure_rate_per_minute": stats.failure_rate_per_minute,
        "stats.error_handling_success_rate": stats.error_handling_success_rate,
        "stats.stalled_runs": stats.stalled_runs,
        "stats.failing_steps": stats.failing_steps,
        "stats.error_groups": stats.error_groups,
        "stats.workflow_stats": lambda: stats.workflow_stats("demo-pipeline"),
    }
    for label, fn in functions.items():
        out["functions"][label] = timed(fn, max(reps // 5, 5))
        report(label, out["functions"][label])
    return out


def report(label: str, r: dict[str, Any]) -> None:
    verdict = "ok" if r["p95_ms"] <= TARGET_MS else "OVER"
    print(
        f"{label:40s} median {r['median_ms']:8.1f} ms  p95 {r['p95_ms']:8.1f} ms  "
        f"{r['queries']:3d} queries {r['db_ms']:7.1f} ms in db  [{verdict}]"
    )
    if r["p95_ms"] > TARGET_MS and r["slowest"]:
        print(f"    slowest query ({r['slowest'][0]['ms']} ms): {r['slowest'][0]['sql'][:300]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k runs, 10 requests per page")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument(
        "--explain",
        action="store_true",
        help="EXPLAIN ANALYZE the slowest query of pages over target",
    )
    parser.add_argument(
        "--proposed-indexes",
        action="store_true",
        help="measure again with PROPOSED_INDEXES (then drop them)",
    )
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL") or DEFAULT_URL + ("_quick" if args.quick else "")
    runs = args.runs or (10_000 if args.quick else 100_000)
    reps = args.reps or (10 if args.quick else 50)
    ensure_database(url)
    setup_django(url)
    started = time.monotonic()
    sizes = seed(runs, 10)
    print(
        f"data: {sizes['runs']} runs, {sizes['attempts']} step attempts (ready in {time.monotonic() - started:.0f}s)"
    )
    proposed_indexes(create=False)
    result = {"target_ms": TARGET_MS, "reps": reps, "data": sizes, **measure(reps)}
    if args.proposed_indexes:
        print("--- again, with the proposed indexes:")
        proposed_indexes(create=True)
        try:
            result["with_proposed_indexes"] = {"indexes": PROPOSED_INDEXES, **measure(reps)}
        finally:
            proposed_indexes(create=False)
    if args.explain:
        for section in ("pages", "functions"):
            for label, r in result[section].items():
                if r["p95_ms"] > TARGET_MS and r["slowest"]:
                    r["explain"] = explain(r["_slowest_sql"])
                    print(f"--- {label}\n{r['explain']}")
    for part in (result, result.get("with_proposed_indexes", {})):
        for section in ("pages", "functions"):
            for r in part.get(section, {}).values():
                r.pop("_slowest_sql", None)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("scale-quick.json" if args.quick else "scale.json")
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
