"""Chaos under load (issue 8): faults injected while supervised workers drain a W1-style queue.

    python bench/chaos.py [--scenarios kill-one kill-loop …] [--jobs N] [--no-docs]

A fault-free run, one run per scenario, another fault-free run; each on a fresh database of one
embedded PostgreSQL (fsync on, track_commit_timestamp on), one LLM stand-in (50 ms) and two
`python -m npcforge worker` processes restarted like systemd's `Restart=always` (0.1 s).
For each: jobs lost, succeeded twice, written after publish, generated or uploaded twice, every
row's final status, throughput before/during/after against the fault-free rate, recovery time.
Exit status 1 when a run lost a job, published one twice, generated one again without a crash,
logged a success twice or saw a worker die unasked. Results: the chaos section of
docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import ctypes
import ctypes.util
import math
import os
import signal
import struct
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _drain as d
import _harness as h
import asyncpg

from npcforge.db.connect import DB_UNAVAILABLE

DOCS = h.REPO_DIR / "docs" / "reliability.md"
PRE_S, POST_S = 6.0, 15.0  # load before the fault; sized to last this long after it
LOOP_PERIOD_S, LOOP_SPAN_S, PG_DOWN_S, SLOTS_FULL_S, IDLE_XMIN_S = 2.0, 20.0, 5.0, 15.0, 60.0
PRE_WINDOW_S, AFTER_WINDOW_S, RECOVERY_WINDOW_S, RECOVERED = 4.0, 10.0, 1.0, 0.8
NPCFORGE_BACKENDS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name LIKE 'npcforge%'"
)


# --- workers under a supervisor, and the uploads they make ----------------------------------


@dataclass
class Slot:
    """One supervised worker: every process it ran, and who ended which (by pid)."""

    name: str
    env: dict[str, str]
    cwd: Path
    restart: bool
    procs: list[h.Process] = field(default_factory=list)
    ended_by: dict[int, str] = field(default_factory=dict)
    stopping: bool = False

    def start(self) -> None:
        self.spawn()
        self.task = asyncio.create_task(self.supervise())

    def spawn(self) -> None:
        self.procs.append(h.spawn_worker(f"{self.name}-{len(self.procs) + 1}", self.cwd, self.env))

    async def supervise(self) -> None:
        while True:
            while self.procs[-1].alive():
                await asyncio.sleep(0.02)
            if self.stopping or not self.restart:
                return
            await asyncio.sleep(0.1)  # systemd's RestartSec
            if self.stopping:
                return
            self.spawn()

    def kill(self) -> int | None:
        proc = self.procs[-1]
        if not proc.alive():
            return None
        self.ended_by[proc.pid] = "sigkill"
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        return proc.pid

    async def stop(self) -> None:
        self.stopping = True
        if self.procs[-1].alive():
            self.ended_by[self.procs[-1].pid] = "sigterm"
            await asyncio.to_thread(self.procs[-1].stop, 30.0)
        await self.task

    def unexpected(self) -> list[dict[str, Any]]:
        return [
            {"slot": self.name, "pid": p.pid, "exit": code, "log": p.log_tail(15)}
            for p in self.procs
            if (code := p.popen.poll()) is not None
            and (p.pid not in self.ended_by or (self.ended_by[p.pid] == "sigterm" and code != 0))
        ]


class Uploads:
    """inotify IN_MOVED_TO events in the bucket: FilesystemStorage.put renames one file per
    upload, so each event is one completed upload of `{npcId}.xml`."""

    def __init__(self, bucket: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, os.fsencode(bucket), 0x80) < 0:
            raise OSError(ctypes.get_errno(), "inotify failed: uploads cannot be counted")
        self.counts: Counter[str] = Counter()
        self.overflowed = False
        self.pending = b""
        asyncio.get_running_loop().add_reader(self.fd, self.drain)

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.fd, 65536):
                data, offset = self.pending + chunk, 0
                while offset + 16 <= len(data):
                    _, mask, _, length = struct.unpack_from("iIII", data, offset)
                    if offset + 16 + length > len(data):
                        break
                    self.overflowed |= bool(mask & 0x4000)
                    name = data[offset + 16 : offset + 16 + length].rstrip(b"\0")
                    if mask & 0x80 and name.endswith(b".xml"):
                        self.counts[os.fsdecode(name)] += 1
                    offset += 16 + length
                self.pending = data[offset:]

    async def close(self) -> None:
        await asyncio.sleep(0.2)  # the last renames' events reach the queue
        self.drain()
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


# --- one run --------------------------------------------------------------------------------


@dataclass
class Run:
    cluster: h.Cluster
    standin: h.Process
    dir: Path
    name: str
    args: argparse.Namespace
    jobs: int
    restart: bool
    dsn: str = ""
    enqueued: float = 0.0
    slots: list[Slot] = field(default_factory=list)
    conn: Any = None

    async def db(self) -> Any:
        """The harness's connection, reconnected (for up to 60 s) after a fault closed it."""
        deadline = time.monotonic() + 60
        while self.conn is None or self.conn.is_closed():
            try:
                self.conn = await h.harness_connection(self.dsn)
            except DB_UNAVAILABLE:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        return self.conn

    async def query(self, sql: str, *args: Any) -> list[Any]:
        while True:
            conn = await self.db()
            try:
                return list(await conn.fetch(sql, *args))
            except DB_UNAVAILABLE:
                conn.terminate()
                await asyncio.sleep(0.2)

    async def value(self, sql: str, *args: Any) -> Any:
        return (await self.query(sql, *args))[0][0]

    async def prepare(self) -> None:
        self.dsn = await h.create_database(self.cluster, self.name)
        conn = await self.db()
        await h.make_npcs(conn, self.jobs)
        if self.jobs > self.args.warmed:
            await d.warm_standin(self.standin, await d.prompt_records(conn))
            self.args.warmed = self.jobs
        storage = h.storage_root(self.dir)
        self.uploads = Uploads(storage / h.BUCKET)
        env = {
            **h.npcforge_env(self.dsn, self.standin.url, storage, self.args.concurrency),
            "NPCFORGE_LEASE_SECONDS": f"{self.args.lease_seconds:g}",
            "NPCFORGE_POLL_SECONDS": f"{self.args.poll_seconds:g}",
            "NPCFORGE_SHUTDOWN_SECONDS": "10",
        }
        self.slots = [
            Slot(f"worker-{'ab'[i] if i < 2 else i}", env, self.dir, self.restart)
            for i in range(self.args.workers)
        ]
        for slot in self.slots:
            slot.start()
        await h.wait_for_backends(conn, "npcforge-listener", len(self.slots))
        await h.wait_for_backends(conn, "npcforge-worker", len(self.slots))
        await asyncio.sleep(0.5)
        await self.standin.reset()
        await conn.execute("UPDATE npcs SET generation_job_status = 'queued'")
        self.enqueued = time.time()

    async def held_by(self, pid: int) -> int:
        return int(
            await self.value(
                "SELECT count(*) FROM npcs WHERE generation_job_status = 'processing' "
                "AND generation_job_lease_owner LIKE '%:' || $1::text || ':%'",
                str(pid),
            )
        )

    async def finished(self, fault: asyncio.Task[None]) -> bool:
        deadline = None
        while True:
            if fault.done():
                fault.result()
                deadline = deadline or time.monotonic() + self.args.deadline
                done = await self.value(
                    "SELECT count(*) FROM npcs WHERE generation_job_status IN ('succeeded', 'failed')"
                )
                if done >= self.jobs:
                    return True
                if time.monotonic() > deadline:
                    return False
            await asyncio.sleep(0.25)

    async def audit(self) -> dict[str, Any]:
        rows = await self.query(AUDIT_ROWS)
        attempts = await self.query(AUDIT_ATTEMPTS)
        arrivals = await self.standin.bench_get("/_bench/arrivals")
        names = {r["name"]: r["id"] for r in rows}
        calls = Counter(names.get(n) for _, n in arrivals)
        statuses = Counter(r["status"] for r in rows)
        won = Counter(a["npc_id"] for a in attempts if a["outcome"] == "succeeded")
        job_ids: dict[Any, set[Any]] = {}
        for a in attempts:
            job_ids.setdefault(a["npc_id"], set()).add(a["job_id"])
        late = missing = 0
        done_at = {}
        for r in rows:
            if r["status"] == "succeeded":
                done_at[r["id"]] = r["committed"] or r["finished"]
                try:
                    st = (self.dir / "storage" / h.BUCKET / f"{r['id']}.xml").stat()
                except FileNotFoundError:
                    missing += 1
                    continue
                missing += st.st_size != r["size"]
                late += max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 > (r["committed"] or math.inf)
        interrupted = {a["npc_id"] for a in attempts if a["outcome"] != "succeeded"}
        interrupted |= {npc for npc, n in calls.items() if n > 1 and npc}
        lapsed = [(a["worker_id"], a["finished"]) for a in attempts if a["error_code"] == "WORKER_LOST"]  # fmt: skip
        last = max((done_at[n] for n in interrupted if n in done_at), default=None)
        uploads = self.uploads.counts.values()
        # fmt: off
        return {
            "jobs": len(rows), "statuses": dict(statuses), "lapsed": lapsed,
            "lost": len(rows) - statuses.get("succeeded", 0),
            "attempt_outcomes": dict(Counter(a["outcome"] for a in attempts)),
            "succeeded_twice": sum(n > 1 for n in won.values()),
            "two_job_ids": sum(len(ids) > 1 for ids in job_ids.values()),
            "retried": sum(r["attempts"] > 1 for r in rows),
            "generated_twice": sum(n > 1 for npc, n in calls.items() if npc),
            "extra_calls": sum(n - 1 for npc, n in calls.items() if npc and n > 1),
            "uploaded_twice": sum(n > 1 for n in uploads),
            "extra_uploads": sum(n - 1 for n in uploads if n > 1),
            "overflowed": self.uploads.overflowed, "late_writes": late, "missing_files": missing,
            "interrupted": len(interrupted), "last_interrupted_done": last,
            "times": sorted(done_at.values()),
        }
        # fmt: on

    def logged_successes(self) -> int:
        logs = [proc.log_path for slot in self.slots for proc in slot.procs]
        return sum(p.read_text(errors="replace").count('"action":"succeeded"') for p in logs)


