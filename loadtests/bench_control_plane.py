"""The control plane's capacity (issue 24): K dispatchers on one PostgreSQL, stages that only return a prepared MP4.

    python -m loadtests.bench_control_plane --dispatchers 4 --jobs 2000 --watchers 1000    # the full run
    python -m loadtests.bench_control_plane --short                                          # make test's version

It starts a PostgreSQL of its own with pg_stat_statements loaded (or uses --database-url's server, which must load
it), migrates a fresh database and drives the server's own classes, without Ray, in two processes, as a cluster's
replicas are processes apart: here K Dispatchers built as the Dispatcher deployment builds them
(serving.services.open_dispatcher: each its own connection pool) with their job runners and a ProgressHub, on one
event loop and a thread pool of 6 threads per dispatcher (min(32, cores + 4): a replica's on a 2-core pod); in a
child process the front door's domain, VideoService (create: validation, moderation, the capacity check, the job
row; watch), with its own event loop, ProgressHub and 6 threads. The dispatchers' hub forwards every event to the
front door's over a pipe, and the front door's create wakes a dispatcher over it, as Serve carries both. The stages
are PreparedMp4Stages (loadtests/prepared_stages.py), a benchmark tool: steps pushed, one prepared MP4 returned, no
model.

Phases, in this order:
  claim       --window jobs written straight into the store, then K threads, each with a store of its own, call
              claim_next until the window is full: claims per second of the claim path alone, each call's
              latency (p50, p99), and how many claims wait on a lock meanwhile (pg_locks, sampled); then again
              with the claimers behind a proxy adding --claim-rtt-ms to each round trip (a remote database).
  throughput  once per --steps count: --jobs jobs created through VideoService.create by --clients concurrent
              callers with no dispatcher running (created/s), then the K dispatchers start on the full queue
              (claimed/s: until the last claim; completed/s: until the last completion). pg_stat_statements is reset
              before the first create and read after the last completion: statements per job (BEGIN and COMMIT
              included, and the dispatchers' timed reads; not the connection pool's pre-ping, an empty query
              pg_stat_statements does not count: one more round trip per transaction). CPU per job: the
              benchmark's two processes', and the PostgreSQL server's processes'. Checked: every job completed,
              on its first claim, with one terminal event in the store and one pushed.
  latency     CreateVideo at --rate arrivals per second, evenly spaced, for --rate-seconds, the K dispatchers
              running the jobs; each latency from the arrival's scheduled time to the answer (a stalled event loop
              counts), p50 and p99.
  watch       --watched-jobs jobs of --watch-steps steps, one step every --step-ms; --watchers watchers spread evenly
              over them through VideoService.watch in the front door's process, all attached before the
              dispatchers start. The delay of each pushed step from its publish (Progress.at, in the dispatchers'
              process, whose hub forwards it to the front door's) to each watcher, p50/p99/max; every watcher must
              see every step.
  idle        the K dispatchers with nothing queued, for --idle-seconds after --settle seconds: write statements
              (INSERT, UPDATE, DELETE, SELECT ... FOR UPDATE: pg_stat_statements) per minute, and transaction ids
              assigned per minute (pg_current_snapshot's xmax: PostgreSQL gives an id only to a transaction that
              writes; autovacuum's analyze is one of those, so autovacuum runs in the window are listed beside it),
              and Kino's transactions per minute (its BEGINs: the dispatchers' reads).

Prints a table with the issue's goals beside the figures (no assert on speed), then the figures as one JSON line.
Results: docs/benchmarks.md ("Control plane capacity (issue 24)").
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import contextlib
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

GOAL_JOBS_PER_S = 200.0  # through 4 dispatchers on one PostgreSQL
GOAL_PUSH_P99_MS = 100.0
GOAL_FLAT = 0.05  # statements per job "flat in steps": the most steps' figure within 5 % of the fewest's
THREADS_PER_PROCESS = 6  # min(32, cores + 4) on a 2-core replica: asyncio's default pool

SHORT = {"claim_rtt_ms": 0.0, "dispatchers": 4, "jobs": 120, "steps": "4,32", "rate": 40.0, "rate_seconds": 1.5,
         "watchers": 200, "watched_jobs": 4, "watch_steps": 8, "step_ms": 20.0, "idle_seconds": 3.0, "settle": 1.0,
         "window": 64, "clients": 8}


@dataclass
class Throughput:
    steps: int
    jobs: int
    created_per_s: float
    claimed_per_s: float
    completed_per_s: float
    statements_per_job: float
    by_kind: dict[str, float]  # statements per job by kind (BEGIN, COMMIT, SELECT, ...)
    cpu_ms_per_job: tuple[float, float]  # the benchmark's two processes, the PostgreSQL server's processes
    completed_once: bool  # every job completed on its first claim, one terminal event stored and one pushed
    not_once: dict[str, int] = field(default_factory=dict)  # what went otherwise: "status/attempts/events" -> jobs


@dataclass
class Claims:
    rtt_ms: float  # a round trip to the database, measured (SELECT 1, median)
    per_s: float
    ms: tuple[float, float]  # p50, p99 of one claim_next call
    lock_waits: float  # claims waiting on a lock, on average (pg_locks)


@dataclass
class Report:
    dispatchers: int
    window: int
    claims: list[Claims]  # the claim path alone (phase claim): direct, then through --claim-rtt-ms round trips
    throughput: list[Throughput]
    rate: float
    create_ms: tuple[float, float]  # p50, p99 at `rate`
    latency_jobs_completed: bool
    watchers: int
    watched_jobs: int
    push_ms: tuple[float, float, float]  # p50, p99, max
    forward_ms: tuple[float, float]  # p50, p99 of the same steps' arrival at the front door's hub
    every_step_seen: bool
    idle_seconds: float
    idle_write_statements: int
    idle_xids: int
    idle_transactions: int
    idle_autovacuum: int  # autovacuum / autoanalyze runs on Kino's tables during the idle window
    idle_writes_by_query: dict[str, int] = field(default_factory=dict)

    def goals(self) -> dict[str, bool]:
        first = min(self.throughput, key=lambda t: t.steps)
        spread = _spread(self.throughput)
        return {"jobs_per_s": min(first.created_per_s, first.claimed_per_s, first.completed_per_s) >= GOAL_JOBS_PER_S,
                "idle_writes": self.idle_write_statements == 0,
                "statements_flat": spread <= GOAL_FLAT,
                "push_p99": self.push_ms[1] <= GOAL_PUSH_P99_MS}

    def table(self) -> str:
        def ok(good: bool) -> str:
            return "met" if good else "MISSED"

        g = self.goals()
        per_min = 60.0 / self.idle_seconds
        rows = []
        for c in self.claims:
            rows += [(f"claims/s, the claim path alone (K threads; round trip {c.rtt_ms:.2f} ms)", f"{c.per_s:.0f}",
                      ""),
                     ("  one claim_next p50 / p99 ms", f"{c.ms[0]:.1f} / {c.ms[1]:.1f}", ""),
                     ("  claims waiting on a lock, mean (pg_locks, every 5 ms)", f"{c.lock_waits:.2f}", "")]
        for t in self.throughput:
            goal = f">= {GOAL_JOBS_PER_S:.0f}/s" if t.steps == self.throughput[0].steps else ""
            rows += [(f"jobs/s created ({t.jobs} jobs, {t.steps} steps)", f"{t.created_per_s:.0f}",
                      f"{goal}: {ok(t.created_per_s >= GOAL_JOBS_PER_S)}" if goal else ""),
                     (f"jobs/s claimed ({t.steps} steps)", f"{t.claimed_per_s:.0f}",
                      f"{goal}: {ok(t.claimed_per_s >= GOAL_JOBS_PER_S)}" if goal else ""),
                     (f"jobs/s completed ({t.steps} steps)", f"{t.completed_per_s:.0f}",
                      f"{goal}: {ok(t.completed_per_s >= GOAL_JOBS_PER_S)}" if goal else ""),
                     (f"statements per job ({t.steps} steps)", f"{t.statements_per_job:.1f}",
                      "flat in steps: " + ok(g["statements_flat"]) if t is self.throughput[-1] else ""),
                     (f"  by kind ({t.steps} steps)", ", ".join(f"{k} {v:.1f}" for k, v in t.by_kind.items()), ""),
                     (f"CPU ms per job, Kino's processes / PostgreSQL ({t.steps} steps)",
                      f"{t.cpu_ms_per_job[0]:.1f} / {t.cpu_ms_per_job[1]:.1f}", ""),
                     (f"every job completed once ({t.steps} steps)", "yes" if t.completed_once else
                      f"NO: {t.not_once}", "")]
        rows += [(f"CreateVideo p50 / p99 ms at {self.rate:g}/s", f"{self.create_ms[0]:.1f} / {self.create_ms[1]:.1f}",
                  ""),
                 (f"pushed step -> {self.watchers} watchers ({self.watched_jobs} jobs) p50 / p99 / max ms",
                  " / ".join(f"{v:.1f}" for v in self.push_ms),
                  f"p99 <= {GOAL_PUSH_P99_MS:.0f} ms: {ok(g['push_p99'])}"),
                 ("  of which to the front door's hub, p50 / p99 ms",
                  f"{self.forward_ms[0]:.1f} / {self.forward_ms[1]:.1f}", ""),
                 ("every watcher saw every step", "yes" if self.every_step_seen else "NO", ""),
                 (f"idle write statements/min ({self.idle_seconds:.0f} s)",
                  f"{self.idle_write_statements * per_min:.1f}", f"0: {ok(g['idle_writes'])}"),
                 ("idle transaction ids assigned/min (autovacuum runs in the window)",
                  f"{self.idle_xids * per_min:.1f} ({self.idle_autovacuum})", ""),
                 ("idle transactions/min (reads: BEGIN in pg_stat_statements)",
                  f"{self.idle_transactions * per_min:.1f}", "")]
        width = max(len(r[0]) for r in rows)
        head = (f"control plane: {self.dispatchers} dispatchers, window {self.window}, PostgreSQL, prepared-MP4 stages"
                f" ({time.strftime('%Y-%m-%d %H:%M')})")
        return "\n".join([head] + [f"  {name:<{width}}  {value:>16}  {goal}".rstrip() for name, value, goal in rows])

    def as_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("throughput", "claims")}
        out["claims"] = [c.__dict__ for c in self.claims]
        out["throughput"] = [t.__dict__ for t in self.throughput]
        out["goals"] = self.goals()
        return out


def _spread(rows: Sequence[Throughput]) -> float:
    """How far statements per job move with the step count: (most steps' - fewest's) / fewest's."""
    lo, hi = min(rows, key=lambda t: t.steps), max(rows, key=lambda t: t.steps)
    return abs(hi.statements_per_job - lo.statements_per_job) / max(lo.statements_per_job, 1e-9)


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else 0.0


