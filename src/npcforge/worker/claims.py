"""A claim the worker holds, and how its attempt ends.

`Claim` is a job this worker claimed and what it knows about it while the attempt runs;
`Outcome` is how the attempt ended; `Outcomes` writes that end, fenced by the claim's lease:
failed, or handed back to the queue to try again (with backoff), or discarded when the row is
no longer the claim's; every attempt leaves its attempt row.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from typing import Any, Literal, cast

from npcforge.backoff import backoff
from npcforge.db.jobs import AttemptRow, JobQueue, Lease
from npcforge.errors import JobError
from npcforge.generation.base import CallStats

Phase = Literal["producing", "finalizing"]
# "deferred" never leaves the runner: an upload to try again, nothing written. "reused": the
# NPC's stored file was made from the same inputs, no model call. "held": a daily budget is
# spent; the job went back to the queue, its attempt not counted and no attempt row written.
OutcomeStatus = Literal[
    "succeeded", "reused", "failed", "retry", "discarded", "released", "deferred", "held"
]
# Backoff between attempts of a job (full jitter, seconds), unless the failure named a delay.
NEXT_ATTEMPT_BASE = 2.0
NEXT_ATTEMPT_CAP = 300.0


LEASE_FIELDS = tuple(lease_field.name for lease_field in fields(Lease))


@dataclass(frozen=True, slots=True)
class Reused:
    """The attempt's product when the stored file can be reused: the file as stored."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Held:
    """The attempt's product when a daily budget refused the model call."""

    scope: str  # 'fleet' or 'user'


@dataclass(slots=True)
class Claim(Lease):
    """A job this worker holds (its lease), and what the worker knows while the attempt runs."""

    started_mono: float = field(default_factory=time.monotonic)
    # producing: nothing written yet, safe to cancel; finalizing: the fenced writes have begun.
    phase: Phase = "producing"
    # Why the worker gave up on this claim ("lease_lost", "shutdown"), if it did.
    abandoned: str | None = None
    # A finalize failed after it may have reached the server: its commit is in doubt.
    finalize_in_doubt: bool = False
    # The attempt's product, kept across database outages: XML bytes or the failure (or the
    # reuse of the stored file, or a budget's refusal).
    result: bytes | JobError | Reused | Held | None = None
    # What the file is made from (see generation.pricing.input_hash), when reuse applies.
    input_hash: str | None = None
    stats: CallStats = field(default_factory=CallStats)
    # Until when (monotonic) a failed upload of the result is tried again in place.
    upload_deadline: float = math.inf
    upload_failures: int = 0

    @classmethod
    def of(cls, lease: Lease) -> Claim:
        return cls(*(getattr(lease, name) for name in LEASE_FIELDS))

    def elapsed_ms(self) -> int:
        """Milliseconds since this worker claimed the job."""
        return int((time.monotonic() - self.started_mono) * 1000)


@dataclass(slots=True)
class Outcome:
    status: OutcomeStatus
    error: JobError | None = None
    stats: CallStats = field(default_factory=CallStats)
    retry_in: float | None = None


def log_fields(claim: Claim, worker_id: str) -> dict[str, Any]:
    """The fields every log line about a job carries."""
    return {
        "job_id": str(claim.job_id),
        "npc_id": str(claim.npc_id),
        "attempt": claim.attempt,
        "worker_id": worker_id,
    }


class Outcomes:
    """Writes how attempts end. Each method runs on the JobQueue of the caller's transaction."""

    def __init__(self, *, worker_id: str, max_attempts: int, max_retry_delay: float) -> None:
        self.worker_id = worker_id
        self.max_attempts = max_attempts
        # No outside answer (a Retry-After) holds a job back longer than this.
        self.max_retry_delay = max_retry_delay

    async def failed(self, jobs: JobQueue, claim: Claim, error: JobError) -> Outcome:
        """Requeue a retryable failure with backoff, or end the job failed; both fenced."""
        stats = claim.stats
        if error.retryable and claim.attempt < self.max_attempts:
            delay = min(
                error.retry_after
                if error.retry_after is not None
                else backoff(claim.attempt - 1, base=NEXT_ATTEMPT_BASE, cap=NEXT_ATTEMPT_CAP),
                self.max_retry_delay,
            )
            ours = await jobs.requeue(job=claim, delay=float(delay), error=error.as_json())
            outcome = Outcome("retry", error=error, stats=stats, retry_in=delay)
        else:
            ours = await jobs.fail(job=claim, error=error.as_json())
            outcome = Outcome("failed", error=error, stats=stats)
        if not ours:
            return await self.fenced_off(jobs, claim, error)
        await self.record(jobs, [(claim, outcome)])
        return outcome

    async def fenced_off(self, jobs: JobQueue, claim: Claim, error: JobError | None) -> Outcome:
        """The row is no longer this claim's. Unless our own earlier finalize committed
        without us hearing back, the result is discarded."""
        if claim.finalize_in_doubt:
            done = await jobs.committed_outcome(
                job_id=claim.job_id, attempt=claim.attempt, worker_id=self.worker_id,
                started_at=claim.claimed_at,
            )  # fmt: skip
            if done is not None:
                return Outcome(cast(OutcomeStatus, done), error=error, stats=claim.stats)
        outcome = Outcome("discarded", error=error, stats=claim.stats)
        await self.record(jobs, [(claim, outcome)])
        return outcome

    async def record(self, jobs: JobQueue, attempts: list[tuple[Claim, Outcome]]) -> None:
        """One statement for any number of attempt rows."""
        await jobs.record_attempts(
            attempts=[self.row(claim, outcome) for claim, outcome in attempts]
        )

    def row(self, claim: Claim, outcome: Outcome) -> AttemptRow:
        """The attempt row of `claim` ending with `outcome`."""
        stats, error = outcome.stats, outcome.error
        return AttemptRow(
            job_id=claim.job_id,
            npc_id=claim.npc_id,
            attempt=claim.attempt,
            worker_id=self.worker_id,
            started_at=claim.claimed_at,
            outcome=outcome.status,
            error_code=error.code if error else None,
            error_message=error.message if error else None,
            model=stats.model,
            generation_id=stats.generation_id,
            request_id=stats.request_id or (error.request_id if error else None),
            prompt_tokens=stats.prompt_tokens,
            completion_tokens=stats.completion_tokens,
            cost=stats.cost,
            retries=stats.retries,
            duration_ms=claim.elapsed_ms(),
        )