AUDIT_ROWS = """
SELECT n.id, n.name, n.generation_job_status::text AS status, n.generation_job_attempts AS attempts,
       n.content_size_bytes AS size,
       extract(epoch FROM pg_xact_commit_timestamp(n.xmin))::float8 AS committed,
       extract(epoch FROM n.generation_job_finished_at)::float8 AS finished
  FROM npcs n
"""
AUDIT_ATTEMPTS = """
SELECT job_id, npc_id, worker_id, outcome, error_code,
       extract(epoch FROM finished_at)::float8 AS finished
  FROM npc_generation_attempts
"""


# --- the faults -----------------------------------------------------------------------------

Inject = Callable[[Run, dict[str, Any]], Coroutine[Any, Any, None]]


async def _until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


async def no_fault(run: Run, log: dict[str, Any]) -> None:
    log["start"] = log["end"] = time.time()


async def kill_one(run: Run, log: dict[str, Any]) -> None:
    pid = run.slots[1].kill()
    log["start"] = log["end"] = time.time()
    assert pid is not None, "worker-b was not running when the fault began"
    log["kills"].append((pid, log["start"]))
    log["facts"]["jobs held by the killed worker"] = await run.held_by(pid)


async def every_period(log: dict[str, Any], action: Callable[[int], Awaitable[int]]) -> int:
    """`action(index)` every LOOP_PERIOD_S for LOOP_SPAN_S; the sum of what it returned."""
    log["start"] = time.time()
    total = 0
    for index in range(int(LOOP_SPAN_S / LOOP_PERIOD_S)):
        await _until(log["start"] + index * LOOP_PERIOD_S)
        total += await action(index)
    await _until(log["start"] + LOOP_SPAN_S)
    log["end"] = time.time()
    return total


