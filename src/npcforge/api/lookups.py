"""Job status lookups coalesced into one query per batch.

Pollers arrive many at a time. Instead of one pool round trip per poll, lookups that arrive
while a query is running wait for the next one, which fetches all of their rows with
`id = ANY($1)`. A lone poll still runs at once; under load the batches grow by themselves.
Every answer comes from a query that started after the poll arrived, so nothing is stale.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from uuid import UUID

import asyncpg

from npcforge.db.connect import DB_UNAVAILABLE
from npcforge.db.jobs import JobQueue

MAX_BATCH = 256


class JobStatusLookups:
    def __init__(self, pool: Any, *, max_batch: int = MAX_BATCH, max_in_flight: int = 2) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._waiting: dict[UUID, list[asyncio.Future[Any]]] = {}
        self._in_flight = 0
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Connections kept between batches (at most one per batch in flight): a pool acquire and
        # release per batch cost about as much CPU as the query itself.
        self._idle: list[Any] = []

    async def fetch(self, npc_id: UUID) -> Any:
        """The `job_status_many` row of this NPC, or None when there is no such row."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(npc_id, []).append(future)
        self._schedule_flush()
        return await future

    def _schedule_flush(self) -> None:
        if self._flush_scheduled or self._in_flight >= self._max_in_flight or not self._waiting:
            return
        self._flush_scheduled = True
        # Next loop turn: polls parsed in this one join the same batch.
        asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._in_flight >= self._max_in_flight or not self._waiting:
            return
        batch: dict[UUID, list[asyncio.Future[Any]]] = {}
        for npc_id in list(self._waiting)[: self._max_batch]:
            batch[npc_id] = self._waiting.pop(npc_id)
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _query(self, ids: list[UUID]) -> list[Any]:
        kept = self._kept()
        if kept is not None:
            try:
                return await self._fetch(kept, ids)
            except DB_UNAVAILABLE:
                # The kept connection died while idle (a server restart): ask again on one the
                # pool checks. The query only reads, so asking twice changes nothing.
                pass
        return await self._fetch(await self._pool.acquire(), ids)

    def _kept(self) -> Any:
        """A kept connection that is still open, dropping the ones the server closed."""
        while self._idle:
            conn = self._idle.pop()
            if _open(conn):
                return conn
            self._dead(conn)
        return None

    async def _fetch(self, conn: Any, ids: list[UUID]) -> list[Any]:
        try:
            rows: list[Any] = await JobQueue(conn).statuses(npc_ids=ids)
        except BaseException:
            # Whatever went wrong, the pool decides whether this connection lives on.
            await _release(self._pool, conn)
            raise
        self._idle.append(conn)
        return rows

    def _dead(self, conn: Any) -> None:
        task = asyncio.get_running_loop().create_task(_release(self._pool, conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: dict[UUID, list[asyncio.Future[Any]]]) -> None:
        try:
            rows = await self._query(list(batch))
        except asyncio.CancelledError:
            for futures in batch.values():
                for future in futures:
                    future.cancel()
            raise
        except Exception as exc:
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
        else:
            found = {row["npc_id"]: row for row in rows}
            for npc_id, futures in batch.items():
                row = found.get(npc_id)
                for future in futures:
                    if not future.done():  # the poller may have gone away
                        future.set_result(row)
        finally:
            self._in_flight -= 1
            self._schedule_flush()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._idle:
            await _release(self._pool, self._idle.pop())


def _open(conn: Any) -> bool:
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # the pool took it back when the server closed it
        return False


async def _release(pool: Any, conn: Any) -> None:
    with contextlib.suppress(Exception):
        await pool.release(conn)
