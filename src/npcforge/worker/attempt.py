"""One job attempt, start to end: load → generate → validate (→ repair) → publish → finalize.

Every write after the claim is fenced by (npc id, job id, lease token): a job that was
superseded, cancelled or lost its lease changes nothing and leaves no XML behind. Publishing
holds the row lock from the fencing check through the upload to the status change, so a newer
job (a `force`) or a cancel waits for it instead of interleaving.

A validated XML is paid for: an upload that fails for a reason that may pass (storage 5xx,
SlowDown, a timeout, a refused connection) is tried again with backoff, the lease held, for up
to the job deadline after the XML was made. Only then does the attempt end (requeue or fail), so
a storage outage costs no extra model call.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg

from npcforge.backoff import backoff
from npcforge.db.npcs import load_npc
from npcforge.db.queries import q
from npcforge.errors import (
    AiInvalidXml,
    AiTimeout,
    InternalError,
    JobError,
    NpcNotFound,
    RecordInvalid,
    StorageError,
)
from npcforge.generation.base import CallStats, Generated, Provider, RepairRequest, call_stats_of
from npcforge.generation.recordcheck import record_problems
from npcforge.generation.xmlrules import check_npc_xml
from npcforge.metrics import WorkerMetrics
from npcforge.npc import NpcRecord
from npcforge.storage.base import Storage, xml_key

log = logging.getLogger("npcforge.worker")

Phase = Literal["producing", "finalizing"]
# "deferred" never leaves the runner: an upload to try again, nothing written.
OutcomeStatus = Literal["succeeded", "failed", "retry", "discarded", "released", "deferred"]
# Backoff between tries of a failed upload (full jitter, seconds).
UPLOAD_RETRY_BASE = 0.5
UPLOAD_RETRY_CAP = 5.0
# Backoff between attempts of a job (full jitter, seconds), unless the failure named a delay.
NEXT_ATTEMPT_BASE = 2.0
NEXT_ATTEMPT_CAP = 300.0


@dataclass(slots=True)
class Claim:
    npc_id: UUID
    job_id: UUID
    lease_token: UUID
    attempt: int
    queued_at: datetime | None
    claimed_at: datetime
    started_mono: float = field(default_factory=time.monotonic)
    # producing: nothing written yet, safe to cancel; finalizing: the fenced writes have begun.
    phase: Phase = "producing"
    # Why the worker gave up on this claim ("lease_lost", "shutdown"), if it did.
    abandoned: str | None = None
    # A finalize failed after it may have reached the server: its commit is in doubt.
    finalize_in_doubt: bool = False
    # The record, when it came with the claim (None there means the NPC is deleted).
    record: NpcRecord | None = None
    record_loaded: bool = False
    # The attempt's product, kept across database outages: XML bytes or the failure.
    result: bytes | JobError | None = None
    stats: CallStats = field(default_factory=CallStats)
    # Until when (monotonic) a failed upload of the result is tried again in place.
    upload_deadline: float = math.inf
    upload_failures: int = 0


@dataclass(slots=True)
class Outcome:
    status: OutcomeStatus
    error: JobError | None = None
    stats: CallStats = field(default_factory=CallStats)
    retry_in: float | None = None


class JobRunner:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        provider: Provider,
        storage: Storage,
        worker_id: str,
        max_attempts: int,
        job_deadline: float,
        metrics: WorkerMetrics,
        max_retry_delay: float = 180.0,
    ) -> None:
        self.pool = pool
        self.provider = provider
        self.storage = storage
        self.worker_id = worker_id
        self.max_attempts = max_attempts
        self.job_deadline = job_deadline
        self.metrics = metrics
        # No outside answer (a Retry-After) holds a job back longer than this.
        self.max_retry_delay = max_retry_delay
        self.publisher = BatchPublisher(self.publish_batch)

    # --- generation ---------------------------------------------------------------------

    async def generate_valid_xml(self, npc: NpcRecord, stats: CallStats) -> str:
        """The document to store: provider output that passed the validator, after at most one
        repair round, as the validator saw it (see `check_npc_xml`)."""
        try:
            async with asyncio.timeout(self.job_deadline):
                first = await self.provider.generate(npc)
                _merge_stats(stats, first)
                checked = check_npc_xml(first.xml, npc)
                if checked.xml is not None:
                    return checked.xml
                log.info(
                    "output failed validation; asking for a repair",
                    extra={"action": "repair", "findings": len(checked.findings)},
                )
                second = await self.provider.generate(
                    npc, RepairRequest(first.xml, tuple(checked.findings))
                )
                _merge_stats(stats, second)
                checked = check_npc_xml(second.xml, npc)
                if checked.xml is not None:
                    return checked.xml
        except TimeoutError:
            raise AiTimeout(
                f"generation did not finish within the {self.job_deadline:g} s job deadline"
            ) from None
        findings = checked.findings
        raise AiInvalidXml(
            f"the model's XML does not match the record ({len(findings)} problems after repair)",
            details={"findings": findings},
            request_id=stats.request_id,
        )

    # --- one attempt --------------------------------------------------------------------

    async def run(self, claim: Claim) -> Outcome:
        """Produce the result once, then finalize it.

        Database trouble raises (DB_UNAVAILABLE or another asyncpg error); calling run() again
        reuses the result already produced instead of generating anew.
        """
        if claim.result is None:
            claim.result = await self._produce(claim)
            claim.upload_deadline = time.monotonic() + self.job_deadline
        claim.phase = "finalizing"
        if isinstance(claim.result, JobError):
            return await self.fail(claim, claim.result)
        while True:
            outcome = await self.publish(claim, claim.result)
            if outcome.status != "deferred":
                return outcome
            self.metrics.upload_retries.inc()
            # Warn once per job; the tries after it are the same story.
            (log.warning if claim.upload_failures == 1 else log.info)(
                "upload failed; trying it again without a new model call",
                extra={**self.ids(claim), "action": "upload_retry",
                       "code": outcome.error.code if outcome.error else None,
                       "storage_code": _storage_code(outcome.error),
                       "failures": claim.upload_failures, "retry_in_s": outcome.retry_in},
            )  # fmt: skip
            await asyncio.sleep(outcome.retry_in or 0.0)

    async def _produce(self, claim: Claim) -> bytes | JobError:
        stats = claim.stats
        if claim.record_loaded:
            npc = claim.record
        else:
            npc = await load_npc(self.pool, claim.npc_id)  # database errors go to the caller
        if npc is None:
            return NpcNotFound("the NPC does not exist or was deleted")
        problems = record_problems(npc)
        if problems:  # no model can write these rows as meant: say which, ask nobody
            return RecordInvalid(
                f"the record holds {len(problems)} value(s) TFS cannot read as meant, first:"
                f" {problems[0].describe()}",
                details={"rows": [problem.as_detail() for problem in problems]},
            )
        gen_started = time.monotonic()
        try:
            xml = await self.generate_valid_xml(npc, stats)
        except JobError as exc:
            failed_call = call_stats_of(exc)  # what the failing provider call cost, if it says
            if failed_call is not None:
                _merge_stats(stats, Generated("", failed_call))
            if exc.request_id is None:
                exc.request_id = stats.request_id
            return exc
        except Exception as exc:
            log.exception("unexpected error from the provider", extra=self.ids(claim))
            return InternalError(f"internal error ({type(exc).__name__})")
        finally:
            self.metrics.provider_latency.observe(time.monotonic() - gen_started)
        return xml.encode("utf-8")

    async def publish(self, claim: Claim, data: bytes) -> Outcome:
        """Upload and mark succeeded while holding the row: nothing newer can interleave.

        Jobs that finish together are published together (one transaction, one WAL flush)."""
        return await self.publisher.submit(claim, data)

    async def publish_batch(
        self, batch: list[tuple[Claim, bytes]], uploaded: Callable[[], None] = lambda: None
    ) -> list[Outcome]:
        """Publish finished jobs in one transaction. Each is fenced on its own: a job that is no
        longer its claim's is discarded, an upload that fails ends only its own attempt.
        `uploaded` is called once the uploads are done and only database writes remain."""
        async with self.pool.acquire() as conn, conn.transaction():
            held = {
                row["lease_token"]
                for row in await conn.fetch(
                    q("lock_jobs_for_publish"),
                    [claim.npc_id for claim, _ in batch],
                    [claim.job_id for claim, _ in batch],
                    [claim.lease_token for claim, _ in batch],
                )
            }
            mine = [(claim, data) for claim, data in batch if claim.lease_token in held]
            failures = await self._upload(mine)
            uploaded()
            outcomes: dict[UUID, Outcome] = {}
            done: list[tuple[Claim, bytes]] = []
            for (claim, data), failure in zip(mine, failures, strict=True):
                if failure is None:
                    done.append((claim, data))
                elif (wait := self._upload_retry_in(claim, failure)) is not None:
                    outcomes[claim.lease_token] = Outcome(
                        "deferred", error=failure, stats=claim.stats, retry_in=wait
                    )
                else:  # still under the row lock: end this attempt in the same transaction
                    outcomes[claim.lease_token] = await self._finish_failed(conn, claim, failure)
            if done:
                succeeded = [(claim, Outcome("succeeded", stats=claim.stats)) for claim, _ in done]
                await conn.execute(
                    q("finish_succeeded_jobs"),
                    *_columns((c.npc_id, c.job_id, c.lease_token, len(d)) for c, d in done),
                    *_columns(self._attempt_args(c, o) for c, o in succeeded),
                )
                outcomes.update((claim.lease_token, outcome) for claim, outcome in succeeded)
            for claim, _ in batch:
                if claim.lease_token not in held:
                    outcomes[claim.lease_token] = await self._fenced_off(conn, claim, None)
        return [outcomes[claim.lease_token] for claim, _ in batch]

    async def _upload(self, jobs: list[tuple[Claim, bytes]]) -> list[StorageError | None]:
        """Upload every job's XML in one storage round; per job None or its error."""
        if not jobs:
            return []
        started = time.monotonic()
        try:
            return await self.storage.put_many(
                [(xml_key(claim.npc_id), data) for claim, data in jobs]
            )
        except Exception as exc:  # a backend broke its "never raises": fail this round only
            failed = StorageError(f"storage upload failed ({type(exc).__name__})")
            return [failed for _ in jobs]
        finally:
            took = time.monotonic() - started
            for _ in jobs:
                self.metrics.upload_latency.observe(took)

    def _upload_retry_in(self, claim: Claim, failure: StorageError) -> float | None:
        """Seconds until this failed upload is tried again, or None to end the attempt now."""
        if not failure.retryable:
            return None
        claim.upload_failures += 1
        wait = backoff(claim.upload_failures, base=UPLOAD_RETRY_BASE, cap=UPLOAD_RETRY_CAP)
        if failure.retry_after is not None:
            wait = max(wait, min(failure.retry_after, self.max_retry_delay))
        return wait if time.monotonic() + wait < claim.upload_deadline else None

    async def fail(self, claim: Claim, error: JobError) -> Outcome:
        """Requeue a retryable failure with backoff, or end the job failed; both fenced."""
        async with self.pool.acquire() as conn, conn.transaction():
            return await self._finish_failed(conn, claim, error)

    async def _finish_failed(self, conn: Any, claim: Claim, error: JobError) -> Outcome:
        stats = claim.stats
        if error.retryable and claim.attempt < self.max_attempts:
            delay = min(
                error.retry_after
                if error.retry_after is not None
                else backoff(claim.attempt - 1, base=NEXT_ATTEMPT_BASE, cap=NEXT_ATTEMPT_CAP),
                self.max_retry_delay,
            )
            status = await conn.execute(
                q("requeue_for_retry"), claim.npc_id, claim.job_id, claim.lease_token,
                float(delay), error.as_json(),
            )  # fmt: skip
            outcome = Outcome("retry", error=error, stats=stats, retry_in=delay)
        else:
            status = await conn.execute(
                q("fail_job"), claim.npc_id, claim.job_id, claim.lease_token, error.as_json()
            )
            outcome = Outcome("failed", error=error, stats=stats)
        if status.endswith(" 0"):
            return await self._fenced_off(conn, claim, error)
        await self.insert_attempt(conn, claim, outcome)
        return outcome

    async def _fenced_off(self, conn: Any, claim: Claim, error: JobError | None) -> Outcome:
        """The row is no longer this claim's. Unless our own earlier finalize committed
        without us hearing back, the result is discarded."""
        if claim.finalize_in_doubt:
            done = await conn.fetchval(
                q("committed_attempt_outcome"), claim.job_id, claim.attempt, self.worker_id,
                claim.claimed_at,
            )  # fmt: skip
            if done is not None:
                return Outcome(done, error=error, stats=claim.stats)
        outcome = Outcome("discarded", error=error, stats=claim.stats)
        await self.insert_attempt(conn, claim, outcome)
        return outcome

    async def record_attempt(self, claim: Claim, outcome: Outcome) -> None:
        async with self.pool.acquire() as conn:
            await self.insert_attempt(conn, claim, outcome)

    async def insert_attempt(self, conn: Any, claim: Claim, outcome: Outcome) -> None:
        await self.insert_attempts(conn, [(claim, outcome)])

    async def insert_attempts(self, conn: Any, attempts: list[tuple[Claim, Outcome]]) -> None:
        """One statement for any number of attempt rows."""
        if not attempts:
            return
        rows = [self._attempt_args(claim, outcome) for claim, outcome in attempts]
        await conn.execute(q("insert_attempts"), *_columns(rows))

    def _attempt_args(self, claim: Claim, outcome: Outcome) -> tuple[Any, ...]:
        stats, error = outcome.stats, outcome.error
        duration_ms = int((time.monotonic() - claim.started_mono) * 1000)
        return (
            claim.job_id, claim.npc_id, claim.attempt, self.worker_id, claim.claimed_at,
            outcome.status, error.code if error else None, error.message if error else None,
            stats.model, stats.generation_id, stats.request_id or (error.request_id if error else None),
            stats.prompt_tokens, stats.completion_tokens, stats.cost, stats.retries, duration_ms,
        )  # fmt: skip

    def ids(self, claim: Claim) -> dict[str, Any]:
        return log_fields(claim, self.worker_id)