async def kill_loop(run: Run, log: dict[str, Any]) -> None:
    async def kill(index: int) -> int:
        pid = run.slots[index % len(run.slots)].kill()
        if pid is None:
            return 0
        log["kills"].append((pid, time.time()))
        return await run.held_by(pid)

    held = await every_period(log, kill)
    log["facts"].update(kills=len(log["kills"]), jobs_held_by_killed_workers=held)


def pg_restart(mode: str) -> Inject:
    async def inject(run: Run, log: dict[str, Any]) -> None:
        processing = await run.value(
            "SELECT count(*) FROM npcs WHERE generation_job_status = 'processing'"
        )
        log["start"] = time.time()
        await asyncio.to_thread(h.stop_server, run.cluster.pg, mode)
        await asyncio.sleep(PG_DOWN_S)
        await asyncio.to_thread(h.start_server, run.cluster.pg)
        log["end"] = time.time()
        log["facts"].update(
            mode=mode,
            down_s=round(log["end"] - log["start"], 2),
            jobs_processing_at_stop=processing,
        )

    return inject


TERMINATE = f"SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM ({NPCFORGE_BACKENDS}) b"


async def terminate_loop(run: Run, log: dict[str, Any]) -> None:
    log["facts"]["backends terminated"] = await every_period(log, lambda _: run.value(TERMINATE))


