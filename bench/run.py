"""Flowmend speed bench: per-step latency, throughput, and the floor to compare them with.

    .venv/bin/python bench/run.py              # Redis, and RabbitMQ when reachable
    .venv/bin/python bench/run.py --quick      # smoke test, fewer steps and runs
    .venv/bin/python bench/run.py --broker redis --profile

Measures, with ONE worker process (8 threads) per measurement:

(a) per-step latency along a 200-step chain of noop steps (differences between
    consecutive StepAttempt.finished_at);
(b) throughput of 50 concurrent 20-step runs (steps / (last finish - first start));
(c) the floor: a bare Dramatiq chain (bench/floor.py) whose hops each do one
    PostgreSQL UPDATE + COMMIT and send the next hop, 200 hops;
plus, in-process and without a broker, the cost of one step: SQL statements, time in
the database, time in Python (and a cProfile summary with --profile).

Writes bench/results/latest.json. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent

if str(ROOT) not in sys.path:  # run as a script: make the bench package importable
    sys.path.insert(0, str(ROOT))

from bench.common import ensure_database, percentile  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/flowmend_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
THREADS = int(os.environ.get("BENCH_THREADS", "8"))
TARGET_RATIO = 2.0
TARGET_THROUGHPUT = 400.0

FULL = {"chain": 200, "runs": 50, "run_steps": 20, "hops": 200, "cost_steps": 100}
QUICK = {"chain": 40, "runs": 10, "run_steps": 10, "hops": 40, "cost_steps": 30}
WARMUP = {"chain": 20, "hops": 20}


# =========================================================================== helpers


def latency_summary(times: list[float]) -> dict[str, Any]:
    """Per-step figures (ms) from an ordered list of completion times (s)."""
    gaps = [(b - a) * 1000 for a, b in zip(times, times[1:], strict=False)]
    k = max(1, len(gaps) // 10)
    return {
        "samples": len(gaps),
        "median_ms": round(statistics.median(gaps), 3),
        "p95_ms": round(percentile(gaps, 95), 3),
        "mean_ms": round(statistics.fmean(gaps), 3),
        "max_ms": round(max(gaps), 3),
        "gaps_over_100ms": sum(1 for g in gaps if g > 100),
        "first_tenth_median_ms": round(statistics.median(gaps[:k]), 3),
        "last_tenth_median_ms": round(statistics.median(gaps[-k:]), 3),
        "total_s": round(times[-1] - times[0], 3),
    }


def rabbitmq_reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 1):
            return True
    except OSError:
        return False


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": mem_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    env.setdefault("SECRET_KEY", "flowmend-bench-not-secret")
    env.setdefault("FLOWMEND_PYTHON_MODULES", "examples")
    # the same idle-poll cap for Flowmend's workers and the floor's (see rundramatiq)
    env.setdefault("dramatiq_worker_timeout", "100")
    env["DEBUG"] = "0"
    env["LOG_LEVEL"] = env.get("BENCH_LOG_LEVEL", "WARNING")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
    )


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# =========================================================================== orchestrator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer steps and runs (smoke test)")
    parser.add_argument(
        "--broker",
        choices=("redis", "rabbitmq", "both"),
        default="both",
        help="which broker(s) to measure; 'both' skips RabbitMQ when it is unreachable",
    )
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the in-process step-cost run"
    )
    parser.add_argument("--out", default=str(RESULTS / "latest.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)  # redis | rabbitmq | cost
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args)

    sizes = QUICK if args.quick else FULL
    env = base_env()
    redis_url = os.environ.get("BROKER_URL", DEFAULT_REDIS_URL)
    rabbit_url = os.environ.get("RABBITMQ_URL", DEFAULT_RABBITMQ_URL)
    brokers: dict[str, str] = {}
    if args.broker in ("redis", "both"):
        brokers["redis"] = redis_url
    if args.broker == "rabbitmq" or (args.broker == "both" and rabbitmq_reachable(rabbit_url)):
        brokers["rabbitmq"] = rabbit_url
    elif args.broker == "both":
        print(f"RabbitMQ not reachable at {rabbit_url}: measuring Redis only")

    started = time.monotonic()
    ensure_database(env["DATABASE_URL"])
    migrate(env)
    RESULTS.mkdir(parents=True, exist_ok=True)

    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "sizes": sizes,
        "worker": {"processes": 1, "threads": THREADS},
        "database_url": env["DATABASE_URL"],
        "machine": machine(),
        "targets": {
            "latency_ratio_max": TARGET_RATIO,
            "throughput_min_steps_per_s": TARGET_THROUGHPUT,
        },
        "inline_slice_s": float(env.get("FLOWMEND_INLINE_SLICE_SECONDS", "0.5")),
        "brokers": {},
    }
    jobs = [(name, url) for name, url in brokers.items()] + [("cost", redis_url)]
    for name, url in jobs:
        print(f"\n=== {name} ===", flush=True)
        load_before = os.getloadavg()[0]
        results_part = run_child(name, url, env, args)
        results_part["load_average_1m"] = {"before": load_before, "after": os.getloadavg()[0]}
        if name == "cost":
            results["step_cost"] = results_part
        else:
            results["brokers"][name] = results_part
    results["elapsed_s"] = round(time.monotonic() - started, 1)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_summary(results)
    print(f"\nwrote {out} ({results['elapsed_s']} s)")
    return 0


def run_child(name: str, url: str, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    child_env = dict(env, BROKER_URL=url)
    fd, path = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".json", dir=RESULTS)
    os.close(fd)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--child-out", path]
    if args.quick:
        cmd.append("--quick")
    if args.profile:
        cmd.append("--profile")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env)
    try:
        rc = proc.wait()
        if rc != 0:
            raise SystemExit(f"bench part {name!r} failed (exit {rc})")
        return json.loads(Path(path).read_text())
    finally:
        if proc.poll() is None:  # we were interrupted: let the child clean up its workers
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        with contextlib.suppress(OSError):
            os.unlink(path)


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def print_summary(results: dict[str, Any]) -> None:
    print("\n" + "=" * 78)
    print(
        f"Flowmend bench  ({'quick' if results['quick'] else 'full'}; 1 worker process x {THREADS} threads)"
    )
    print(f"machine: {results['machine']['cpus']} CPUs, {results['machine']['cpu']}")
    for name, r in results["brokers"].items():
        a, b, c = r["chain"], r["throughput"], r["floor"]
        load = r["load_average_1m"]
        print(f"\n[{name}]  (1-min load average {load['before']:.1f} -> {load['after']:.1f})")
        print(
            f"  (a) chain of {a['steps']} noop steps: median {a['median_ms']:.2f} ms, "
            f"p95 {a['p95_ms']:.2f} ms per step "
            f"(first tenth {a['first_tenth_median_ms']:.2f}, last tenth {a['last_tenth_median_ms']:.2f})"
        )
        print(
            f"  (b) {b['runs']} x {b['steps_per_run']}-step runs: {b['steps_per_s']:.0f} steps/s "
            f"({b['steps']} steps in {b['wall_s']:.2f} s; starting them took {b['submit_s']:.2f} s)"
        )
        print(
            f"  (c) floor, {c['hops']} hops: median {c['median_ms']:.2f} ms, p95 {c['p95_ms']:.2f} ms per hop"
        )
        print(
            f"  ratio Flowmend/floor: median {r['ratio_median']:.2f}x, p95 {r['ratio_p95']:.2f}x "
            f"(target <= {TARGET_RATIO:g}x: {verdict(r['latency_target_met'])})"
        )
        print(
            f"  throughput target >= {TARGET_THROUGHPUT:g} steps/s: {verdict(r['throughput_target_met'])}"
        )
    cost = results.get("step_cost")
    if cost:
        print(f"\n[step cost, in-process, no broker: {cost['steps']}-step chain run inline]")
        print(
            f"  {cost['statements_per_step']:.1f} SQL statements + {cost['commits_per_step']:.0f} COMMIT per step; "
            f"{cost['wall_ms_per_step']:.2f} ms/step = {cost['sql_ms_per_step']:.2f} ms statements "
            f"+ {cost['commit_ms_per_step']:.2f} ms COMMIT + {cost['python_ms_per_step']:.2f} ms Python"
        )
        print(f"  CPU time of the worker thread: {cost['cpu_ms_per_step']:.2f} ms/step")
        print(
            f"  of the Python: engine.decide {cost['decide_ms_per_step']:.2f} ms, "
            f"checkpoint (canonical JSON, sha256, zlib) {cost['checkpoint_python_ms_per_step']:.2f} ms"
        )
        cal = cost["calibration"]
        print(
            f"  raw psycopg meanwhile: SELECT 1 {cal['select_1_ms']:.2f} ms, "
            f"UPDATE+COMMIT {cal['update_commit_ms']:.2f} ms"
        )
        crit = cost["variants"]["critical-only checkpoints"]
        print(
            f"  with checkpoints critical-only: {crit['wall_ms_per_step']:.2f} ms/step, "
            f"{crit['statements_per_step']:.1f} statements/step"
        )
        print(
            f"  first tenth {cost['first_tenth_ms_per_step']:.2f} ms/step, "
            f"last tenth {cost['last_tenth_ms_per_step']:.2f} ms/step"
        )
        for kind, n in cost["statements_by_kind"].items():
            ms = cost["sql_ms_per_step_by_kind"].get(kind, 0.0)
            print(f"    {n:5.2f}/step {ms:6.2f} ms  {kind}")
        if cost.get("profile_top"):
            print(f"  cProfile: {cost['profile_file']}")


# =========================================================================== children


def child_main(args: argparse.Namespace) -> int:
    """One broker (or the in-process cost run) in its own process: its own Django, its own broker."""

    logging.getLogger("pika").setLevel(logging.ERROR)  # purging undeclared queues is fine
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flowmend.settings")
    import django

    django.setup()
    sizes = QUICK if args.quick else FULL
    if args.child == "cost":
        from bench import stepcost

        result = stepcost.measure(sizes["cost_steps"], profile=args.profile, results_dir=RESULTS)
    else:
        result = BrokerBench(args.child, sizes).run()
    Path(args.child_out).write_text(json.dumps(result))
    return 0


class BrokerBench:
    def __init__(self, name: str, sizes: dict[str, int]) -> None:
        import dramatiq

        self.name = name
        self.sizes = sizes
        self.url = os.environ["BROKER_URL"]
        self.dsn = os.environ["DATABASE_URL"]
        self.env = base_env()
        self.env["BROKER_URL"] = self.url
        self.broker = dramatiq.get_broker()  # Flowmend's, from flowmend.broker
        self.workers: list[subprocess.Popen[bytes]] = []

    # ------------------------------------------------------------------ plumbing

    def flush(self) -> None:
        if self.name == "redis":
            import redis

            redis.Redis.from_url(self.url).flushdb()
        else:
            self.broker.flush_all()
            from bench import floor

            floor.broker.flush_all()

    def start_worker(self, module: str, queue: str) -> subprocess.Popen[bytes]:
        log = RESULTS / f"worker-{self.name}-{module.rsplit('.', 1)[-1]}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dramatiq",
                    module,
                    "--processes",
                    "1",
                    "--threads",
                    str(THREADS),
                    "--queues",
                    queue,
                ],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as a whole
            )
        self.workers.append(proc)
        return proc

    def stop_workers(self) -> None:
        while self.workers:
            stop_process(self.workers.pop())

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        finally:
            self.stop_workers()

    def _run(self) -> dict[str, Any]:
        import dramatiq

        from bench import floor  # sets the global broker; Flowmend's actors keep theirs

        dramatiq.set_broker(self.broker)
        floor.create_table(self.dsn)
        self.save_workflows()

        chain = self.measured(self.chain, "flowmend")
        print(
            f"  (a) chain: median {chain['median_ms']:.2f} ms, p95 {chain['p95_ms']:.2f} ms",
            flush=True,
        )
        throughput = self.measured(self.throughput, "flowmend")
        print(f"  (b) throughput: {throughput['steps_per_s']:.0f} steps/s", flush=True)
        floor_r = self.measured(self.floor, "floor")
        print(
            f"  (c) floor: median {floor_r['median_ms']:.2f} ms, p95 {floor_r['p95_ms']:.2f} ms",
            flush=True,
        )
        ratio_median = chain["median_ms"] / floor_r["median_ms"]
        ratio_p95 = chain["p95_ms"] / floor_r["p95_ms"]
        return {
            "broker_url": self.url,
            "chain": chain,
            "throughput": throughput,
            "floor": floor_r,
            "ratio_median": round(ratio_median, 3),
            "ratio_p95": round(ratio_p95, 3),
            "latency_target_met": ratio_median <= TARGET_RATIO,
            "throughput_target_met": throughput["steps_per_s"] >= TARGET_THROUGHPUT,
        }

    def measured(self, fn: Any, which: str) -> dict[str, Any]:
        """Flush, start a fresh worker, warm it up, measure, stop it."""
        self.flush()
        if which == "flowmend":
            self.start_worker("flowmend.dramatiq_entry", "flowmend")
            self.chain_run(WARMUP["chain"], timeout=60)  # also waits for the worker to boot
        else:
            self.start_worker("bench.floor", "flowmend-floor")
            self.floor_chain(WARMUP["hops"], timeout=60)
        try:
            return fn()
        finally:
            self.stop_workers()

    # ------------------------------------------------------------------ Flowmend

    def save_workflows(self) -> None:
        from workflows import services

        for n in {self.sizes["chain"], self.sizes["run_steps"], WARMUP["chain"]}:
            steps = "\n".join(f"  - {{name: s{i}, type: noop}}" for i in range(n))
            services.save_workflow(f"name: bench-chain-{n}\nsteps:\n{steps}\n")

    def wait_runs(self, run_ids: list[Any], timeout: float) -> None:
        from workflows.models import TERMINAL_RUN_STATUSES, Run

        deadline = time.monotonic() + timeout
        while True:
            statuses = list(Run.objects.filter(pk__in=run_ids).values_list("status", flat=True))
            if all(s in TERMINAL_RUN_STATUSES for s in statuses):
                bad = [s for s in statuses if s != "succeeded"]
                if bad:
                    raise RuntimeError(f"bench runs ended {bad}")
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"runs not finished after {timeout:.0f} s: {sorted(set(statuses))}"
                )
            time.sleep(0.05)

    def chain_run(self, steps: int, timeout: float) -> list[float]:
        from workflows import services
        from workflows.models import StepAttempt

        run = services.start_run(f"bench-chain-{steps}")
        self.wait_runs([run.pk], timeout)
        finished = (
            StepAttempt.objects.filter(run=run)
            .order_by("finished_at")
            .values_list("finished_at", flat=True)
        )
        return [t.timestamp() for t in finished]

    def chain(self) -> dict[str, Any]:
        n = self.sizes["chain"]
        times = self.chain_run(n, timeout=120)
        assert len(times) == n, (len(times), n)
        return {"steps": n, **latency_summary(times)}

    def throughput(self) -> dict[str, Any]:
        from django.db.models import Max, Min

        from workflows import services
        from workflows.models import Run, StepAttempt

        runs, per = self.sizes["runs"], self.sizes["run_steps"]
        t0 = time.monotonic()
        ids = [services.start_run(f"bench-chain-{per}").pk for _ in range(runs)]
        submit = time.monotonic() - t0
        self.wait_runs(ids, timeout=120)
        span = Run.objects.filter(pk__in=ids).aggregate(
            first=Min("started_at"), last=Max("finished_at")
        )
        steps = StepAttempt.objects.filter(run_id__in=ids, status="succeeded").count()
        wall = (span["last"] - span["first"]).total_seconds()
        return {
            "runs": runs,
            "steps_per_run": per,
            "steps": steps,
            "wall_s": round(wall, 3),
            "submit_s": round(submit, 3),
            "steps_per_s": round(steps / wall, 1),
        }

    # ------------------------------------------------------------------ floor

    def floor_chain(self, hops: int, timeout: float) -> list[float]:
        import psycopg

        from bench import floor

        chain_id = floor.new_chain(self.dsn)
        floor.hop.send(chain_id, hops)
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while True:
                row = conn.execute(
                    f"SELECT hops FROM {floor.TABLE} WHERE id = %s",
                    (chain_id,),  # noqa: S608
                ).fetchone()
                times = list(row[0]) if row else []
                if len(times) >= hops:
                    return times
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"floor chain made {len(times)} of {hops} hops in {timeout:.0f} s"
                    )
                time.sleep(0.05)

    def floor(self) -> dict[str, Any]:
        n = self.sizes["hops"]
        times = self.floor_chain(n, timeout=120)
        return {"hops": n, **latency_summary(times)}


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background
        signal.signal(signal.SIGINT, _interrupt)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