# -- the database's own counts ----------------------------------------------------------------------------
class Stats:
    """What the database ran, on a connection to the server's `postgres` database (so its own statements are not
    the benchmark database's): pg_stat_statements of the benchmark database, and the transaction id counter."""

    def __init__(self, url: str) -> None:
        import psycopg
        from sqlalchemy.engine import make_url

        u = make_url(url)
        self.dbname = u.database
        conninfo = f"host={u.host} port={u.port} user={u.username} dbname=postgres"
        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self.dbid = self.conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (self.dbname,)).fetchone()[0]
        self.server = None  # the postmaster, when it runs on this machine (its processes' CPU time)
        if u.host in ("127.0.0.1", "localhost", "::1"):
            with contextlib.suppress(Exception):
                backend = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
                self.server = psutil.Process(backend).parent()

    def server_cpu(self) -> float:
        """CPU seconds of the PostgreSQL server's processes so far (those still running: the connection pools'
        backends live through a phase); 0 when the server is elsewhere."""
        if self.server is None:
            return 0.0
        total = 0.0
        for p in [self.server, *self.server.children()]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def reset(self) -> None:
        self.conn.execute("SELECT pg_stat_statements_reset()")
        self.conn.execute("SELECT pg_stat_clear_snapshot()")

    def statements(self) -> dict[str, int]:
        """query text -> calls, in the benchmark database since the last reset."""
        rows = self.conn.execute("SELECT query, sum(calls)::bigint FROM pg_stat_statements WHERE dbid = %s "
                                 "GROUP BY query", (self.dbid,)).fetchall()
        return {q: int(n) for q, n in rows}

    def xid(self) -> int:
        return int(self.conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchone()[0])

    def close(self) -> None:
        self.conn.close()


