"""The worker's row in `npcforge_workers`: who is alive and what it is doing, for the console.

Upserted every `interval` seconds with the jobs in flight and whether the worker drains; it
expires after three missed beats (a worker that died), and goes when the worker stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable

import asyncpg

from npcforge.db.connect import DB_UNAVAILABLE
from npcforge.db.console import WorkerRoster

log = logging.getLogger("npcforge.worker")


class Presence:
    def __init__(
        self,
        *,
        roster: WorkerRoster,
        worker_id: str,
        concurrency: int,
        in_flight: Callable[[], int],
        draining: Callable[[], bool],
        beat: Callable[[], None],
        interval: float = 5.0,
        db_timeout: float = 10.0,
    ) -> None:
        self.roster = roster
        self.worker_id = worker_id
        self.concurrency = concurrency
        self.in_flight = in_flight
        self.draining = draining
        self.beat = beat
        self.interval = interval
        self.db_timeout = db_timeout

    async def run(self) -> None:
        """Runs as the loop "presence"."""
        while True:
            self.beat()
            await self.roster.beat(
                worker_id=self.worker_id,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                concurrency=self.concurrency,
                in_flight=self.in_flight(),
                state="draining" if self.draining() else "running",
                ttl_seconds=self.interval * 3,
                timeout=self.db_timeout,
            )
            await asyncio.sleep(self.interval)

    async def leave(self) -> None:
        """Take the row away; if the database is gone, it expires by itself."""
        with contextlib.suppress(*DB_UNAVAILABLE, asyncpg.PostgresError):
            await self.roster.gone(worker_id=self.worker_id, timeout=self.db_timeout)
