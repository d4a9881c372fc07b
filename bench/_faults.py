"""The faults of the chaos suite, each injected into a running `Run` (bench/_fleet.py), and the
scenarios that name them.

Each fault records in its log when it began and ended (`start`, `end`), the workers it killed
(`kills`: pid, time) and what it did (`facts`, shown in the report).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import _harness as h
import asyncpg
from _fleet import Run

LOOP_PERIOD_S, LOOP_SPAN_S, PG_DOWN_S, SLOTS_FULL_S, IDLE_XMIN_S = 2.0, 20.0, 5.0, 15.0, 60.0
NPCFORGE_BACKENDS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name LIKE 'npcforge%'"
)

Inject = Callable[[Run, dict[str, Any]], Coroutine[Any, Any, None]]


async def until(moment: float) -> None:
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
        await until(log["start"] + index * LOOP_PERIOD_S)
        total += await action(index)
    await until(log["start"] + LOOP_SPAN_S)
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
    await until(log["start"] + IDLE_XMIN_S)
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
