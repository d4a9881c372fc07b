"""The queue's statements, each one typed method with keyword arguments: the one place that runs
them (their SQL is in queries.sql).

A JobQueue wraps a pool or a connection. The worker keeps one on its housekeeping pool and makes
one on the connection of each transaction that must hold rows (a publish, a hand-back); the API
and the operator commands make one on theirs. Writes after a claim are fenced: they name the row
as the claim holds it (npc id, job id, lease token) and change nothing when it is no longer so.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol
from uuid import UUID

import asyncpg

from npcforge.db.connect import DB_UNAVAILABLE
from npcforge.db.npcs import record_from_row
from npcforge.db.queries import q
from npcforge.db.spend import LastGeneration
from npcforge.npc import NpcRecord

# A result row (asyncpg.Record), read by column name.
Row = Mapping[str, Any]


@dataclass(slots=True)
class Lease:
    """A job a claim handed to this worker (or the adoption of a claim whose reply was lost)."""

    npc_id: UUID
    job_id: UUID
    lease_token: UUID
    attempt: int
    queued_at: datetime | None
    claimed_at: datetime
    # The record came with the claim (None there: the NPC was deleted); an adopted job has none.
    record: NpcRecord | None = None
    record_loaded: bool = False
    # Started with force: call the model even when the record's file could be reused.
    force: bool = False
    # What the NPC's last successful generation was made from, loaded with the record (None:
    # there is none).
    last_generation: LastGeneration | None = None


class Fenced(Protocol):
    """A job's row as one claim holds it: what every write after the claim is fenced by."""

    @property
    def npc_id(self) -> UUID: ...

    @property
    def job_id(self) -> UUID: ...

    @property
    def lease_token(self) -> UUID: ...


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One `npc_generation_attempts` row."""

    job_id: UUID
    npc_id: UUID
    attempt: int
    worker_id: str
    started_at: datetime
    outcome: str
    error_code: str | None = None
    error_message: str | None = None
    model: str | None = None
    generation_id: str | None = None
    request_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    retries: int = 0
    duration_ms: int = 0


_ATTEMPT_COLUMNS = tuple(field.name for field in dataclasses.fields(AttemptRow))


@dataclass(frozen=True, slots=True)
class Reaped:
    """A job taken back from a worker whose lease ran out: `queued` again, or `failed`."""

    npc_id: UUID
    job_id: UUID | None
    status: str
    attempts: int
    owner: str | None


@dataclass(frozen=True, slots=True)
class QueueStats:
    depth: int
    oldest_age: float


class JobQueue:
    def __init__(self, db: Any) -> None:
        self._db = db  # an asyncpg pool or connection

    # --- the worker: claims and leases --------------------------------------------------

    async def claim(
        self,
        *,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        skip_owners: Collection[UUID] = (),
        timeout: float | None = None,
    ) -> list[Lease]:
        """Up to `limit` runnable jobs, oldest first, each with its record; none of an owner
        in `skip_owners` (whose daily budget is spent)."""
        rows = await self._db.fetch(
            q("claim_jobs"), limit, worker_id, lease_seconds, list(skip_owners), timeout=timeout
        )
        return [_lease(row, npc_id=row["claimed_id"], with_record=True) for row in rows]

    async def adopt_lost_claims(
        self, *, worker_id: str, known: Collection[UUID], timeout: float | None = None
    ) -> list[Lease]:
        """Jobs `worker_id` holds whose lease tokens are not among `known`: a claim whose reply
        never arrived may have committed them."""
        rows = await self._db.fetch(q("adopt_lost_claims"), worker_id, list(known), timeout=timeout)
        return [_lease(row, npc_id=row["id"], with_record=False) for row in rows]

    async def renew_leases(
        self,
        *,
        worker_id: str,
        tokens: Collection[UUID],
        lease_seconds: float,
        timeout: float | None = None,
    ) -> set[UUID]:
        """Renew every lease of `tokens` at once; the tokens that are still this worker's."""
        rows = await self._db.fetch(
            q("renew_leases"), worker_id, list(tokens), lease_seconds, timeout=timeout
        )
        return {row["lease_token"] for row in rows}

    async def reap_expired_leases(
        self,
        *,
        max_attempts: int,
        lease_seconds: float,
        keep: Collection[UUID],
        timeout: float | None = None,
    ) -> list[Reaped]:
        """Take back jobs whose lease ran out (never those of the leases in `keep`)."""
        rows = await self._db.fetch(
            q("reap_expired_leases"), max_attempts, lease_seconds, list(keep), timeout=timeout
        )
        return [
            Reaped(
                npc_id=row["id"],
                job_id=row["job_id"],
                status=row["status"],
                attempts=row["attempts"],
                owner=row["owner"],
            )
            for row in rows
        ]

    async def release(self, *, worker_id: str, tokens: Collection[UUID]) -> set[UUID]:
        """Hand unfinished jobs back to the queue, the interrupted attempt not counted; the ids
        of the NPCs whose jobs went back."""
        rows = await self._db.fetch(q("release_jobs"), worker_id, list(tokens))
        return {row["id"] for row in rows}

    # --- the worker: outcomes (fenced) --------------------------------------------------

    async def hold_for_publish(self, *, jobs: Sequence[Fenced]) -> set[UUID]:
        """Lock the rows still held by these claims until the transaction ends; their tokens."""
        rows = await self._db.fetch(
            q("lock_jobs_for_publish"),
            [job.npc_id for job in jobs],
            [job.job_id for job in jobs],
            [job.lease_token for job in jobs],
        )
        return {row["lease_token"] for row in rows}

    async def finish_succeeded(
        self,
        *,
        jobs: Sequence[tuple[Fenced, bytes]],
        attempts: Sequence[AttemptRow],
        input_hashes: Sequence[str | None] = (),
    ) -> None:
        """Mark each (job, stored file) succeeded, with its attempt row and a kept copy of the
        file only if it was; so is, for reuse, the hash of the inputs each file was made from
        (`input_hashes`, one per job, None or left out: nothing remembered)."""
        made_from = list(input_hashes) or [None] * len(jobs)
        await self._db.execute(
            q("finish_succeeded_jobs"),
            [job.npc_id for job, _ in jobs],
            [job.job_id for job, _ in jobs],
            [job.lease_token for job, _ in jobs],
            [len(data) for _, data in jobs],
            *_attempt_columns(attempts),
            [data.decode("utf-8", errors="replace") for _, data in jobs],
            made_from,
            [
                None if made is None else hashlib.sha256(data).hexdigest()
                for made, (_, data) in zip(made_from, jobs, strict=True)
            ],
        )

    async def requeue(self, *, job: Fenced, delay: float, error: Mapping[str, Any]) -> bool:
        """Hand the job back to run again after `delay` seconds; False if it was not ours."""
        status = await self._db.execute(
            q("requeue_for_retry"), job.npc_id, job.job_id, job.lease_token, float(delay), error
        )
        return _changed(status)

    async def fail(self, *, job: Fenced, error: Mapping[str, Any]) -> bool:
        """End the job failed with `error`; False if it was not ours."""
        status = await self._db.execute(
            q("fail_job"), job.npc_id, job.job_id, job.lease_token, error
        )
        return _changed(status)

    async def record_attempts(self, *, attempts: Sequence[AttemptRow]) -> None:
        if attempts:
            await self._db.execute(q("insert_attempts"), *_attempt_columns(attempts))

    async def committed_outcome(
        self, *, job_id: UUID, attempt: int, worker_id: str, started_at: datetime
    ) -> str | None:
        """The outcome a finalize of this claim committed, if one did (its reply was lost)."""
        outcome: str | None = await self._db.fetchval(
            q("committed_attempt_outcome"), job_id, attempt, worker_id, started_at
        )
        return outcome

    # --- the worker: the queue's state --------------------------------------------------

    async def next_run_after(
        self, *, skip_owners: Collection[UUID] = (), timeout: float | None = None
    ) -> timedelta | None:
        """How long until the earliest queued job (of an owner not in `skip_owners`) is due
        (None when nothing is queued)."""
        wait: timedelta | None = await self._db.fetchval(
            q("next_run_after"), list(skip_owners), timeout=timeout
        )
        return wait

    async def stats(self, *, timeout: float | None = None) -> QueueStats | None:
        row = await self._db.fetchrow(q("queue_stats"), timeout=timeout)
        return None if row is None else QueueStats(row["depth"], row["oldest_age"])

    async def ping(self, *, timeout: float | None = None) -> bool:
        """Whether the database answers within `timeout` seconds."""
        try:
            await self._db.fetchval(q("worker_db_ping"), timeout=timeout)
        except (*DB_UNAVAILABLE, asyncpg.PostgresError):
            return False
        return True

    # --- starting jobs ----------------------------------------------------------------

    async def enqueue(self, *, npc_ids: Sequence[UUID], force: bool) -> list[Row]:
        """Queue a job for each NPC, in order, all or none (the first missing or busy NPC
        raises); rows of (npc_id, job_id)."""
        rows: list[Row] = await self._db.fetch(q("enqueue"), list(npc_ids), force)
        return rows

    async def enqueue_where(self, *, statuses: Sequence[str] | None, force: bool) -> list[Row]:
        """Queue every live NPC whose job status is among `statuses` (None: any, 'none': no job
        yet); rows of (npc_id, job_id), job_id None where a busy job was left alone."""
        rows: list[Row] = await self._db.fetch(
            q("enqueue_where"), None if statuses is None else list(statuses), force
        )
        return rows

    async def enqueue_by_update(self, *, npc_id: UUID) -> UUID | None:
        """The plain-SQL enqueue, as a user types it in psql; the job id the trigger gave."""
        job_id: UUID | None = await self._db.fetchval(q("enqueue_by_update"), npc_id)
        return job_id

    async def start_for_owner(self, *, npc_id: UUID, owner: UUID | None, force: bool) -> Row:
        """The API's start: `found`, `previous_status`, and `job_id`/`submitted_at` when a job
        was started (owner None: any owner)."""
        row: Row = await self._db.fetchrow(q("start_job_for_owner"), npc_id, owner, force)
        return row

    # --- reading jobs -------------------------------------------------------------------

    async def status(self, *, npc_id: UUID) -> Row | None:
        """The NPC's current job (None when there is no such NPC)."""
        row: Row | None = await self._db.fetchrow(q("job_status"), npc_id)
        return row

    async def statuses(self, *, npc_ids: Sequence[UUID]) -> list[Row]:
        """`status` for many NPCs in one statement (a row for each one that exists)."""
        rows: list[Row] = await self._db.fetch(q("job_status_many"), npc_ids)
        return rows

    async def history(
        self,
        *,
        npc_id: UUID,
        owner: UUID | None,
        after: tuple[datetime | None, UUID | None],
        limit: int,
    ) -> list[Row]:
        """The NPC's jobs with their attempts, newest first, from after the keyset cursor
        `after` (sort time, job id) or the start; `found` is 0 on every row when the NPC is
        missing, foreign or deleted."""
        rows: list[Row] = await self._db.fetch(
            q("list_generation_jobs"), npc_id, owner, after[0], after[1], limit
        )
        return rows

    async def recent(self, *, status: str | None, limit: int) -> list[Row]:
        """The most recently updated jobs, of one status or any."""
        rows: list[Row] = await self._db.fetch(q("jobs_list"), status, limit)
        return rows

    async def failed_codes(self) -> set[str]:
        """The error codes failed jobs hold now (codes other systems wrote included)."""
        return {row["code"] for row in await self._db.fetch(q("jobs_failed_codes"))}

    async def health(self) -> Row:
        """What `npcforge doctor` checks of the queue: queued, unclaimable and unleased jobs,
        and Database Webhooks left on npcs."""
        row: Row = await self._db.fetchrow(q("doctor_queue"))
        return row

    # --- operators --------------------------------------------------------------------

    async def retry_failed_job(self, *, npc_id: UUID) -> list[Row]:
        """Queue the NPC's failed job again (a new job id); rows of (npc_id, job_id)."""
        rows: list[Row] = await self._db.fetch(q("jobs_retry_one"), npc_id)
        return rows

    async def retry_failed(self, *, code: str | None) -> list[Row]:
        """Queue every failed job again, or those failed with `code` (cancelled ones only when
        `code` names CANCELLED)."""
        rows: list[Row] = await self._db.fetch(q("jobs_retry_failed"), code)
        return rows

    async def cancel(self, *, npc_id: UUID) -> list[Row]:
        """End the NPC's queued or running job as failed/CANCELLED."""
        rows: list[Row] = await self._db.fetch(q("jobs_cancel"), npc_id)
        return rows


def _lease(row: Row, *, npc_id: UUID, with_record: bool) -> Lease:
    """A claim_jobs row (which carries the record, NULL columns when the NPC was deleted, and
    the last generation, NULL columns when there is none) or an adopt_lost_claims row."""
    record = record_from_row(row) if with_record and row["id"] is not None else None
    last = None
    if with_record and row["last_input_hash"] is not None:
        last = LastGeneration(
            row["last_input_hash"], row["last_xml_sha256"], row["last_size_bytes"]
        )
    return Lease(
        npc_id=npc_id,
        job_id=row["job_id"],
        lease_token=row["lease_token"],
        attempt=row["attempt"],
        queued_at=row["queued_at"],
        claimed_at=row["claimed_at"],
        record=record,
        record_loaded=with_record,
        force=row["job_force"],
        last_generation=last,
    )


def _attempt_columns(attempts: Sequence[AttemptRow]) -> list[list[Any]]:
    """Attempt rows as column arrays, the shape `unnest($1::…[], $2::…[], …)` takes."""
    return [[getattr(row, name) for row in attempts] for name in _ATTEMPT_COLUMNS]


def _changed(status: str) -> bool:
    """Whether an UPDATE's command tag counts a row."""
    return not status.endswith(" 0")