def kind(query: str) -> str:
    """A statement's kind, as the report counts them."""
    q = " ".join(query.split()).upper()
    word = q.split(" ", 1)[0]
    if word == "SELECT" and "FOR UPDATE" in q:
        return "SELECT FOR UPDATE"
    return word if word in ("BEGIN", "COMMIT", "ROLLBACK", "SELECT", "INSERT", "UPDATE", "DELETE") else "other"


def is_write(query: str) -> bool:
    return kind(query) in ("INSERT", "UPDATE", "DELETE", "SELECT FOR UPDATE")


def autovacuum_runs(url: str) -> int:
    """autovacuum + autoanalyze runs on the benchmark database's tables so far."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    with psycopg.connect(f"host={u.host} port={u.port} user={u.username} dbname={u.database}") as c:
        return int(c.execute("SELECT coalesce(sum(autovacuum_count + autoanalyze_count), 0) "
                             "FROM pg_stat_user_tables").fetchone()[0])


# -- the control plane in this process -------------------------------------------------------------------
def bench_config(url: str, state: Path, window: int) -> Any:
    """The Kino config of the benchmark: its database and artifacts, a queue that never refuses, the window."""
    from serving.config import load_config

    return load_config({"storage": {"database_url": url, "artifacts_dir": str(state / "artifacts")},
                        "queue": {"max_queued": 10_000_000, "max_in_flight": window},
                        "checkpoints": {"enabled": False}}, environ={})


# -- the front door: a process of its own ----------------------------------------------------------------
# A Frontend replica is a process apart from the Dispatcher replicas: here the front door's domain (VideoService:
# create, watch) runs in a child process with an event loop, a ProgressHub and a thread pool of its own, so a create
# or a watcher never waits for the dispatchers' interpreter lock. Messages over a pipe, as Serve carries them:
# the dispatchers' hub forwards every event and nudge to the front door's hub ("event", "nudge"), the front door
# wakes a dispatcher ("wake"), and the benchmark asks the front door for work ("call" -> "signal"*, "result").
def front_door_main(conn: Any, url: str, state: str, window: int) -> None:
    """The child process: serve the parent's calls until told to stop."""
    asyncio.run(_front_door(conn, url, Path(state), window))