async def slots_full(run: Run, log: dict[str, Any]) -> None:
    """Every connection slot taken by idle sessions, npcforge's backends terminated, every
    freed slot taken again for SLOTS_FULL_S, then released."""
    hoard: list[Any] = []

    async def grab() -> bool:
        with contextlib.suppress(asyncpg.exceptions.TooManyConnectionsError):
            hoard.append(await asyncpg.connect(h.harness_dsn(run.dsn)))
            return True
        return False

    while await grab():
        pass
    monitor = await run.db()
    log["start"] = time.time()
    terminated = await monitor.fetchval(TERMINATE)
    seen = []
    while time.time() < log["start"] + SLOTS_FULL_S:
        if not await grab():
            await asyncio.sleep(0.02)
        seen.append(len(await monitor.fetch(NPCFORGE_BACKENDS)))
    log["end"] = time.time()
    await asyncio.gather(*(conn.close() for conn in hoard), return_exceptions=True)
    log["facts"].update(
        hoarded=len(hoard),
        backends_terminated=terminated,
        npcforge_connections_while_full=(min(seen), max(seen)),
    )


async def idle_xmin(run: Run, log: dict[str, Any]) -> None:
    idle = await asyncpg.connect(h.harness_dsn(run.dsn))
    mb = "SELECT pg_total_relation_size('npcs') / 1048576.0"
    sizes = [await run.value(mb)]
    log["start"] = time.time()
    await idle.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    await idle.fetchval("SELECT txid_current() + count(*) FROM npcs")
    await _until(log["start"] + IDLE_XMIN_S)
    sizes.append(await run.value(mb))
    await idle.execute("ROLLBACK")
    log["end"] = time.time()
    await idle.close()
    await asyncio.sleep(10)
    sizes.append(await run.value(mb))
    log["facts"]["npcs MB (before, at release, 10 s later)"] = [round(x, 1) for x in sizes]


@dataclass(frozen=True)
class Scenario:
    summary: str
    span_s: float  # planned fault length, to size the load
    restart: bool  # the supervisor restarts a worker that exits
    crash: bool  # a process dies without cleaning up: a second model call is expected
    inject: Inject


# fmt: off
SCENARIOS = {
    "kill-one": Scenario("SIGKILL worker-b mid-load, not restarted; worker-a finishes everything",
                         0, False, True, kill_one),
    "kill-loop": Scenario("SIGKILL a worker every 2 s for 20 s (a, b, a, …), each restarted after "
                          "0.1 s", LOOP_SPAN_S, True, True, kill_loop),
    "pg-restart-fast": Scenario(f"pg_ctl stop -m fast, {PG_DOWN_S:g} s down, pg_ctl start",
                                PG_DOWN_S + 2, True, False, pg_restart("fast")),
    "pg-restart-immediate": Scenario(f"pg_ctl stop -m immediate (crash recovery at start), "
                                     f"{PG_DOWN_S:g} s down", PG_DOWN_S + 2, True, True,
                                     pg_restart("immediate")),
    "terminate-loop": Scenario("pg_terminate_backend on every npcforge backend every 2 s for 20 s",
                               LOOP_SPAN_S, True, False, terminate_loop),
    "slots-full": Scenario(f"all max_connections taken; npcforge backends terminated; every freed "
                           f"slot taken again for {SLOTS_FULL_S:g} s", SLOTS_FULL_S, True, False,
                           slots_full),
    "idle-xmin": Scenario(f"a REPEATABLE READ transaction with an xid sits idle {IDLE_XMIN_S:g} s "
                          "(xmin pinned)", IDLE_XMIN_S, True, False, idle_xmin),
}
# fmt: on
BASELINE = Scenario("no fault (the reference rate)", 0, True, False, no_fault)


