"""Coalesced job status lookups on a real database."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from apikit import queue_job
from conftest import make_npc
from npcforge.api.lookups import JobStatusLookups
from npcforge.db.connect import create_pool


class CountingPool:
    """The real pool, counting the connections handed out and the queries they run."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.batches: list[int] = []
        self.acquired = 0

    async def acquire(self) -> Any:
        self.acquired += 1
        return CountingConnection(await self.pool.acquire(), self.batches)

    async def release(self, conn: Any) -> None:
        await self.pool.release(conn.conn)


class CountingConnection:
    def __init__(self, conn: Any, batches: list[int]) -> None:
        self.conn = conn
        self.batches = batches

    async def fetch(self, sql: str, ids: list[uuid.UUID]) -> Any:
        self.batches.append(len(ids))
        return await self.conn.fetch(sql, ids)

    def is_closed(self) -> bool:
        return bool(self.conn.is_closed())  # raises, as the pool's proxy does, once released


@pytest.fixture
async def pool(db_dsn):
    pool = await create_pool(db_dsn, max_size=4)
    yield pool
    await pool.close()


async def test_concurrent_lookups_share_queries(conn, pool):
    npcs = [await make_npc(conn) for _ in range(10)]
    jobs = {npc: await queue_job(conn, npc) for npc in npcs[:5]}
    counting = CountingPool(pool)
    lookups = JobStatusLookups(counting, max_in_flight=1)
    wanted = [npcs[i % 10] for i in range(60)] + [uuid.uuid4()]
    rows = await asyncio.gather(*(lookups.fetch(npc) for npc in wanted))
    for npc, row in zip(wanted, rows, strict=True):
        if npc in npcs:
            assert row["npc_id"] == npc
            assert row["job_id"] == jobs.get(npc)
            assert row["status"] == ("queued" if npc in jobs else None)
        else:
            assert row is None
    assert len(counting.batches) <= 2  # 61 polls, at most two queries
    assert sum(counting.batches) <= 11  # each NPC asked for once per query

    # A lone lookup runs at once and sees the latest row.
    await conn.execute(
        "UPDATE npcs SET generation_job_status = 'processing' WHERE id = $1", npcs[0]
    )
    assert (await lookups.fetch(npcs[0]))["status"] == "processing"
    # One connection served every batch, and closing gives it back.
    assert counting.acquired == 1
    await lookups.close()
    assert pool.get_idle_size() == pool.get_size()


async def test_batches_are_bounded(conn, pool):
    npcs = [await make_npc(conn) for _ in range(7)]
    counting = CountingPool(pool)
    lookups = JobStatusLookups(counting, max_batch=3, max_in_flight=1)
    rows = await asyncio.gather(*(lookups.fetch(npc) for npc in npcs))
    assert [row["npc_id"] for row in rows] == npcs
    assert max(counting.batches) <= 3 and sum(counting.batches) == 7
    await lookups.close()


async def test_a_gone_poller_does_not_disturb_the_others(conn, pool):
    npc = await make_npc(conn)
    lookups = JobStatusLookups(pool)
    impatient = asyncio.ensure_future(lookups.fetch(npc))
    patient = asyncio.ensure_future(lookups.fetch(npc))
    await asyncio.sleep(0)
    impatient.cancel()
    assert (await patient)["npc_id"] == npc
    assert impatient.cancelled()
    await lookups.close()


async def test_database_errors_reach_every_waiter(conn, db_dsn):
    npc = await make_npc(conn)
    pool = await create_pool(db_dsn, max_size=2)
    await pool.close()
    lookups = JobStatusLookups(pool)
    results = await asyncio.gather(
        lookups.fetch(npc), lookups.fetch(uuid.uuid4()), return_exceptions=True
    )
    assert all(isinstance(result, Exception) for result in results)
    # The next lookup is tried again rather than stuck behind the failure.
    with pytest.raises(Exception):  # noqa: B017 (the closed pool's own error type)
        await asyncio.wait_for(lookups.fetch(npc), timeout=5)


async def test_a_kept_connection_that_died_is_replaced_before_the_answer(conn, pool):
    npc = await make_npc(conn)
    counting = CountingPool(pool)
    lookups = JobStatusLookups(counting)
    assert (await lookups.fetch(npc))["npc_id"] == npc
    await conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    # Was: this poll failed with the dead connection's error (a 503 to the poller).
    assert (await asyncio.wait_for(lookups.fetch(npc), timeout=5))["npc_id"] == npc
    # The dead connection went back to the pool, which replaced it.
    assert counting.acquired == 2
    assert (await asyncio.wait_for(lookups.fetch(npc), timeout=5))["npc_id"] == npc
    assert counting.acquired == 2
    await lookups.close()
