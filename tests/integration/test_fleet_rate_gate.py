"""The fleet rate gate on real PostgreSQL: the SQL functions, and several gates sharing them.

Each gate here stands for one worker process; the multi-process runs against the OpenRouter
stand-in are in test_fleet_rate_workers.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from itertools import pairwise
from statistics import median
from typing import Any

import pytest

from npcforge.db.upstream_gate import PostgresUpstreamGate
from npcforge.errors import InternalError, LimitExceeded

LIMITER = "openrouter"


@asynccontextmanager
async def gates(dsn: str, count: int, **options: Any) -> AsyncIterator[list[PostgresUpstreamGate]]:
    options.setdefault("per_minute", None)
    options.setdefault("max_pause_wait", 10.0)
    options.setdefault("max_slot_wait", 10.0)
    made = [PostgresUpstreamGate(dsn, **options) for _ in range(count)]
    try:
        yield made
    finally:
        for gate in made:
            await gate.close()


async def acquire(conn: Any, per_minute: float, successes: int = 0, max_wait: float | None = None):
    return await conn.fetchrow(
        "SELECT * FROM npcforge_rate_acquire($1, $2, $3, $4)",
        LIMITER,
        per_minute,
        successes,
        max_wait,
    )


async def gate_connections(conn: Any) -> int:
    return await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = 'npcforge-rate-gate' AND datname = current_database()"
    )


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


# --- the SQL functions -------------------------------------------------------------------------


async def test_slots_are_spaced_by_the_cap(conn):
    slots = []
    for _ in range(5):
        asked = time.monotonic()
        slots.append(asked + (await acquire(conn, 600))["wait_s"])
    # 600 per minute: one slot every 0.1 s, handed out back to back.
    for index, slot in enumerate(slots):
        assert slot - slots[0] == pytest.approx(index * 0.1, abs=0.02)


async def test_a_slot_too_far_away_is_not_reserved(conn):
    first = await acquire(conn, 60, max_wait=0.5)
    second = await acquire(conn, 60, max_wait=0.5)
    third = await acquire(conn, 60, max_wait=0.5)
    assert first["granted"] and first["wait_s"] == pytest.approx(0, abs=0.01)
    assert not second["granted"] and second["wait_s"] == pytest.approx(1.0, abs=0.05)
    assert not third["granted"] and third["wait_s"] == pytest.approx(1.0, abs=0.05)
    assert (await acquire(conn, 60))["wait_s"] == pytest.approx(1.0, abs=0.05)


async def test_pause_halves_the_rate_once_per_episode_and_successes_bring_it_back(conn):
    await acquire(conn, 120)
    first = await conn.fetchrow("SELECT * FROM npcforge_rate_pause($1, 1.5)", LIMITER)
    assert first["seq"] == 1
    assert first["pause_s"] == pytest.approx(1.5, abs=0.01)
    assert first["rate_factor"] == 0.5
    # Echoes of the same episode (calls already in flight) extend the pause but do not halve.
    echo = await conn.fetchrow("SELECT * FROM npcforge_rate_pause($1, 1.6)", LIMITER)
    assert echo["seq"] == 2
    assert echo["rate_factor"] == 0.5
    shorter = await conn.fetchrow("SELECT * FROM npcforge_rate_pause($1, 0.2)", LIMITER)
    assert shorter["seq"] == 2  # already paused longer: nothing changes, no notification

    slot = await acquire(conn, 120)
    assert slot["seq"] == 2
    assert slot["wait_s"] == pytest.approx(1.6, abs=0.1)  # the next slot is at the pause's end
    assert slot["pause_s"] == pytest.approx(1.6, abs=0.1)
    assert slot["rate"] == 60
    # The following slot is a reduced-rate interval (1 s at 60/min) later.
    assert (await acquire(conn, 120))["wait_s"] == pytest.approx(2.6, abs=0.1)
    # Each reported success gives back one call per minute, up to the cap.
    assert (await acquire(conn, 120, successes=30))["rate"] == 90
    assert (await acquire(conn, 120, successes=500))["rate"] == 120


async def test_rate_never_drops_below_its_floor(conn):
    for _ in range(10):
        await conn.execute(
            "UPDATE npcforge_rate_limits SET paused_until = now() - interval '1 s' WHERE name = $1",
            LIMITER,
        )
        row = await conn.fetchrow("SELECT * FROM npcforge_rate_pause($1, 0.01)", LIMITER)
    assert row["rate_factor"] == 0.05


async def test_pause_notifies_every_listener(conn, db_dsn):
    received: list[str] = []
    await conn.add_listener("npcforge_rate_limits", lambda *args: received.append(args[3]))
    await conn.execute("SELECT npcforge_rate_pause($1, 2)", LIMITER)
    await wait_until(lambda: bool(received))
    assert '"seq" : 1' in received[0] and '"seconds" : 2' in received[0]


async def test_bad_cap_is_rejected(conn):
    with pytest.raises(Exception, match="p_per_minute must be positive"):
        await acquire(conn, 0)


# --- gates sharing the database ------------------------------------------------------------------


async def test_without_a_cap_a_pause_reaches_every_gate_and_calls_cost_no_round_trip(db_dsn):
    async with gates(db_dsn, 3) as (first, second, third):
        for gate in (first, second, third):
            await gate.acquire()  # connects once and learns there is no pause

        async def no_statements(*args: Any) -> Any:
            raise AssertionError("an uncapped acquire must not query the database")

        second._fetchrow = no_statements  # type: ignore[method-assign]
        for _ in range(1_000):
            await second.acquire()  # any statement would raise

        await first.on_rate_limited(1.0)
        assert first.paused_for == pytest.approx(1.0, abs=0.05)
        # The others learn through NOTIFY, within milliseconds.
        await wait_until(lambda: second.paused_for > 0.8 and third.paused_for > 0.8, 1.0)
        started = time.monotonic()
        await third.acquire()
        assert 0.85 <= time.monotonic() - started <= 1.3


async def test_a_pause_longer_than_a_job_should_wait_sends_the_job_back(db_dsn):
    async with gates(db_dsn, 2, max_pause_wait=1.0) as (first, second):
        await second.acquire()
        await first.on_rate_limited(30)
        await wait_until(lambda: second.paused_for > 25)
        with pytest.raises(LimitExceeded) as caught:
            await second.acquire()
    assert caught.value.retryable
    assert caught.value.retry_after == pytest.approx(30, abs=1)


async def test_a_gate_started_during_a_pause_honours_it(conn, db_dsn):
    await conn.execute("SELECT npcforge_rate_pause($1, 0.8)", LIMITER)
    async with gates(db_dsn, 1) as (late,):
        started = time.monotonic()
        await late.acquire()
        assert time.monotonic() - started >= 0.7


async def test_capped_gates_share_one_cap(db_dsn):
    async with gates(db_dsn, 3, per_minute=600) as fleet:
        started = time.monotonic()
        calls: list[float] = []

        async def call(gate: PostgresUpstreamGate) -> None:
            await gate.acquire()
            calls.append(time.monotonic() - started)

        await asyncio.gather(*(call(fleet[i % 3]) for i in range(12)))
    calls.sort()
    # 600 per minute for the three together: twelve calls need 1.1 s, evenly spaced.
    assert calls[-1] == pytest.approx(1.1, abs=0.15)
    gaps = [later - earlier for earlier, later in pairwise(calls)]
    assert median(gaps) == pytest.approx(0.1, abs=0.02)
    assert min(gaps) > 0.05


async def test_a_pause_voids_slots_handed_out_before_it(db_dsn):
    async with gates(db_dsn, 2, per_minute=120) as (first, second):
        await first.acquire()  # takes the immediate slot; the next is 0.5 s away
        started = time.monotonic()
        waiting = asyncio.create_task(second.acquire())
        await asyncio.sleep(0.1)
        await first.on_rate_limited(1.0)
        await waiting
        # Not at its slot (0.5 s) but after the pause (1.1 s), on a new slot.
        assert time.monotonic() - started >= 1.05


async def test_successes_restore_the_rate_without_extra_round_trips(db_dsn, conn):
    async with gates(db_dsn, 1, per_minute=600) as (gate,):
        await gate.on_rate_limited(0.05)
        await asyncio.sleep(0.1)
        await gate.acquire()
        for _ in range(100):
            await gate.on_success()
        await gate.acquire()  # reports the hundred successes
    factor = await conn.fetchval(
        "SELECT rate_factor FROM npcforge_rate_limits WHERE name = $1", LIMITER
    )
    assert factor == pytest.approx(0.5 + 100 / 600)


async def test_gate_reconnects_and_catches_up_on_a_missed_pause(db_dsn, conn):
    async with gates(db_dsn, 2) as (first, second):
        await first.acquire()
        await second.acquire()
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'npcforge-rate-gate' AND datname = current_database()"
        )
        # Sent while the other gate reconnects (asyncpg may not even report its loss at once).
        await first.on_rate_limited(5.0)
        await wait_until(lambda: second.paused_for > 1.0, 4.0)
        assert await gate_connections(conn) == 2


async def test_capped_gate_without_database_fails_retryably(pg_cluster):
    dsn = pg_cluster.dsn_for("no_such_database")
    async with gates(dsn, 1, per_minute=60, connect_wait=0.3) as (gate,):
        with pytest.raises(InternalError) as caught:
            await gate.acquire()
    assert caught.value.retryable


async def test_provider_close_closes_its_gate(db_dsn, conn):
    from npcforge.compose import build_provider
    from npcforge.config import Settings

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        OPENROUTER_API_KEY="sk-or-v1-test",
        OPENROUTER_REQUESTS_PER_MINUTE=60,
    )
    provider = build_provider(settings, db_dsn)
    gate = provider._gate  # type: ignore[attr-defined]
    assert isinstance(gate, PostgresUpstreamGate)
    await gate.acquire()
    assert await gate_connections(conn) == 1
    await provider.close()
    for _ in range(100):
        if await gate_connections(conn) == 0:
            break
        await asyncio.sleep(0.02)
    assert await gate_connections(conn) == 0