async def _front_door(conn: Any, url: str, state: Path, window: int) -> None:
    from serving.control_plane.progress import ProgressHub
    from serving.jobs import Stage
    from serving.metrics import NoMetrics
    from serving.services import DomainServices
    from serving.videos import CreateVideo, DispatcherLink

    loop = asyncio.get_running_loop()
    loop.set_default_executor(cf.ThreadPoolExecutor(THREADS_PER_PROCESS))

    class Link(DispatcherLink):
        async def wake(self) -> None:
            conn.send(("wake",))

        async def cancel(self, job_id: str) -> None:
            raise NotImplementedError("the benchmark cancels nothing")

    hub = ProgressHub()
    services = DomainServices.open(bench_config(url, state, window), Link(), NoMetrics(), progress=hub)
    videos, principal = services.videos, services.accounts.local_principal()

    async def create(i: int, steps: int) -> str:
        job, _ = await videos.create(principal, CreateVideo(prompt=f"control plane bench {i}", size="64x64",
                                                            seconds=0.5, steps=steps, seed=i))
        return job.id

    async def create_all(call: int, jobs: int, steps: int, clients: int, offset: int) -> tuple[list[str], float]:
        """`jobs` creates from `clients` concurrent callers; (ids, seconds)."""
        ids: list[str] = []
        numbers = iter(range(offset, offset + jobs))

        async def client() -> None:
            for i in numbers:
                ids.append(await create(i, steps))

        t0 = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        return ids, time.monotonic() - t0

    async def arrivals(call: int, rate: float, n: int, steps: int, offset: int) -> tuple[list[str], list[float]]:
        """`n` creates at `rate` a second, evenly spaced; (ids, latencies in ms from each scheduled arrival)."""
        ids: list[str] = []
        latencies: list[float] = []
        t0 = loop.time() + 0.05

        async def arrival(k: int) -> None:
            due = t0 + k / rate
            await asyncio.sleep(max(0.0, due - loop.time()))
            ids.append(await create(offset + k, steps))
            latencies.append((loop.time() - due) * 1000)

        await asyncio.gather(*(arrival(k) for k in range(n)))
        return ids, latencies

    async def watch(call: int, ids: list[str], watchers: int, steps: int) -> tuple[list[float], list[float], bool]:
        """`watchers` watchers spread over `ids`; signals once all are attached; (delays in ms, the forwarded steps'
        delays at their arrival here in ms, whether every watcher saw every step) once every job ended."""
        arrived.clear()
        delays: list[float] = []
        seen: list[set[int]] = [set() for _ in range(watchers)]
        count = 0

        async def watcher(w: int) -> None:
            nonlocal count
            first = True
            async for p in videos.watch(principal, ids[w % len(ids)]):
                now = time.time()
                if first:
                    first, count = False, count + 1
                    if count == watchers:
                        conn.send(("signal", call, "attached"))
                elif p.stage == Stage.DENOISING and p.step >= 1 and p.message == "":
                    delays.append((now - p.at) * 1000)
                    seen[w].add(p.step)

        await asyncio.wait_for(asyncio.gather(*(watcher(w) for w in range(watchers))), timeout=400.0)
        return delays, list(arrived), all(s == set(range(1, steps + 1)) for s in seen)

    calls = {"create_all": create_all, "arrivals": arrivals, "watch": watch}
    stopped = loop.create_future()
    arrived: list[float] = []  # forwarded steps' delays as they arrive, before the hub fans them out

    async def run(call: int, name: str, kwargs: dict[str, Any]) -> None:
        try:
            conn.send(("result", call, await calls[name](call, **kwargs)))
        except Exception as e:  # noqa: BLE001 - the parent raises it
            conn.send(("error", call, f"{type(e).__name__}: {e}"))

    def receive() -> None:
        while conn.poll():
            message = conn.recv()
            if message[0] == "event":
                p = message[1]
                if p.stage == Stage.DENOISING and p.step >= 1 and p.message == "":
                    arrived.append((time.time() - p.at) * 1000)
                hub.publish(p)
            elif message[0] == "nudge":
                hub.nudge(message[1])
            elif message[0] == "call":
                loop.create_task(run(*message[1:]))
            elif not stopped.done():
                stopped.set_result(None)

    loop.add_reader(conn.fileno(), receive)
    conn.send(("ready", os.getpid()))
    await stopped
    videos.store.blocking.close()


