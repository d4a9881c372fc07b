"""The web console's reads and the worker roster: the one place that runs their statements
(their SQL is in console.sql). Every read is bounded: counts stop at `cap`, lists have a limit.
`owner` None means every owner (the service role)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from npcforge.db.queries import q

Row = Mapping[str, Any]

# Counts on the overview stop here; the page shows "5000+" (index-only, ~1 ms per 1000).
COUNT_CAP = 5_000
# The overview groups the newest this many failed jobs by error code.
FAILURES_CAP = 1_000


@dataclass(frozen=True, slots=True)
class Overview:
    status_counts: dict[str, int]
    finished: dict[tuple[str, str], int]  # (hour|day, succeeded|failed) -> jobs
    failures: list[Row]  # by error code, from the newest `failures_cap` failed jobs
    upstream: list[Row]
    workers: list[Row]
    running: list[Row]
    cap: int
    failures_cap: int


@dataclass(frozen=True, slots=True)
class JobFilter:
    status: str | None = None
    error_code: str | None = None
    name_prefix: str | None = None


def like_prefix(text: str) -> str:
    """`text` as a LIKE prefix matched literally (lower case, wildcards escaped)."""
    return text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class ConsoleReads:
    def __init__(self, db: Any) -> None:
        self._db = db  # an asyncpg pool or connection

    @contextlib.asynccontextmanager
    async def _custom_plans(self) -> AsyncIterator[Any]:
        """A connection in a transaction whose statements are planned for their values."""
        async with contextlib.AsyncExitStack() as stack:
            conn = self._db
            if hasattr(conn, "acquire"):  # a pool
                conn = await stack.enter_async_context(self._db.acquire())
            await stack.enter_async_context(conn.transaction())
            await conn.execute(q("console_custom_plans"))
            yield conn

    async def overview(
        self, *, owner: UUID | None, cap: int = COUNT_CAP, failures_cap: int = FAILURES_CAP
    ) -> Overview:
        async with self._custom_plans() as conn:
            counts = await conn.fetch(q("console_status_counts"), owner, cap)
            failures = await conn.fetch(q("console_failures_by_code"), owner, failures_cap)
            running = await conn.fetch(q("console_running_jobs"), owner, 50)
            upstream = await conn.fetch(q("console_upstream")) if owner is None else []
            workers = await conn.fetch(q("console_workers")) if owner is None else []
        return Overview(
            status_counts={row["status"]: row["jobs"] for row in counts if row["label"] == "all"},
            finished={
                (row["label"], row["status"]): row["jobs"]
                for row in counts
                if row["label"] != "all"
            },
            failures=list(failures),
            upstream=list(upstream),
            workers=list(workers),
            running=list(running),
            cap=cap,
            failures_cap=failures_cap,
        )

    async def jobs_page(
        self,
        *,
        owner: UUID | None,
        where: JobFilter,
        after: tuple[datetime, UUID] | None,
        limit: int,
    ) -> list[Row]:
        """A page of jobs, newest change first, after the keyset cursor `after`."""
        prefix = like_prefix(where.name_prefix) if where.name_prefix else None
        async with self._custom_plans() as conn:
            rows: list[Row] = await conn.fetch(
                q("console_jobs_page"),
                owner,
                where.status,
                where.error_code,
                prefix,
                after[0] if after else None,
                after[1] if after else None,
                limit,
            )
        return rows

    async def job_changes(self, *, since: datetime, limit: int) -> list[Row]:
        """Jobs whose state changed after `since`, oldest change first (every owner)."""
        rows: list[Row] = await self._db.fetch(q("console_job_changes"), since, limit)
        return rows

    async def latest_change(self) -> datetime:
        at: datetime = await self._db.fetchval(q("console_latest_change"))
        return at

    async def attempts(self, *, npc_id: UUID, limit: int = 50) -> list[Row]:
        rows: list[Row] = await self._db.fetch(q("console_npc_attempts"), npc_id, limit)
        return rows

    async def xml_versions(self, *, npc_id: UUID, limit: int = 2) -> list[Row]:
        rows: list[Row] = await self._db.fetch(q("console_xml_versions"), npc_id, limit)
        return rows


class WorkerRoster:
    """The `npcforge_workers` rows a worker's heartbeat keeps (see 0007_console.sql)."""

    def __init__(self, db: Any) -> None:
        self._db = db

    async def beat(
        self,
        *,
        worker_id: str,
        hostname: str,
        pid: int,
        concurrency: int,
        in_flight: int,
        state: str,
        ttl_seconds: float,
        timeout: float | None = None,
    ) -> None:
        await self._db.execute(
            q("worker_heartbeat"),
            worker_id, hostname, pid, concurrency, in_flight, state, float(ttl_seconds),
            timeout=timeout,
        )  # fmt: skip

    async def gone(self, *, worker_id: str, timeout: float | None = None) -> None:
        await self._db.execute(q("worker_gone"), worker_id, timeout=timeout)