def log_fields(claim: Claim, worker_id: str) -> dict[str, Any]:
    """The fields every log line about a job carries."""
    return {
        "job_id": str(claim.job_id),
        "npc_id": str(claim.npc_id),
        "attempt": claim.attempt,
        "worker_id": worker_id,
    }


def _storage_code(error: JobError | None) -> Any:
    return (error.details or {}).get("storageCode") if error is not None else None


def _columns(rows: Iterable[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows to column arrays, the shape `unnest($1::…[], $2::…[], …)` statements take."""
    return [list(column) for column in zip(*rows, strict=True)]


def _merge_stats(into: CallStats, generated: Generated) -> None:
    got = generated.stats
    into.model = got.model or into.model
    into.generation_id = got.generation_id or into.generation_id
    into.request_id = got.request_id or into.request_id
    if got.prompt_tokens is not None:
        into.prompt_tokens = (into.prompt_tokens or 0) + got.prompt_tokens
    if got.completion_tokens is not None:
        into.completion_tokens = (into.completion_tokens or 0) + got.completion_tokens
    if got.cost is not None:
        into.cost = (into.cost or 0.0) + got.cost
    into.retries += got.retries
    into.upstream_ms += got.upstream_ms


class BatchPublisher:
    """Group commit for finished jobs: one transaction, one WAL flush and one storage round for
    every job that finished while the previous batch was being published.

    One batch uploads at a time, so batches grow with the load (measured in W1: PostgreSQL CPU
    per job halves against four small batches at once). A lone job is published at once. The
    next batch starts when the one before has finished uploading (its last database writes and
    commit overlap the next upload), or when it has run longer than `slow_after` (a slow or stuck
    upload), up to `max_in_flight` batches, so one slow upload does not hold up every other job.
    """

    def __init__(
        self,
        publish: Callable[
            [list[tuple[Claim, bytes]], Callable[[], None]], Awaitable[list[Outcome]]
        ],
        *,
        max_batch: int = 64,
        max_in_flight: int = 4,
        slow_after: float = 0.05,
    ) -> None:
        self._publish = publish
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._slow_after = slow_after
        self._waiting: list[tuple[Claim, bytes, asyncio.Future[Outcome]]] = []
        self._started: dict[int, float] = {}  # batch in flight -> loop time it began
        self._uploading: set[int] = set()  # those of the batches still uploading
        self._batch_ids = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._started)

    async def submit(self, claim: Claim, data: bytes) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((claim, data, future))
        self._start_batches()
        return await future

    def _start_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting and len(self._started) < self._max_in_flight:
            slow_at = max((self._started[b] for b in self._uploading), default=-math.inf)
            slow_at += self._slow_after
            if self._uploading and loop.time() < slow_at:
                # A batch is uploading and still young: let the waiting jobs join the next
                # batch, which starts when this upload ends (or turns slow).
                if self._timer is None:
                    self._timer = loop.call_at(slow_at, self._on_slow)
                return
            batch, self._waiting = (
                self._waiting[: self._max_batch],
                self._waiting[self._max_batch :],
            )
            batch_id = next(self._batch_ids)
            self._started[batch_id] = loop.time()
            self._uploading.add(batch_id)
            task = loop.create_task(self._run(batch, batch_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _on_slow(self) -> None:
        self._timer = None
        self._start_batches()

    def _uploaded(self, batch_id: int) -> None:
        if batch_id in self._uploading:
            self._uploading.discard(batch_id)
            self._start_batches()

    async def _run(
        self, batch: list[tuple[Claim, bytes, asyncio.Future[Outcome]]], batch_id: int
    ) -> None:
        try:
            outcomes = await self._publish(
                [(claim, data) for claim, data, _ in batch], lambda: self._uploaded(batch_id)
            )
        except BaseException as exc:  # every job in the batch sees the failure (and retries)
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, _, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
        finally:
            del self._started[batch_id]
            self._uploading.discard(batch_id)
            self._start_batches()