class FrontDoor:
    """The parent's side of the front door process: its calls, its wakes, the events forwarded to it."""

    def __init__(self, url: str, state: Path, window: int, on_wake: Any) -> None:
        import importlib
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter, as a replica's
        self.conn, child = ctx.Pipe()
        target = importlib.import_module("loadtests.bench_control_plane").front_door_main  # by name, not __main__
        self.process = ctx.Process(target=target, args=(child, url, str(state), window), daemon=True)
        self.process.start()
        deadline = time.monotonic() + 120
        while not self.conn.poll(0.5):
            if not self.process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the front door process did not start (exit code {self.process.exitcode})")
        ready, self.pid = self.conn.recv()
        self.on_wake = on_wake
        self.loop = asyncio.get_running_loop()
        self.pending: dict[int, asyncio.Future] = {}
        self.signals: dict[int, asyncio.Future] = {}
        self.calls = 0
        self.loop.add_reader(self.conn.fileno(), self._receive)

    def _receive(self) -> None:
        while self.conn.poll():
            message = self.conn.recv()
            kind, *rest = message
            if kind == "wake":
                self.on_wake()
            elif kind == "signal" and (f := self.signals.get(rest[0])) is not None and not f.done():
                f.set_result(rest[1])
            elif kind in ("result", "error") and (f := self.pending.pop(rest[0], None)) is not None:
                f.set_result(rest[1]) if kind == "result" else f.set_exception(RuntimeError(rest[1]))

    def send(self, *message: Any) -> None:
        self.conn.send(message)

    def call(self, name: str, **kwargs: Any) -> tuple[asyncio.Future, asyncio.Future]:
        """Ask the front door for `name`(**kwargs): (its result, its first signal)."""
        self.calls += 1
        result, signal = self.loop.create_future(), self.loop.create_future()
        self.pending[self.calls], self.signals[self.calls] = result, signal
        self.send("call", self.calls, name, kwargs)
        return result, signal

    def cpu_seconds(self) -> float:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(self.pid).cpu_times()
            return t.user + t.system
        return 0.0

    def close(self) -> None:
        self.loop.remove_reader(self.conn.fileno())
        with contextlib.suppress(OSError):
            self.send("stop")
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


class _Hub:
    """The dispatchers' hub: forwards every event and nudge to the front door (as the ProgressHub replica streams
    them to the Frontend replicas), and counts each job's pushed terminal events, so the benchmark waits on the
    pushes instead of polling the store (a poll would be counted among the statements)."""

    def __init__(self, front: FrontDoor) -> None:
        from serving.control_plane.progress import ProgressHub

        class CountingHub(ProgressHub):
            def publish(hub, progress):  # noqa: N805 - the hub's own method
                super().publish(progress)
                front.send("event", progress)
                if progress.terminal:
                    self.ended[progress.video_id] += 1
                    self.pending.discard(progress.video_id)
                    if not self.pending and self.all_ended is not None and not self.all_ended.done():
                        self.all_ended.set_result(None)

            def nudge(hub, topic):  # noqa: N805 - the hub's own method
                super().nudge(topic)
                front.send("nudge", topic)

        self.hub = CountingHub()
        self.ended: Counter[str] = Counter()
        self.pending: set[str] = set()
        self.all_ended: asyncio.Future | None = None

    def expect(self, ids: Sequence[str]) -> asyncio.Future:
        self.pending = {i for i in ids if not self.ended[i]}
        self.all_ended = asyncio.get_running_loop().create_future()
        if not self.pending:
            self.all_ended.set_result(None)
        return self.all_ended


class ControlPlane:
    """K Dispatchers and their ProgressHub on this event loop, the front door in a process of its own (`FrontDoor`),
    one database."""

    def __init__(self, url: str, state: Path, *, dispatchers: int, window: int, step_seconds: float = 0.0) -> None:
        from loadtests.prepared_stages import PreparedMp4Stages
        from serving.artifacts import open_artifact_store
        from serving.db import Database
        from serving.metrics import NoMetrics
        from serving.services import open_dispatcher

        self.cfg = bench_config(url, state, window)
        self.loop = asyncio.get_running_loop()
        self.stages = PreparedMp4Stages.prepare(open_artifact_store(self.cfg.storage), step_seconds=step_seconds)
        self.front = FrontDoor(url, state, window, on_wake=self._wake_one)
        self.hub = _Hub(self.front)
        self.dispatchers = [open_dispatcher(self.cfg, self.stages, NoMetrics(), progress=self.hub.hub)
                            for _ in range(dispatchers)]
        self.tasks: list[asyncio.Task | None] = [None] * dispatchers
        self.db = Database(url)  # the benchmark's own reads of the outcome
        self._woken = 0

    def _wake_one(self) -> None:
        """The front door's nudge to one dispatcher, round robin (Serve routes a handle call to one replica)."""
        running = [d for d, task in zip(self.dispatchers, self.tasks, strict=True) if task is not None]
        if running:
            self._woken += 1
            running[self._woken % len(running)].wake()

    def start(self) -> None:
        for i, d in enumerate(self.dispatchers):
            if self.tasks[i] is None:
                self.tasks[i] = self.loop.create_task(d.run(), name=f"dispatcher-{i}")

    async def stop(self) -> None:
        running = [t for t in self.tasks if t is not None]
        for t in running:
            t.cancel()
        await asyncio.wait_for(asyncio.gather(*running, return_exceptions=True), timeout=60.0)
        self.tasks = [None] * len(self.dispatchers)

    async def call(self, name: str, timeout: float = 300.0, **kwargs: Any) -> Any:
        result, _ = self.front.call(name, **kwargs)
        return await asyncio.wait_for(result, timeout)

    def close(self) -> None:
        self.front.close()
        for d in self.dispatchers:
            d.store.blocking.close()
        self.db.dispose()


