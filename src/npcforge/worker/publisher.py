"""Publishing a validated XML: upload it and mark the job succeeded, fenced, in batches.

Publishing holds the row lock from the fencing check through the upload to the status change,
so a newer job (a `force`) or a cancel waits for it instead of interleaving; a job that is no
longer its claim's changes nothing and leaves no XML behind. Jobs that finish together are
published together (`BatchPublisher`: one transaction, one WAL flush, one storage round).

A validated XML is paid for: an upload that fails for a reason that may pass (storage 5xx,
SlowDown, a timeout, a refused connection) is tried again with backoff, the lease held, until the
claim's upload deadline. Only then does the attempt end (requeue or fail), so a storage outage
costs no extra model call.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import asyncpg

from npcforge.backoff import backoff
from npcforge.db.jobs import JobQueue
from npcforge.errors import JobError, StorageError
from npcforge.metrics import WorkerMetrics
from npcforge.storage.base import Storage, xml_key
from npcforge.worker.claims import Claim, Outcome, Outcomes, log_fields

log = logging.getLogger("npcforge.worker")

# Backoff between tries of a failed upload (full jitter, seconds).
UPLOAD_RETRY_BASE = 0.5
UPLOAD_RETRY_CAP = 5.0


class Publisher:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        storage: Storage,
        outcomes: Outcomes,
        metrics: WorkerMetrics,
    ) -> None:
        self.pool = pool
        self.storage = storage
        self.outcomes = outcomes
        self.metrics = metrics
        self.batches = BatchPublisher(self.publish_batch)

    async def publish(self, claim: Claim, data: bytes) -> Outcome:
        """Upload and mark succeeded while holding the row, trying a failed upload again in
        place until the claim's upload deadline."""
        while True:
            outcome = await self.batches.submit(claim, data)
            if outcome.status != "deferred":
                return outcome
            self.metrics.upload_retries.inc()
            # Warn once per job; the tries after it are the same story.
            (log.warning if claim.upload_failures == 1 else log.info)(
                "upload failed; trying it again without a new model call",
                extra={**log_fields(claim, self.outcomes.worker_id), "action": "upload_retry",
                       "code": outcome.error.code if outcome.error else None,
                       "storage_code": _storage_code(outcome.error),
                       "failures": claim.upload_failures, "retry_in_s": outcome.retry_in},
            )  # fmt: skip
            await asyncio.sleep(outcome.retry_in or 0.0)

    async def publish_batch(
        self, batch: list[tuple[Claim, bytes]], uploaded: Callable[[], None] = lambda: None
    ) -> list[Outcome]:
        """Publish finished jobs in one transaction. Each is fenced on its own: a job that is no
        longer its claim's is discarded, an upload that fails ends only its own attempt.
        `uploaded` is called once the uploads are done and only database writes remain."""
        async with self.pool.acquire() as conn, conn.transaction():
            jobs = JobQueue(conn)
            held = await jobs.hold_for_publish(jobs=[claim for claim, _ in batch])
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
                    outcomes[claim.lease_token] = await self.outcomes.failed(jobs, claim, failure)
            if done:
                succeeded = [(claim, Outcome("succeeded", stats=claim.stats)) for claim, _ in done]
                await jobs.finish_succeeded(
                    jobs=done,
                    attempts=[self.outcomes.row(claim, outcome) for claim, outcome in succeeded],
                    input_hashes=[claim.input_hash for claim, _ in done],
                )
                outcomes.update((claim.lease_token, outcome) for claim, outcome in succeeded)
            for claim, _ in batch:
                if claim.lease_token not in held:
                    outcomes[claim.lease_token] = await self.outcomes.fenced_off(jobs, claim, None)
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
            wait = max(wait, min(failure.retry_after, self.outcomes.max_retry_delay))
        return wait if time.monotonic() + wait < claim.upload_deadline else None


def _storage_code(error: JobError | None) -> Any:
    return (error.details or {}).get("storageCode") if error is not None else None


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
