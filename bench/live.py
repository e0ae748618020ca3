"""Flowmend live bench: do 50 open dashboards keep up with 500 transitions per second?

    .venv/bin/python bench/live.py            # 20 s of load
    .venv/bin/python bench/live.py --quick    # 5 s of load
    .venv/bin/python bench/live.py --rate 500 --generators 3 --seconds 20

Sets up (like bench/run.py) DATABASE_URL (default .../flowmend_bench_live, created and
migrated; run tables truncated), REDIS_URL (channel layer, default db 8, flushed) and
BROKER_URL (default db 7, flushed; nothing consumes it: the generators claim attempts
themselves). Then:

- daphne in a child process (``--child daphne``: daphne's own CLI, with the consumers'
  ``render_update``/``send`` wrapped to count renders, render time and frames; the
  counters go to a JSON file four times a second);
- 100 runs of noop chains: 10 "watched" 300-step runs and 90 short 20-step runs that are
  replaced by a new run when they finish;
- 50 websocket clients in this process (a minimal RFC 6455 client on asyncio streams):
  25 on ``ws/dashboard/?page=overview``, 15 on ``ws/dashboard/?page=runs``, 10 on
  ``ws/runs/<watched run>/?after=SEQ``, each with a superuser's session cookie and an
  Origin header;
- ``--generators`` child processes (``--child gen``) that apply real engine events: the
  executor's path (``store.claim``, ``executor.run_attempt``, ``store.apply`` with
  ``AttemptSucceeded`` and ``claim_for`` as ``executor.execute`` does; ``services.start_run``
  for the replacement runs), paced to ``--rate`` transitions/s in total. A transition is
  one committed ``store.apply`` or ``start_run`` (each calls the live listener once).
  Each logs its commit times, and for the watched runs (run id, event seq, commit time).
  The flusher's ``_send_all`` is wrapped in the generators to count group messages.

Measured: achieved transition rate; per client frames/s and the longest gap between
frames while the load runs; run-page lag (commit of seq N -> first frame carrying an
event with seq >= N); catch-up after the load stops (last commit -> the frame after
which the client shows the final state: last seq, run statuses, status counts);
CPU of daphne, of the generators and of the machine; daphne's render counts and time.
Writes bench/results/live.json. See docs/performance.md, "Live updates".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import json
import logging
import os
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

if str(ROOT) not in sys.path:  # run as a script: make the bench package importable
    sys.path.insert(0, str(ROOT))

from bench.common import ensure_database, percentile  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/flowmend_bench_live"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/8"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/7"

CLIENTS = {"overview": 25, "runs": 15, "run": 10}
WATCHED_RUNS = 10
SHORT_RUNS = 90
LONG_STEPS_MIN = 30  # watched runs: enough steps for the whole load (see long_steps)
SHORT_STEPS = 20
LAG_P95_TARGET_S = 1.0
CATCH_UP_TARGET_S = 2.0
TAIL_S = 6.0  # how long the clients keep listening after the load stops
WORKER = "bench-live"


# =========================================================================== helpers


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    env.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    env.setdefault("BROKER_URL", DEFAULT_BROKER_URL)
    env.setdefault("SECRET_KEY", "flowmend-bench-live-not-secret")
    env.setdefault("FLOWMEND_PYTHON_MODULES", "examples")
    env["DEBUG"] = "0"
    env["LOG_LEVEL"] = env.get("BENCH_LOG_LEVEL", "WARNING")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def setup_django(env: dict[str, str]) -> None:
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "BROKER_URL")})
    for key in ("SECRET_KEY", "FLOWMEND_PYTHON_MODULES", "DEBUG", "LOG_LEVEL"):
        os.environ[key] = env[key]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flowmend.settings")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (s), from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


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


# =========================================================================== websocket client


class WebSocket:
    """Just enough RFC 6455 for a listening client: handshake, read messages, answer pings."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, path: str, headers: dict[str, str]) -> WebSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**24)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            writer.close()
            raise ConnectionError(f"{path}: handshake refused: {status.decode(errors='replace')}")
        return cls(reader, writer)

    async def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)
        await self.writer.drain()

    async def recv(self) -> str | None:
        """The next text message; None when the server closes."""
        parts: list[bytes] = []
        while True:
            b0, b1 = await self.reader.readexactly(2)
            fin, opcode, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            mask = await self.reader.readexactly(4) if b1 & 0x80 else None
            data = await self.reader.readexactly(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if opcode == 0x9:
                await self._send(0xA, data)
                continue
            if opcode == 0xA:
                continue
            if opcode == 0x8:
                return None
            parts.append(data)
            if fin:
                return b"".join(parts).decode("utf-8", errors="replace")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._send(0x8, struct.pack("!H", 1000))
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


# =========================================================================== frame parsing

EVENT_SEQ = re.compile(r'<tr id="event-(\d+)"')
STATUS_COUNT = re.compile(
    r'<span class="badge status-([\w-]+)">[^<]*</span> <strong>(\d+)</strong>'
)
RUN_ROW = re.compile(r'<tr id="run-row-([0-9a-f-]+)".*?badge status-([\w-]+)', re.S)


def parse_frame(kind: str, text: str) -> Any:
    if kind == "run":
        seqs = [int(s) for s in EVENT_SEQ.findall(text)]
        return max(seqs) if seqs else None
    if kind == "overview":
        counts = {s: int(n) for s, n in STATUS_COUNT.findall(text)}
        return counts or None
    rows = dict(RUN_ROW.findall(text))
    return rows or None


class Client:
    def __init__(self, index: int, kind: str, path: str, run_id: str | None = None) -> None:
        self.index = index
        self.kind = kind
        self.path = path
        self.run_id = run_id
        self.frames: list[tuple[float, int, Any]] = []  # (time, bytes, parsed)
        self.error: str | None = None
        self.ws: WebSocket | None = None
        self.task: asyncio.Task[None] | None = None

    async def listen(self) -> None:
        assert self.ws is not None
        try:
            while True:
                text = await self.ws.recv()
                if text is None:
                    self.error = self.error or "closed by server"
                    return
                self.frames.append((time.time(), len(text), parse_frame(self.kind, text)))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"


# =========================================================================== orchestrator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="5 s of load instead of 20 s")
    parser.add_argument("--rate", type=float, default=500.0, help="transitions/s, in total")
    parser.add_argument("--seconds", type=float, default=None, help="load duration")
    parser.add_argument("--generators", type=int, default=3, help="generator processes")
    parser.add_argument("--out", default=str(RESULTS / "live.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)  # daphne | gen
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "daphne":
        return daphne_main(args)
    if args.child == "gen":
        return generator_main(args)

    seconds = args.seconds or (5.0 if args.quick else 20.0)
    started = time.monotonic()
    env = base_env()
    ensure_database(env["DATABASE_URL"])
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    import redis

    for url in (env["REDIS_URL"], env["BROKER_URL"]):
        redis.Redis.from_url(url).flushdb()
    setup_django(env)
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="live-", dir=RESULTS))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        result = Bench(args, env, seconds, work, procs).run()
    finally:
        for proc in procs:
            stop_process(proc)
        for url in (env["REDIS_URL"], env["BROKER_URL"]):
            with contextlib.suppress(Exception):
                redis.Redis.from_url(url).flushdb()
        for f in work.iterdir():
            with contextlib.suppress(OSError):
                f.unlink()
        with contextlib.suppress(OSError):
            work.rmdir()
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_summary(result)
    print(f"\nwrote {out} ({result['elapsed_s']} s)")
    return 0


class Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        env: dict[str, str],
        seconds: float,
        work: Path,
        procs: list[subprocess.Popen[bytes]],
    ) -> None:
        self.args = args
        self.env = env
        self.seconds = seconds
        self.work = work
        self.procs = procs

    # ------------------------------------------------------------------ setup

    def prepare(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db import connection
        from django.http import QueryDict
        from django.test import Client as DjangoClient

        from monitoring import run_filters
        from workflows import services

        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE workflows_run CASCADE")
        self.long_steps = max(
            LONG_STEPS_MIN,
            int(self.args.rate / (WATCHED_RUNS + SHORT_RUNS) * self.seconds * 1.2) + 5,
        )
        for name, n in (
            ("bench-live-long", self.long_steps),
            ("bench-live-short", SHORT_STEPS),
        ):
            steps = "\n".join(f"  - {{name: s{i}, type: noop}}" for i in range(n))
            services.save_workflow(f"name: {name}\nsteps:\n{steps}\n")
        user, _ = get_user_model().objects.get_or_create(
            username="bench-live", defaults={"is_superuser": True, "is_staff": True}
        )
        if not user.is_superuser:
            user.is_superuser = user.is_staff = True
            user.save()
        client = DjangoClient()
        client.force_login(user)
        self.session = client.cookies["sessionid"].value
        # short runs first: the watched ones are the newest, at the top of the runs list
        self.short = [str(services.start_run("bench-live-short").pk) for _ in range(SHORT_RUNS)]
        self.watched = [str(services.start_run("bench-live-long").pk) for _ in range(WATCHED_RUNS)]
        runs, _ = run_filters.parse(QueryDict("")).page()
        self.visible = [str(r.pk) for r in runs]

    def start_daphne(self) -> None:
        self.port = free_port()
        self.daphne_stats = self.work / "daphne-stats.json"
        log = (RESULTS / "live-daphne.log").open("wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                "daphne",
                "--port",
                str(self.port),
                "--child-out",
                str(self.daphne_stats),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        self.daphne = proc
        import httpx

        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise SystemExit("daphne exited; see bench/results/live-daphne.log")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/login/", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise SystemExit("daphne did not answer within 30 s")
            time.sleep(0.2)

    def start_generators(self) -> None:
        n = self.args.generators
        slots = [(r, "long", True) for r in self.watched] + [
            (r, "short", False) for r in self.short
        ]
        self.gen_outs = []
        for i in range(n):
            spec = {
                "runs": slots[i::n],
                "rate": self.args.rate / n,
                "duration": self.seconds,
                "go": str(self.work / "go"),
            }
            spec_path = self.work / f"gen-{i}.spec.json"
            spec_path.write_text(json.dumps(spec))
            out = self.work / f"gen-{i}.json"
            self.gen_outs.append(out)
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "--child",
                        "gen",
                        "--spec",
                        str(spec_path),
                        "--child-out",
                        str(out),
                    ],
                    cwd=ROOT,
                    env=self.env,
                    start_new_session=True,
                )
            )
        self.generators = self.procs[-n:]

    def clients(self) -> list[Client]:
        from workflows.models import Run

        seqs = dict(Run.objects.filter(pk__in=self.watched).values_list("pk", "event_seq"))
        out: list[Client] = []
        for _ in range(CLIENTS["overview"]):
            out.append(Client(len(out), "overview", "/ws/dashboard/?page=overview"))
        for _ in range(CLIENTS["runs"]):
            out.append(Client(len(out), "runs", "/ws/dashboard/?page=runs"))
        for i in range(CLIENTS["run"]):
            run_id = self.watched[i % len(self.watched)]
            seq = next(v for k, v in seqs.items() if str(k) == run_id)
            out.append(Client(len(out), "run", f"/ws/runs/{run_id}/?after={seq}", run_id))
        return out

    # ------------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        self.prepare()
        print(f"{len(self.short) + len(self.watched)} runs ready; starting daphne", flush=True)
        self.start_daphne()
        self.start_generators()
        clients = self.clients()
        timing = asyncio.run(self.listen(clients))
        gens = []
        for proc, out in zip(self.generators, self.gen_outs, strict=True):
            proc.wait(30)
            if proc.returncode != 0 or not out.exists():
                raise SystemExit(f"a generator failed (exit {proc.returncode})")
            gens.append(json.loads(out.read_text()))
        return self.analyse(clients, gens, timing)

    async def listen(self, clients: list[Client]) -> dict[str, Any]:
        headers = {
            "Cookie": f"sessionid={self.session}",
            "Origin": f"http://127.0.0.1:{self.port}",
        }
        for c in clients:
            c.ws = await WebSocket.connect(self.port, c.path, headers)
            c.task = asyncio.create_task(c.listen())
        # wait for the generators to be ready (Django set up, first attempts claimed)
        deadline = time.monotonic() + 60
        while not all(Path(str(o) + ".ready").exists() for o in self.gen_outs):
            if any(p.poll() is not None for p in self.generators):
                raise SystemExit("a generator exited before the start")
            if time.monotonic() > deadline:
                raise SystemExit("generators not ready within 60 s")
            await asyncio.sleep(0.05)
        sampler = asyncio.create_task(self.sample_backlog())
        await asyncio.sleep(1.0)  # first frames in, sockets idle
        start_at = time.time() + 0.5
        (self.work / "go").write_text(json.dumps({"start_at": start_at}))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        snap0 = self.snapshot()
        await asyncio.sleep(max(0.0, start_at + self.seconds - time.time()))
        snap1 = self.snapshot()
        await asyncio.sleep(TAIL_S)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        for c in clients:
            assert c.task is not None and c.ws is not None
            c.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await c.task
            await c.ws.close()
        return {
            "start_at": start_at,
            "end_at": start_at + self.seconds,
            "snap": [snap0, snap1],
            "backlog": self.backlog,
        }

    async def sample_backlog(self) -> None:
        """Messages waiting in Redis for daphne's process channel (channels-redis keeps all
        of a process's sockets in one sorted set, capacity 100 by default)."""
        import redis.asyncio as aioredis

        conn = aioredis.Redis.from_url(self.env["REDIS_URL"])
        self.backlog: list[tuple[float, int]] = []
        try:
            while True:
                total = 0
                async for key in conn.scan_iter(match="asgi*specific*", count=1000):
                    if not key.endswith(b"$inflight"):
                        total += await conn.zcard(key)
                self.backlog.append((time.time(), total))
                await asyncio.sleep(0.25)
        finally:
            await conn.aclose()

    def snapshot(self) -> dict[str, Any]:
        stats: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            stats = json.loads(self.daphne_stats.read_text())
        return {
            "t": time.time(),
            "daphne_cpu_s": proc_cpu_s(self.daphne.pid),
            "gen_cpu_s": [proc_cpu_s(p.pid) for p in self.generators],
            "machine": machine_cpu(),
            "daphne": stats,
        }

    # ------------------------------------------------------------------ figures

    def final_state(self) -> dict[str, Any]:
        from django.db.models import Count

        from workflows.models import Run

        counts = dict(Run.objects.order_by().values_list("status").annotate(n=Count("*")))
        seqs = {
            str(k): v
            for k, v in Run.objects.filter(pk__in=self.watched).values_list("pk", "event_seq")
        }
        statuses = {
            str(k): v
            for k, v in Run.objects.filter(pk__in=self.visible).values_list("pk", "status")
        }
        return {"counts": counts, "seqs": seqs, "visible_statuses": statuses}

    def analyse(
        self, clients: list[Client], gens: list[dict[str, Any]], timing: dict[str, Any]
    ) -> dict[str, Any]:
        start, end = timing["start_at"], timing["end_at"]
        final = self.final_state()
        commits = sorted(t for g in gens for t in g["commits"])
        in_window = [t for t in commits if start <= t <= end]
        last_commit = commits[-1] if commits else end
        per_second = [0] * int(self.seconds + 1)
        for t in in_window:
            per_second[min(len(per_second) - 1, int(t - start))] += 1
        achieved = len(in_window) / self.seconds
        watched_log = sorted((tuple(x) for g in gens for x in g["watched"]), key=lambda x: x[2])

        # per client: frames while loaded, longest gap, catch-up, lags
        per_kind: dict[str, dict[str, Any]] = {}
        lags: list[float] = []
        rows = []
        for c in clients:
            times = [f[0] for f in c.frames]
            loaded = [t for t in times if start <= t <= end]
            gaps = [b - a for a, b in zip([start, *loaded], [*loaded, end], strict=True)]
            expected = self.expected(c, final)
            conv_t, converged = self.convergence(c, expected)
            catch_up = None if not converged else max(0.0, conv_t - last_commit)
            if c.kind == "run":
                lags += self.run_lags(c, watched_log, end)
            rows.append(
                {
                    "client": c.index,
                    "kind": c.kind,
                    "frames": len(times),
                    "frames_per_s_loaded": round(len(loaded) / self.seconds, 2),
                    "longest_gap_loaded_s": round(max(gaps), 3),
                    "bytes": sum(f[1] for f in c.frames),
                    "converged": converged,
                    "catch_up_s": None if catch_up is None else round(catch_up, 3),
                    "error": c.error,
                }
            )
        for kind in CLIENTS:
            mine = [r for r in rows if r["kind"] == kind]
            rates = [r["frames_per_s_loaded"] for r in mine]
            ups = [r["catch_up_s"] for r in mine if r["catch_up_s"] is not None]
            per_kind[kind] = {
                "clients": len(mine),
                "frames_per_s_min": min(rates),
                "frames_per_s_median": statistics.median(rates),
                "frames_per_s_max": max(rates),
                "longest_gap_s": max(r["longest_gap_loaded_s"] for r in mine),
                "kb_per_s_per_client": round(
                    statistics.fmean(r["bytes"] for r in mine) / 1024 / (self.seconds + TAIL_S), 1
                ),
                "converged": sum(r["converged"] for r in mine),
                "catch_up_s_max": max(ups) if ups else None,
                "catch_up_s_median": statistics.median(ups) if ups else None,
                "errors": [r["error"] for r in mine if r["error"]],
            }
        s0, s1 = timing["snap"]
        wall = s1["t"] - s0["t"]
        busy = (s1["machine"][0] - s0["machine"][0]) / (s1["machine"][1] - s0["machine"][1])
        d0, d1 = s0["daphne"], s1["daphne"]
        renders = {}
        for key, (n1, secs1, wall1) in d1.get("renders", {}).items():
            n0, secs0, wall0 = d0.get("renders", {}).get(key, (0, 0.0, 0.0))
            n = n1 - n0
            renders[key] = {
                "renders_per_s": round(n / wall, 1),
                "render_ms_mean": round(1000 * (secs1 - secs0) / n, 2) if n else None,
                "render_and_send_ms_mean": round(1000 * (wall1 - wall0) / n, 2) if n else None,
                "sync_thread_share": round((secs1 - secs0) / wall, 3),
            }
        flush = {
            "flushes": sum(g["flusher"]["flushes"] for g in gens),
            "group_messages": sum(g["flusher"]["messages"] for g in gens),
            "send_s": round(sum(g["flusher"]["send_s"] for g in gens), 3),
        }
        flush["deliveries_dropped_over_capacity"] = sum(
            g["flusher"].get("over_capacity", 0) for g in gens
        )
        flush["group_messages_per_s"] = round(flush["group_messages"] / self.seconds, 1)
        flush["ms_per_flush"] = (
            round(1000 * flush["send_s"] / flush["flushes"], 2) if flush["flushes"] else None
        )
        lag_fig = {
            "samples": len(lags),
            "p50_s": round(percentile(lags, 50), 3) if lags else None,
            "p95_s": round(percentile(lags, 95), 3) if lags else None,
            "max_s": round(max(lags), 3) if lags else None,
        }
        all_rates = [r["frames_per_s_loaded"] for r in rows]
        ups_all = [r["catch_up_s"] for r in rows if r["catch_up_s"] is not None]
        criteria = {
            "rate_reached": achieved >= 0.95 * self.args.rate,
            "lag_p95_within_1s": bool(lags) and percentile(lags, 95) <= LAG_P95_TARGET_S,
            "all_converged_within_2s": all(r["converged"] for r in rows)
            and all(u <= CATCH_UP_TARGET_S for u in ups_all),
            "no_client_starved": min(all_rates) > 0,
        }
        from bench.run import machine

        return {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "quick": self.args.quick,
            "machine": machine(),
            "load": {
                "target_per_s": self.args.rate,
                "seconds": self.seconds,
                "generators": self.args.generators,
                "transitions": len(in_window),
                "achieved_per_s": round(achieved, 1),
                "per_second": per_second[: int(self.seconds)],
                "runs": {
                    "watched": WATCHED_RUNS,
                    "watched_steps": self.long_steps,
                    "short": SHORT_RUNS,
                    "short_steps": SHORT_STEPS,
                },
                "runs_started_during_load": sum(g["started"] for g in gens),
            },
            "clients": CLIENTS,
            "run_page_lag": lag_fig,
            "per_kind": per_kind,
            "catch_up_s_max": max(ups_all) if ups_all else None,
            "flusher": flush,
            "channel_backlog": {
                "max_loaded": max(
                    (n for t, n in timing["backlog"] if start <= t <= end), default=None
                ),
                "max": max((n for _, n in timing["backlog"]), default=None),
                "samples": [(round(t - start, 2), n) for t, n in timing["backlog"]],
            },
            "cpu": {
                "daphne_percent": round(100 * (s1["daphne_cpu_s"] - s0["daphne_cpu_s"]) / wall, 1),
                "generators_percent": [
                    round(100 * (b - a) / wall, 1)
                    for a, b in zip(s0["gen_cpu_s"], s1["gen_cpu_s"], strict=True)
                ],
                "machine_busy_percent": round(100 * busy, 1),
                "cpus": os.cpu_count(),
            },
            "daphne": {
                "renders": renders,
                "frames_sent_per_s": round((d1.get("frames", 0) - d0.get("frames", 0)) / wall, 1),
                "change_messages_per_s": round(
                    (d1.get("changes", 0) - d0.get("changes", 0)) / wall, 1
                ),
            },
            "criteria": criteria,
            "keeps_up": all(criteria.values()),
            "per_client": rows,
            "final": {"counts": final["counts"]},
        }

    def expected(self, c: Client, final: dict[str, Any]) -> Any:
        if c.kind == "run":
            return final["seqs"][c.run_id]
        if c.kind == "overview":
            return {k: v for k, v in final["counts"].items() if v}
        return final["visible_statuses"]

    def convergence(self, c: Client, expected: Any) -> tuple[float, bool]:
        """When the client's view last became the final state, and whether it is final."""
        state: Any = {} if c.kind == "runs" else None
        became = 0.0
        for t, _, parsed in c.frames:
            if parsed is None:
                continue
            before = state == expected if c.kind != "overview" else self._ov(state) == expected
            if c.kind == "run":
                state = max(state or 0, parsed)
            elif c.kind == "overview":
                state = parsed
            else:
                state = {**state, **parsed}
            now_ok = state == expected if c.kind != "overview" else self._ov(state) == expected
            if now_ok and not before:
                became = t
        ok = state == expected if c.kind != "overview" else self._ov(state) == expected
        return became, ok

    @staticmethod
    def _ov(state: dict[str, int] | None) -> dict[str, int] | None:
        return None if state is None else {k: v for k, v in state.items() if v}

    @staticmethod
    def run_lags(c: Client, log: list[tuple[str, int, float]], end: float) -> list[float]:
        times, maxes, top = [], [], 0
        for t, _, seq in c.frames:
            if seq is not None and seq > top:
                top = seq
                times.append(t)
                maxes.append(seq)
        lags = []
        for run_id, seq, committed in log:
            if run_id != c.run_id or committed > end:
                continue
            i = bisect.bisect_left(maxes, seq)
            lags.append(times[i] - committed if i < len(times) else float("inf"))
        return lags