# -- phases --------------------------------------------------------------------------------------------
def claim_phase(url: str, *, claimers: int, jobs: int, window: int, rtt_ms: float = 0.0) -> Claims:
    """Claims per second of `claimers` threads, each with a store of its own, on a queue of `jobs`; the latency of
    each claim_next call (ms); how many claims waited on a lock, on average (pg_locks: requests not granted, sampled
    every 5 ms while they claim). `rtt_ms`: the claimers reach the database through a proxy that holds every
    message half of it each way (loadtests/delay_proxy.py: a database across a network)."""
    from loadtests.delay_proxy import delayed

    with contextlib.ExitStack() as stack:
        claim_url = stack.enter_context(delayed(url, rtt_ms / 2)) if rtt_ms > 0 else url
        return _claims(url, claim_url, claimers=claimers, jobs=jobs, window=window)


def _claims(url: str, claim_url: str, *, claimers: int, jobs: int, window: int) -> Claims:
    import uuid

    from loadtests.delay_proxy import round_trip_ms
    from serving.jobs import JobStatus, NewJob, open_store

    stores = [open_store(claim_url) for _ in range(claimers)]
    try:
        for i in range(jobs):
            stores[0].create(NewJob(id=f"video_claim_{uuid.uuid4().hex[:12]}", tenant="claim-bench", model="m",
                                    priority=5, params={"prompt": f"claim {i}"}, request_hash=str(i)),
                             max_queued=10_000_000)
        claimed: list[list[Any]] = [[] for _ in range(claimers)]
        latencies: list[float] = []
        start = threading.Barrier(claimers + 1)

        def claimer(n: int) -> None:
            start.wait()
            while True:
                t = time.perf_counter()
                job = stores[n].claim_next(f"claimer-{n}", 60.0, max_in_progress=window)
                latencies.append((time.perf_counter() - t) * 1000)
                if job is None:
                    return
                claimed[n].append(job)

        waiting: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            import psycopg
            from sqlalchemy.engine import make_url

            u = make_url(url)
            with psycopg.connect(f"host={u.host} port={u.port} user={u.username} dbname={u.database}",
                                 autocommit=True) as c:
                while not stop.wait(0.005):
                    waiting.append(c.execute("SELECT count(*) FROM pg_locks WHERE NOT granted AND pid <> "
                                             "pg_backend_pid()").fetchone()[0])

        threads = [threading.Thread(target=claimer, args=(n,)) for n in range(claimers)]
        sampler = threading.Thread(target=sample)
        for t in threads:
            t.start()
        sampler.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        took = time.perf_counter() - t0
        stop.set()
        sampler.join()
        jobs_claimed = [job for mine in claimed for job in mine]
        for job in jobs_claimed:  # out of the way of the phases after this one
            stores[0].finish(job.lease, JobStatus.CANCELLED, error_code="cancelled", error_message="claim phase")
        if len(jobs_claimed) != min(jobs, window) or len({j.id for j in jobs_claimed}) != len(jobs_claimed):
            raise RuntimeError(f"the claim phase claimed {len(jobs_claimed)} jobs of {jobs} (window {window})")
        return Claims(rtt_ms=round_trip_ms(claim_url), per_s=len(jobs_claimed) / took,
                      ms=(_pct(latencies, 50), _pct(latencies, 99)),
                      lock_waits=float(np.mean(waiting)) if waiting else 0.0)
    finally:
        for s in stores:
            s.close()


async def throughput_phase(plane: ControlPlane, stats: Stats, *, jobs: int, steps: int, clients: int,
                           offset: int) -> Throughput:
    stats.reset()
    me = psutil.Process()
    cpu0, front0, server0 = sum(me.cpu_times()[:2]), plane.front.cpu_seconds(), stats.server_cpu()
    ids, created_s = await plane.call("create_all", jobs=jobs, steps=steps, clients=clients, offset=offset)
    ended = plane.hub.expect(ids)
    wall0 = time.time()
    plane.start()
    await asyncio.wait_for(ended, timeout=max(120.0, jobs * 0.5))
    await plane.stop()
    cpu = (sum(me.cpu_times()[:2]) - cpu0 + plane.front.cpu_seconds() - front0, stats.server_cpu() - server0)
    statements = stats.statements()
    rows = await asyncio.to_thread(_job_rows, plane, ids)
    total = sum(statements.values())
    by_kind: dict[str, float] = defaultdict(float)
    for q, n in statements.items():
        by_kind[kind(q)] += n / jobs
    once = ("completed", 1, 1, 1)
    not_once = Counter(f"{r['status']}/attempts {r['attempts']}/terminal events {r['terminal']}/pushed "
                       f"{plane.hub.ended[r['id']]}" for r in rows
                       if (r["status"], r["attempts"], r["terminal"], plane.hub.ended[r["id"]]) != once)
    started = max(r["started_at"] for r in rows)
    completed = max(r["completed_at"] for r in rows)
    return Throughput(steps=steps, jobs=jobs, created_per_s=jobs / created_s,
                      claimed_per_s=jobs / max(started - wall0, 1e-9),
                      completed_per_s=jobs / max(completed - wall0, 1e-9),
                      statements_per_job=total / jobs,
                      by_kind=dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
                      cpu_ms_per_job=(cpu[0] * 1000 / jobs, cpu[1] * 1000 / jobs),
                      completed_once=not not_once and len(rows) == jobs, not_once=dict(not_once))