# --- rates ----------------------------------------------------------------------------------


def rate(times: list[float], start: float, end: float) -> float | None:
    if end - start < 1.0:
        return None
    return (bisect.bisect_left(times, end) - bisect.bisect_left(times, start)) / (end - start)


def recovered_after(times: list[float], fault_end: float, before: float | None) -> float | None:
    """Seconds to the first 1 s window at or after the fault's end holding ≥ 80 % of `before`."""
    start = fault_end
    while before and times and start <= times[-1] - RECOVERY_WINDOW_S + 0.05:
        got = bisect.bisect_left(times, start + RECOVERY_WINDOW_S) - bisect.bisect_left(
            times, start
        )
        if got >= RECOVERED * before * RECOVERY_WINDOW_S:
            return start - fault_end
        start += 0.05
    return None


async def run_one(cluster: h.Cluster, standin: h.Process, args: argparse.Namespace, index: int,
                  name: str, scenario: Scenario, jobs: int) -> dict[str, Any]:  # fmt: skip
    wd = h.workdir(f"chaos-{index}")
    run = Run(cluster, standin, wd, f"chaos_{index}", args, jobs, scenario.restart)
    log: dict[str, Any] = {"start": 0.0, "end": 0.0, "kills": [], "facts": {}}
    h.say(f"{name}: {jobs} jobs")
    try:
        await run.prepare()
        await _until(run.enqueued + PRE_S)
        fault = asyncio.create_task(scenario.inject(run, log))
        finished = await run.finished(fault)
        await asyncio.sleep(1.0)  # a late upload would land now
        await asyncio.gather(*(slot.stop() for slot in run.slots))
        await run.uploads.close()
        audit = await run.audit()
        logged = run.logged_successes()
        unexpected = [x for slot in run.slots for x in slot.unexpected()]
        processes = sum(len(slot.procs) for slot in run.slots)
    finally:
        for slot in run.slots:
            slot.stopping = True
            slot.procs[-1].stop()
        if run.conn is not None:
            run.conn.terminate()
        await h.drop_database(cluster, run.name)
        h.remove_workdir(run.dir)
    times, start, end = audit.pop("times"), log["start"], log["end"]
    takeover = [
        max(t for w, t in audit["lapsed"] if f":{pid}:" in w) - at
        for pid, at in log["kills"]
        if any(f":{pid}:" in w for w, _ in audit["lapsed"])
    ]
    pre = rate(times, max(run.enqueued, start - PRE_WINDOW_S), start)
    last = audit.pop("last_interrupted_done")
    after_end = min(end + AFTER_WINDOW_S, times[-1] if times else end)
    next_done = bisect.bisect_left(times, end)
    # fmt: off
    result = {
        "name": name, "summary": scenario.summary, "crash": scenario.crash, "jobs": jobs,
        "finished": finished, "fault_s": end - start, "facts": log["facts"], "audit": audit,
        "pre": pre, "during": rate(times, start, end), "after": rate(times, end, after_end),
        "overall": rate(times, run.enqueued + 1, times[-1] - 1) if times else None,
        "first_after_s": times[next_done] - end if next_done < len(times) else None,
        "recovered_s": recovered_after(times, end, pre), "takeover_s": max(takeover, default=None),
        "interrupted_done_s": None if last is None else last - end,
        "wall_s": times[-1] - run.enqueued if times else None, "processes": processes,
        "unexpected_exits": unexpected, "logged_successes": logged,
    }
    # fmt: on
    result["problems"] = verdict(result)
    a = result["audit"]
    h.say(
        f"  {name}: {a['jobs']} jobs, succeeded {a['statuses'].get('succeeded', 0)}, lost "
        f"{a['lost']}, succeeded twice {a['succeeded_twice']}, late writes {a['late_writes']}, "
        f"generated twice {a['generated_twice']}, uploaded twice {a['uploaded_twice']}, pre "
        f"{pre or 0:.0f}/s, after {result['after'] or 0:.0f}/s, recovered "
        f"{result['recovered_s']}, {'; '.join(result['problems']) or 'ok'}"
    )
    return result