def print_summary(r: dict[str, Any]) -> None:
    load, lag, cpu = r["load"], r["run_page_lag"], r["cpu"]
    crit = r["criteria"]

    def v(ok: bool) -> str:
        return "MET" if ok else "NOT MET"

    print("\n" + "=" * 78)
    print(
        f"Flowmend live bench ({'quick' if r['quick'] else 'full'}): "
        f"{sum(r['clients'].values())} sockets, {r['machine']['cpus']} CPUs"
    )
    print(
        f"load: {load['achieved_per_s']:.0f} transitions/s achieved of {load['target_per_s']:.0f} "
        f"({load['transitions']} in {load['seconds']:g} s, {load['generators']} generator "
        f"processes) [{v(crit['rate_reached'])}]"
    )
    print(f"  per second: {load['per_second']}")
    print(
        f"run-page lag (commit -> frame with that seq): p50 {lag['p50_s']} s, p95 {lag['p95_s']} s, "
        f"max {lag['max_s']} s over {lag['samples']} transitions "
        f"[p95 <= {LAG_P95_TARGET_S:g} s: {v(crit['lag_p95_within_1s'])}]"
    )
    for kind, k in r["per_kind"].items():
        print(
            f"  {kind:8s} x{k['clients']:2d}: frames/s min {k['frames_per_s_min']:.2f} "
            f"median {k['frames_per_s_median']:.2f} max {k['frames_per_s_max']:.2f}; "
            f"longest gap {k['longest_gap_s']:.2f} s; {k['kb_per_s_per_client']} KB/s; "
            f"converged {k['converged']}/{k['clients']}, catch-up max {k['catch_up_s_max']} s"
            + (f"; errors {k['errors'][:2]}" if k["errors"] else "")
        )
    print(
        f"catch-up after the load: max {r['catch_up_s_max']} s "
        f"[all converged within {CATCH_UP_TARGET_S:g} s: {v(crit['all_converged_within_2s'])}]"
    )
    print(f"no client starved: {v(crit['no_client_starved'])}")
    print(
        f"CPU: daphne {cpu['daphne_percent']}%, generators {cpu['generators_percent']}%, "
        f"machine {cpu['machine_busy_percent']}% busy of {cpu['cpus']} CPUs"
    )
    d = r["daphne"]
    print(
        f"daphne: {d['change_messages_per_s']} change messages/s in, "
        f"{d['frames_sent_per_s']} frames/s out"
    )
    for key, x in d["renders"].items():
        print(
            f"  {key:18s} {x['renders_per_s']:6.1f} renders/s, render {x['render_ms_mean']} ms "
            f"(render+send incl. waiting for the sync thread {x['render_and_send_ms_mean']} ms), "
            f"{100 * x['sync_thread_share']:.0f}% of the sync thread"
        )
    f = r["flusher"]
    print(
        f"flushers (in the generators): {f['group_messages_per_s']} group messages/s, "
        f"{f['ms_per_flush']} ms per flush"
    )
    b = r["channel_backlog"]
    print(
        f"channel layer: daphne's process queue in Redis up to {b['max_loaded']} messages "
        f"while loaded; {f['deliveries_dropped_over_capacity']} deliveries dropped "
        f"(channel over capacity)"
    )
    print(f"KEEPS UP: {'YES' if r['keeps_up'] else 'NO'}")


