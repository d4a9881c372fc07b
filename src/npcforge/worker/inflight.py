"""The jobs this worker is running: one task per claim, carried through database trouble, its
outcome counted and logged; given up when its lease is lost, and at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from npcforge.db.connect import DB_UNAVAILABLE
from npcforge.db.jobs import Lease
from npcforge.errors import InternalError
from npcforge.metrics import WorkerMetrics
from npcforge.worker.attempt import JobRunner
from npcforge.worker.claims import Claim, Outcome, log_fields
from npcforge.worker.supervisor import Supervisor, loop_backoff

log = logging.getLogger("npcforge.worker")

# Jobs already writing their result at the drain deadline get this long to finish, so an upload
# is never cut off half-way.
FINALIZE_GRACE_SECONDS = 5.0
# Non-connection database errors in a job before it gives up on the database for this attempt.
MAX_STATEMENT_ERRORS = 3


class InFlight:
    def __init__(
        self,
        *,
        worker_id: str,
        metrics: WorkerMetrics,
        supervisor: Supervisor,
        on_done: Callable[[], None],
    ) -> None:
        self.worker_id = worker_id
        self.metrics = metrics
        self.supervisor = supervisor
        self.on_done = on_done  # a slot is free again
        self.runner: JobRunner | None = None  # set once the worker's pools are connected
        self.running: dict[UUID, tuple[Claim, asyncio.Task[None]]] = {}
        self.done_count = 0
        # Claims this worker stopped working on without finalizing (the lease lapses, counted).
        self.dropped: set[UUID] = set()

    def start(self, lease: Lease, *, from_notify: bool) -> None:
        claim = Claim.of(lease)
        self.metrics.claimed.inc()
        (self.metrics.notify_pickups if from_notify else self.metrics.sweep_pickups).inc()
        if claim.queued_at is not None and claim.attempt == 1:
            pickup = (claim.claimed_at - claim.queued_at).total_seconds()
            self.metrics.pickup.observe(max(pickup, 0.0))
        task = asyncio.create_task(self._run(claim), name=f"job-{claim.job_id}")
        self.running[claim.lease_token] = (claim, task)
        self.metrics.in_flight.set(len(self.running))

    def lease_lost(self, claim: Claim) -> None:
        """The row is no longer this claim's (reaped, superseded, cancelled)."""
        entry = self.running.get(claim.lease_token)
        if entry is None or claim.abandoned or claim.phase != "producing":
            return  # gone, or already writing: its fenced finalize sorts itself out
        claim.abandoned = "lease_lost"
        self.metrics.lease_lost.inc()
        log.warning(
            "lease lost; abandoning the job",
            extra={**log_fields(claim, self.worker_id), "action": "lease_lost",
                   "duration_ms": claim.elapsed_ms()},
        )  # fmt: skip
        entry[1].cancel()

    async def finish(self, deadline: float) -> list[Claim]:
        """Let running jobs finish until the deadline (those writing their result a little
        longer), then cancel the rest; their claims, to hand back."""
        left = max(0.0, deadline - time.monotonic())
        if self.running:
            log.info(
                "waiting for running jobs",
                extra={"action": "drain", "count": len(self.running), "timeout_s": round(left, 1)},
            )
            if left > 0:
                await asyncio.wait([task for _, task in self.running.values()], timeout=left)
        writing = [task for claim, task in self.running.values() if claim.phase == "finalizing"]
        if writing:
            await asyncio.wait(writing, timeout=FINALIZE_GRACE_SECONDS)
        leftover = list(self.running.values())
        for claim, task in leftover:
            claim.abandoned = "shutdown"
            task.cancel()
        await asyncio.gather(*(task for _, task in leftover), return_exceptions=True)
        return [claim for claim, _ in leftover]

    # --- one job's task ------------------------------------------------------------------

    async def _run(self, claim: Claim) -> None:
        assert self.runner is not None
        log.debug("job claimed", extra={**log_fields(claim, self.worker_id), "action": "claim"})
        finished = False
        try:
            outcome = await self._attempt(claim)
            if outcome is not None:
                finished = True
                self._account(claim, outcome)
            elif not claim.abandoned:
                self.dropped.add(claim.lease_token)
        except asyncio.CancelledError:
            if claim.abandoned == "lease_lost":
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.runner.record_attempt(claim, Outcome("discarded")))
            raise
        except Exception:
            # Never expected (the attempt handles its own failures); the lease will lapse.
            self.dropped.add(claim.lease_token)
            log.exception(
                "job crashed", extra={**log_fields(claim, self.worker_id), "action": "crash"}
            )
        finally:
            self.running.pop(claim.lease_token, None)
            if finished:
                self.done_count += 1
            self.metrics.in_flight.set(len(self.running))
            self.on_done()

    async def _attempt(self, claim: Claim) -> Outcome | None:
        """Run the attempt; through database trouble, keep its result and retry the finalize.

        Returns None when the worker gave up on the claim (its lease was lost, or the database
        kept refusing a statement); the lease then lapses and the reaper takes the job back.
        """
        assert self.runner is not None
        failures = statement_errors = 0
        while True:
            try:
                return await self.runner.run(claim)
            except DB_UNAVAILABLE as exc:
                error: BaseException = exc
                self.supervisor.db_trouble("job", exc)
            except asyncpg.PostgresError as exc:
                error = exc
                statement_errors += 1
                self.metrics.db_errors.labels(loop="job").inc()
                log.error(
                    "database refused a job statement",
                    extra={**log_fields(claim, self.worker_id), "error": type(exc).__name__,
                           "sqlstate": exc.sqlstate},
                )  # fmt: skip
                if statement_errors >= MAX_STATEMENT_ERRORS:
                    if claim.result is not None:
                        return None
                    # It failed while loading: end the attempt as INTERNAL (retried later).
                    claim.result = InternalError(
                        f"database error ({type(exc).__name__})", retryable=True
                    )
            if claim.abandoned:
                return None
            if claim.phase == "finalizing":
                claim.finalize_in_doubt = True
            failures += 1
            delay = loop_backoff(failures)
            log.warning(
                "database unavailable during job; will retry",
                extra={**log_fields(claim, self.worker_id), "phase": claim.phase,
                       "error": type(error).__name__, "retry_in_s": round(delay, 2)},
            )  # fmt: skip
            await asyncio.sleep(delay)

    def _account(self, claim: Claim, outcome: Outcome) -> None:
        extra: dict[str, Any] = {
            **log_fields(claim, self.worker_id),
            "action": outcome.status,
            "duration_ms": claim.elapsed_ms(),
            "retries": outcome.stats.retries,
            "request_id": outcome.stats.request_id,
        }
        if outcome.error is not None:
            extra["code"] = outcome.error.code
        if outcome.status in ("succeeded", "reused"):
            self.metrics.succeeded.inc()
            if claim.queued_at is not None:
                self.metrics.end_to_end.observe(_age(claim.queued_at))
            if outcome.status == "reused":
                self.metrics.reused.inc()
                log.info("job succeeded with the stored file (inputs unchanged)", extra=extra)
            else:
                log.info("job succeeded", extra=extra)
        elif outcome.status == "held":
            log.debug("job waits for a daily budget (handed back uncounted)", extra=extra)
        elif outcome.status == "failed" and outcome.error is not None:
            self.metrics.failed.labels(code=outcome.error.code).inc()
            if claim.queued_at is not None:
                self.metrics.end_to_end.observe(_age(claim.queued_at))
            log.warning("job failed", extra=extra)
        elif outcome.status == "retry":
            self.metrics.retried.inc()
            log.info("job will retry", extra={**extra, "retry_in_s": outcome.retry_in})
        else:
            self.metrics.discarded.inc()
            self.metrics.lease_lost.inc()
            log.info("result discarded: job was superseded, cancelled or reaped", extra=extra)


def _age(moment: datetime) -> float:
    return max(0.0, (datetime.now(UTC) - moment).total_seconds())