def verdict(r: dict[str, Any]) -> list[str]:
    a, succeeded = r["audit"], r["audit"]["statuses"].get("succeeded", 0)
    checks = [
        (a["lost"], f"{a['lost']} job(s) not succeeded: {a['statuses']}"),
        (a["succeeded_twice"], f"{a['succeeded_twice']} job(s) with two `succeeded` attempts"),
        (a["late_writes"], f"{a['late_writes']} file(s) written after their publish commit"),
        (a["missing_files"], f"{a['missing_files']} succeeded job(s) without their file"),
        (a["two_job_ids"], f"{a['two_job_ids']} NPC(s) with attempts under two job ids"),
        (a["overflowed"], "the inotify queue overflowed: upload counts are incomplete"),
        (r["unexpected_exits"], f"{len(r['unexpected_exits'])} worker exit(s) nobody asked for"),
        (not r["crash"] and a["extra_calls"], f"{a['generated_twice']} job(s) generated again although nothing crashed"),
        (r["logged_successes"] > succeeded, f"{r['logged_successes']} `job succeeded` log lines for fewer succeeded jobs"),
    ]  # fmt: skip
    return [text for failed, text in checks if failed]


async def measure(cluster: h.Cluster, args: argparse.Namespace) -> dict[str, Any]:
    args.warmed = 0
    results: list[dict[str, Any]] = []
    plan = [("baseline", BASELINE), *((n, SCENARIOS[n]) for n in args.scenarios), ("baseline-end", BASELINE)]  # fmt: skip
    async with h.standin_session(cluster, "chaos", args.delay_ms) as (_, standin):
        for index, (name, scenario) in enumerate(plan):
            rate_now = results[0]["overall"] if results else None
            planned = math.ceil((rate_now or 0) * (PRE_S + scenario.span_s + POST_S))
            jobs = args.jobs or (max(1000, min(40000, planned)) if rate_now else 6000)
            results.append(await run_one(cluster, standin, args, index, name, scenario, jobs))
    rates = [r["overall"] for r in (results[0], results[-1]) if r["overall"]]
    note = (
        f"Workload: {args.workers} workers × NPCFORGE_CONCURRENCY={args.concurrency}, stand-in "
        f"delay {args.delay_ms:g} ms, NPCFORGE_LEASE_SECONDS={args.lease_seconds:g}, "
        f"NPCFORGE_POLL_SECONDS={args.poll_seconds:g}; jobs per run in the tables"
    )
    return {"results": results, "baseline_rate": sum(rates) / max(len(rates), 1), "notes": [note]}