def _job_rows(plane: ControlPlane, ids: Sequence[str]) -> list[dict[str, Any]]:
    import sqlalchemy as sa

    from serving.schema import job_events, jobs

    db = plane.db
    terminal = ("completed", "failed", "cancelled")
    with db.read() as conn:
        rows = conn.execute(sa.select(jobs.c.id, jobs.c.status, jobs.c.attempts, jobs.c.started_at,
                                      jobs.c.completed_at).where(jobs.c.id.in_(list(ids)))).all()
        events = dict(conn.execute(sa.select(job_events.c.job_id, sa.func.count()).where(
            job_events.c.job_id.in_(list(ids)), job_events.c.status.in_(terminal))
            .group_by(job_events.c.job_id)).all())
    return [{"id": r.id, "status": r.status, "attempts": r.attempts, "started_at": r.started_at or 0.0,
             "completed_at": r.completed_at or 0.0, "terminal": events.get(r.id, 0)} for r in rows]


async def latency_phase(plane: ControlPlane, *, rate: float, seconds: float, steps: int,
                        offset: int) -> tuple[list[float], bool]:
    """CreateVideo latencies (ms) of evenly spaced arrivals, from each one's scheduled time; whether every job
    completed."""
    n = max(1, round(rate * seconds))
    plane.start()
    ids, latencies = await plane.call("arrivals", rate=rate, n=n, steps=steps, offset=offset)
    await asyncio.wait_for(plane.hub.expect(ids), timeout=max(120.0, n * 0.5))
    await plane.stop()
    rows = await asyncio.to_thread(_job_rows, plane, ids)
    return latencies, all(r["status"] == "completed" for r in rows) and len(rows) == n


async def watch_phase(plane: ControlPlane, *, watchers: int, jobs: int, steps: int,
                      offset: int) -> tuple[list[float], list[float], bool]:
    """Delays (ms) from each pushed step's publish (in the dispatchers' process) to each watcher (in the front
    door's); the same to the front door's hub, before its fan-out; whether every watcher saw every step."""
    ids, _ = await plane.call("create_all", jobs=jobs, steps=steps, clients=1, offset=offset)
    result, attached = plane.front.call("watch", ids=ids, watchers=watchers, steps=steps)
    await asyncio.wait_for(attached, timeout=300.0)
    ended = plane.hub.expect(ids)
    plane.start()
    await asyncio.wait_for(ended, timeout=120.0)
    delays, arrived, every_step = await asyncio.wait_for(result, timeout=120.0)
    await plane.stop()
    return delays, arrived, every_step


async def idle_phase(plane: ControlPlane, stats: Stats, url: str, *, seconds: float,
                     settle: float) -> tuple[int, int, int, int, dict[str, int]]:
    """(write statements, transaction ids assigned, transactions, autovacuum runs, writes by query) over `seconds`
    of K dispatchers with nothing to do."""
    plane.start()
    await asyncio.sleep(settle)
    vacuums = await asyncio.to_thread(autovacuum_runs, url)
    stats.reset()
    xid = stats.xid()
    await asyncio.sleep(seconds)
    xids = stats.xid() - xid
    statements = stats.statements()
    vacuums = await asyncio.to_thread(autovacuum_runs, url) - vacuums
    await plane.stop()
    writes = {q: n for q, n in statements.items() if is_write(q)}
    transactions = sum(n for q, n in statements.items() if kind(q) == "BEGIN")  # Kino's: each begins one
    return sum(writes.values()), xids, transactions, vacuums, writes


async def run_bench(url: str, state: Path, args: argparse.Namespace) -> Report:
    steps = [int(s) for s in str(args.steps).split(",")]
    loop = asyncio.get_running_loop()
    loop.set_default_executor(cf.ThreadPoolExecutor(THREADS_PER_PROCESS * args.dispatchers))
    claims = [await asyncio.to_thread(claim_phase, url, claimers=args.dispatchers, jobs=min(args.jobs, args.window),
                                      window=args.window, rtt_ms=rtt) for rtt in sorted({0.0, args.claim_rtt_ms})]
    stats = Stats(url)
    plane = ControlPlane(url, state, dispatchers=args.dispatchers, window=args.window)
    try:
        rows, offset = [], 0
        for s in steps:
            rows.append(await throughput_phase(plane, stats, jobs=args.jobs, steps=s, clients=args.clients,
                                               offset=offset))
            offset += args.jobs
        latencies, latency_ok = await latency_phase(plane, rate=args.rate, seconds=args.rate_seconds,
                                                    steps=steps[0], offset=offset)
        offset += len(latencies)
        plane.stages.step_seconds = args.step_ms / 1000
        delays, arrived, every_step = await watch_phase(plane, watchers=args.watchers, jobs=args.watched_jobs,
                                               steps=args.watch_steps, offset=offset)
        plane.stages.step_seconds = 0.0
        writes, xids, transactions, vacuums, by_query = await idle_phase(plane, stats, url, seconds=args.idle_seconds,
                                                                         settle=args.settle)
    finally:
        await plane.stop()
        plane.close()
        stats.close()
    return Report(dispatchers=args.dispatchers, window=args.window, claims=claims, throughput=rows,
                  rate=args.rate, create_ms=(_pct(latencies, 50), _pct(latencies, 99)),
                  latency_jobs_completed=latency_ok, watchers=args.watchers, watched_jobs=args.watched_jobs,
                  push_ms=(_pct(delays, 50), _pct(delays, 99), max(delays, default=0.0)),
                  forward_ms=(_pct(arrived, 50), _pct(arrived, 99)), every_step_seen=every_step,
                  idle_seconds=args.idle_seconds, idle_write_statements=writes, idle_xids=xids,
                  idle_transactions=transactions, idle_autovacuum=vacuums, idle_writes_by_query=by_query)