# =========================================================================== children


def daphne_main(args: argparse.Namespace) -> int:
    """daphne's CLI in this process, with the consumers instrumented (counts only)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flowmend.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from channels.generic.websocket import AsyncWebsocketConsumer

    from monitoring import consumers

    lock = threading.Lock()
    stats: dict[str, Any] = {"renders": {}, "frames": 0, "changes": 0}

    def key_of(consumer: Any) -> str:
        return "run" if isinstance(consumer, consumers.RunConsumer) else f"dash:{consumer.page}"

    def add(key: str, i: int, secs: float) -> None:
        with lock:
            entry = stats["renders"].setdefault(key, [0, 0.0, 0.0])
            entry[i] += secs
            if i == 1:
                entry[0] += 1

    for cls in (consumers.RunConsumer, consumers.DashboardConsumer):
        original = cls.render_update

        def render_update(self: Any, first: bool, _f: Any = original) -> list[str]:
            t = time.perf_counter()
            try:
                return _f(self, first)
            finally:
                add(key_of(self), 1, time.perf_counter() - t)

        cls.render_update = render_update  # type: ignore[method-assign]

    original_ras = consumers.LiveConsumer.render_and_send

    async def render_and_send(self: Any, first: bool) -> None:
        t = time.perf_counter()
        await original_ras(self, first)
        add(key_of(self), 2, time.perf_counter() - t)

    original_changed = consumers.LiveConsumer.changed

    async def changed(self: Any) -> None:
        stats["changes"] += 1
        await original_changed(self)

    async def send(self: Any, text_data: Any = None, bytes_data: Any = None, close: bool = False):
        stats["frames"] += 1
        await AsyncWebsocketConsumer.send(self, text_data, bytes_data, close)

    consumers.LiveConsumer.render_and_send = render_and_send  # type: ignore[method-assign]
    consumers.LiveConsumer.changed = changed  # type: ignore[method-assign]
    consumers.LiveConsumer.send = send  # type: ignore[method-assign]

    def dump() -> None:
        path = Path(args.child_out)
        while True:
            time.sleep(0.25)
            with lock:
                text = json.dumps(stats)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)

    threading.Thread(target=dump, daemon=True).start()
    from daphne.cli import CommandLineInterface

    CommandLineInterface().run(
        ["-b", "127.0.0.1", "-p", str(args.port), "--verbosity", "0", "flowmend.asgi:application"]
    )
    return 0


def generator_main(args: argparse.Namespace) -> int:
    """Apply noop successes to its runs, paced, through the executor's path."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flowmend.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from monitoring import live
    from workflows import executor, services, store
    from workflows.models import StepAttempt

    flusher = {"flushes": 0, "messages": 0, "send_s": 0.0}
    original_send_all = live._send_all

    async def counted(layer: Any, pending: dict[str, int]) -> None:
        t = time.perf_counter()
        await original_send_all(layer, pending)
        flusher["flushes"] += 1
        flusher["messages"] += len(pending) + 1
        flusher["send_s"] += time.perf_counter() - t

    live._send_all = counted  # type: ignore[assignment]

    class OverCapacity(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "over capacity" in str(record.msg):
                flusher["over_capacity"] += int(record.args[0])  # type: ignore[index]

    flusher["over_capacity"] = 0
    channels_log = logging.getLogger("channels_redis.core")
    channels_log.setLevel(logging.INFO)
    channels_log.addHandler(OverCapacity())
    channels_log.propagate = False

    spec = json.loads(Path(args.spec).read_text())

    def first_attempt(run_id: str) -> StepAttempt:
        queued = StepAttempt.objects.filter(run_id=run_id, status="queued").order_by("pk").first()
        assert queued is not None, run_id
        attempt = store.claim(queued.pk, WORKER)
        assert attempt is not None, run_id
        return attempt

    slots = deque([r, kind, watched, first_attempt(r)] for r, kind, watched in spec["runs"])
    Path(args.child_out + ".ready").write_text("1")
    go = Path(spec["go"])
    while not go.exists():
        time.sleep(0.01)
    time.sleep(0.01)
    start = json.loads(go.read_text())["start_at"]
    rate, end = spec["rate"], start + spec["duration"]
    commits: list[float] = []
    watched_log: list[tuple[str, int, float]] = []
    started = 0
    time.sleep(max(0.0, start - time.time()))
    k = 0
    while time.time() < end:
        due = start + k / rate
        wait = due - time.time()
        if wait > 0:
            time.sleep(wait)
        k += 1
        slot = slots.popleft()
        run_id, kind, watched, attempt = slot
        report = executor.run_attempt(attempt)
        applied = store.apply(
            attempt.run_id,
            lambda run, r=report, a=attempt: executor._event_for(a, r),
            report=report,
            claim_for=WORKER,
        )
        t = time.time()
        commits.append(t)
        if applied is not None and watched:
            watched_log.append((run_id, applied.run.event_seq, t))
        nxt = applied.inline if applied is not None else None
        if nxt is not None:
            nxt.run = applied.run  # type: ignore[union-attr]
            slot[3] = nxt
            slots.append(slot)
        elif kind == "short":  # finished: a new run takes its place
            run = services.start_run("bench-live-short")
            commits.append(time.time())
            k += 1
            started += 1
            slots.append([str(run.pk), kind, False, first_attempt(str(run.pk))])
    time.sleep(live.FLUSH_SECONDS * 3)  # the flusher thread sends the last changes
    Path(args.child_out).write_text(
        json.dumps(
            {"commits": commits, "watched": watched_log, "started": started, "flusher": flusher}
        )
    )
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