def report(args: argparse.Namespace, data: dict[str, Any]) -> str:
    base = data["baseline_rate"]

    def ratio(value: float | None) -> str:
        return "–" if value is None or not base else f"× {value / base:.2f}"

    def num(value: float | None, digits: int = 1) -> str:
        return "–" if value is None else f"{value:,.{digits}f}"

    outcome, recovery, facts = [], [], []
    for r in data["results"]:
        a = r["audit"]
        other = ", ".join(f"{k} {v}" for k, v in a["attempt_outcomes"].items() if k != "succeeded")
        verdict = "**" + "; ".join(r["problems"]) + "**" if r["problems"] else "ok"
        recovered = "not within the load" if r["recovered_s"] is None else num(r["recovered_s"])
        # fmt: off
        outcome.append([f"`{r['name']}`", f"{a['jobs']:,}", a["statuses"].get("succeeded", 0),
                        a["lost"], a["succeeded_twice"], a["late_writes"],
                        f"{a['generated_twice']} ({a['extra_calls']})",
                        f"{a['uploaded_twice']} ({a['extra_uploads']})", other or "–",
                        len(r["unexpected_exits"]), verdict])
        recovery.append([f"`{r['name']}`", num(r["fault_s"]), num(r["pre"], 0), ratio(r["pre"]),
                         ratio(r["during"]), ratio(r["after"]), ratio(r["overall"]),
                         num(r["first_after_s"], 2), recovered, num(r["takeover_s"]),
                         f"{a['interrupted']} ({num(r['interrupted_done_s'])})"])
        # fmt: on
        if not r["name"].startswith("baseline"):
            said = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in r["facts"].items())
            facts.append(
                f"- `{r['name']}`: {r['summary']}. {said}. Jobs retried: {a['retried']}; "
                f"wall {num(r['wall_s'])} s; worker processes run: {r['processes']}."
            )
    outcome_table = h.table(
        "scenario|jobs|succeeded|lost|succeeded twice|written after publish|generated twice "
        "(extra calls)|uploaded twice (extra uploads)|other attempt rows|unasked worker exits|"
        "verdict",
        outcome,
    )
    recovery_table = h.table(
        "scenario|fault window s|jobs/s before fault|before|during|after (10 s)|whole drain|first "
        "job done after fault end, s|back to ≥ 80 % of before, s|SIGKILL → its jobs requeued, s "
        "(max)|interrupted jobs (last done, s after fault end)",
        recovery,
    )
    note = (
        "> The machine is 2 shared cores: compare scenarios with the baseline of the same run "
        "(ratios), not absolute rates across runs."
    )
    return h.page(
        data,
        "What came out (every row must be `succeeded` exactly once):",
        outcome_table,
        f"Throughput and recovery (ratios to the fault-free rate, {base:.0f} jobs/s: the mean of "
        "`baseline` and `baseline-end`):",
        recovery_table,
        "What each fault did:",
        "\n".join(facts),
        METHOD,
        note=note,
    )


METHOD = f"""How it is measured (`bench/chaos.py`):
- Load: a fresh database per run, its NPCs queued by one UPDATE while the workers are idle;
  N is sized from the first fault-free run's rate to last {PRE_S:g} s + the fault + {POST_S:g} s.
  The fault starts {PRE_S:g} s after the enqueue. A worker that exits is started again after
  0.1 s, except in `kill-one`.
- lost: rows not `succeeded` when every job finished or the deadline after the fault passed.
  Succeeded twice: two `succeeded` attempt rows. Written after publish: a file whose
  mtime/ctime is later than the commit of its `succeeded` row (`pg_xact_commit_timestamp`).
- generated twice: the stand-in got more than one call for an NPC (expected after a crash,
  a finding otherwise). Uploaded twice: more than one rename of the key into the bucket
  (inotify). The workers' `succeeded` log lines must not outnumber the succeeded jobs.
- Rates are of `succeeded` commits: before = the {PRE_WINDOW_S:g} s before the fault; during =
  the fault window (– under 1 s); after = {AFTER_WINDOW_S:g} s from its end; whole drain and the
  reference skip the first and last second. Recovered: the first 1 s window after the fault
  holding ≥ {RECOVERED:.0%} of the before rate. SIGKILL → requeued: from a kill to the reaper's
  last WORKER_LOST attempt row for that process."""


def main() -> int:
    def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
        if args.workers < 2 and "kill-one" in args.scenarios:
            parser.error("kill-one needs --workers 2 or more")

    options = {
        "--scenarios": {"nargs": "+", "default": list(SCENARIOS), "choices": list(SCENARIOS)},
        "--jobs": {"type": int, "help": "NPCs per run (default: sized from the baseline)"},
        "--workers": 2,
        "--concurrency": 8,
        "--delay-ms": 50.0,
        "--lease-seconds": 5.0,
        "--poll-seconds": 1.0,
        "--deadline": 120.0,
    }
    settings = {"track_commit_timestamp": "on"}
    data = h.main("chaos", "", __doc__ or "", measure, report, options, check=check, cluster_settings=settings, docs=DOCS)  # fmt: skip
    failed = [r["name"] for r in data["results"] if r["problems"]]
    if failed:
        h.say(f"problems in: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