@contextlib.contextmanager
def _postgres() -> Iterator[Any]:
    """A PostgreSQL of this run's own, pg_stat_statements loaded, stopped and removed on exit."""
    from loadtests.local_servers import STATEMENT_STATS, PostgresServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = Path(tempfile.mkdtemp(prefix="kino-bench-cp-pg-"))  # not private to root: the server runs as postgres
    server = PostgresServer(base, port, settings={**STATEMENT_STATS, "max_connections": "300"}).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m loadtests.bench_control_plane", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dispatchers", type=int, default=4, help="K: Dispatcher objects, each its own connection pool "
                    "(default 4)")
    ap.add_argument("--jobs", type=int, default=2000, help="jobs per throughput phase, one phase per --steps count "
                    "(default 2000)")
    ap.add_argument("--steps", default="4,32", help="denoising steps of the throughput phases' jobs, comma separated: "
                    "two counts show whether statements per job stay flat in steps (default 4,32)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent CreateVideo callers of the throughput phases "
                    "(default 16)")
    ap.add_argument("--window", type=int, default=256, help="queue.max_in_flight, the cluster's in-flight window "
                    "(default 256: 8 Denoiser replicas x batching.max_running 32); also the claim phase's jobs")
    ap.add_argument("--claim-rtt-ms", type=float, default=1.0, help="the claim phase again with the claimers "
                    "reaching the database through a proxy that holds each message half of this each way (a database "
                    "across a network: the round trips, not the CPU, then set how long a claim holds its locks; "
                    "asyncio's timers make the real round trip longer, and it is measured); 0: not run (default 1)")
    ap.add_argument("--rate", type=float, default=25.0, help="CreateVideo arrivals per second of the latency phase "
                    "(default 25: under what 4 dispatchers complete on a 2-core machine, so the queue and the "
                    "database stay in a steady state; past it the creates queue on the admission lock)")
    ap.add_argument("--rate-seconds", type=float, default=10.0, help="how long the latency phase's arrivals last "
                    "(default 10)")
    ap.add_argument("--watchers", type=int, default=1000, help="concurrent watchers of the watch phase (default 1000)")
    ap.add_argument("--watched-jobs", type=int, default=10, help="jobs the watchers are spread over (default 10)")
    ap.add_argument("--watch-steps", type=int, default=32, help="steps of each watched job (default 32)")
    ap.add_argument("--step-ms", type=float, default=100.0, help="time between two pushed steps of a watched job "
                    "(default 100: 10 jobs x 10 steps/s x 100 watchers = 10,000 deliveries/s; the throughput phases "
                    "push steps back to back)")
    ap.add_argument("--idle-seconds", type=float, default=30.0, help="the idle phase's window (default 30)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds the dispatchers run idle before the idle "
                    "window opens (default 3)")
    ap.add_argument("--database-url", default="", help="a postgresql+psycopg:// URL of an empty database on a "
                    "server that loads pg_stat_statements (default: start a PostgreSQL of this run's own)")
    ap.add_argument("--short", action="store_true", help="the short version `make test` runs (small numbers: "
                    + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in SHORT.items()) + ")")
    ap.add_argument("--json", default="", help="also write the report's JSON to this file")
    return ap


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> Report:
    args = parser().parse_args(argv)
    if args.short:
        for k, v in SHORT.items():
            setattr(args, k, v)
    from serving.migrations import upgrade

    with contextlib.ExitStack() as stack:
        if threading.current_thread() is threading.main_thread():  # a SIGTERM (timeout, kill) still stops PostgreSQL
            previous = signal.signal(signal.SIGTERM, _interrupted)
            stack.callback(signal.signal, signal.SIGTERM, previous)
        url = args.database_url
        if not url:
            url = stack.enter_context(_postgres()).new_database()
        upgrade(url)
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kino-bench-cp-")))
        report = asyncio.run(run_bench(url, state, args))
    print(report.table())
    line = json.dumps(report.as_json())
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n")
    return report


if __name__ == "__main__":
    main()
