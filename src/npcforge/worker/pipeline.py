"""One job attempt, start to end: load → generate → validate (→ repair) → publish → finalize.

Every write after the claim is fenced by (npc id, job id, lease token): a job that was
superseded, cancelled or lost its lease changes nothing and leaves no XML behind.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from npcforge.db.npcs import load_npc
from npcforge.db.queries import q
from npcforge.errors import AiInvalidXml, AiTimeout, InternalError, JobError, NpcNotFound
from npcforge.generation.base import CallStats, Generated, Provider, RepairRequest
from npcforge.generation.xmlrules import validate_npc_xml
from npcforge.metrics import WorkerMetrics
from npcforge.npc import NpcRecord
from npcforge.storage.base import Storage, xml_key

log = logging.getLogger("npcforge.worker")

# Errors that mean "the database is unreachable right now", not "the statement is wrong".
DB_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


@dataclass(slots=True)
class Claim:
    npc_id: UUID
    job_id: UUID
    lease_token: UUID
    attempt: int
    queued_at: datetime | None
    claimed_at: datetime
    started_mono: float = field(default_factory=time.monotonic)
    lease_lost: bool = False
    # The attempt's product, kept across database outages: XML bytes or the failure.
    result: bytes | JobError | None = None
    stats: CallStats = field(default_factory=CallStats)


@dataclass(slots=True)
class Outcome:
    status: str  # succeeded | failed | retry | discarded | released
    error: JobError | None = None
    stats: CallStats = field(default_factory=CallStats)
    retry_in: float | None = None


def backoff_seconds(attempt: int, base: float = 2.0, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter for the next attempt of a job."""
    return random.uniform(0, min(cap, base * 2 ** max(attempt - 1, 0)))


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
    ) -> None:
        self.pool = pool
        self.provider = provider
        self.storage = storage
        self.worker_id = worker_id
        self.max_attempts = max_attempts
        self.job_deadline = job_deadline
        self.metrics = metrics

    # --- generation ---------------------------------------------------------------------

    async def generate_valid_xml(self, npc: NpcRecord, stats: CallStats) -> str:
        """Provider output that passed the validator, after at most one repair round."""
        try:
            async with asyncio.timeout(self.job_deadline):
                first = await self.provider.generate(npc)
                _merge_stats(stats, first)
                findings = validate_npc_xml(first.xml, npc)
                if not findings:
                    return first.xml
                log.info(
                    "output failed validation; asking for a repair",
                    extra={"action": "repair", "findings": len(findings)},
                )
                second = await self.provider.generate(
                    npc, RepairRequest(first.xml, tuple(findings))
                )
                _merge_stats(stats, second)
                findings = validate_npc_xml(second.xml, npc)
                if not findings:
                    return second.xml
        except TimeoutError:
            raise AiTimeout(
                f"generation did not finish within the {self.job_deadline:g} s job deadline"
            ) from None
        raise AiInvalidXml(
            f"the model's XML does not match the record ({len(findings)} problems after repair)",
            details={"findings": findings},
            request_id=stats.request_id,
        )

    # --- one attempt --------------------------------------------------------------------

    async def run(self, claim: Claim) -> Outcome:
        """Produce the result once, then finalize it. A database outage raises DB_UNAVAILABLE;
        calling run() again reuses the result already produced instead of generating anew."""
        if claim.result is None:
            claim.result = await self._produce(claim)
        if isinstance(claim.result, JobError):
            return await self.fail(claim, claim.result, claim.stats)
        published = await self.publish(claim, claim.result, claim.stats)
        return Outcome("succeeded" if published else "discarded", stats=claim.stats)

    async def _produce(self, claim: Claim) -> bytes | JobError:
        stats = claim.stats
        try:
            npc = await load_npc(self.pool, claim.npc_id)
            if npc is None:
                raise NpcNotFound("the NPC does not exist or was deleted")
            gen_started = time.monotonic()
            xml = await self.generate_valid_xml(npc, stats)
            self.metrics.provider_latency.observe(time.monotonic() - gen_started)
            return xml.encode("utf-8")
        except JobError as exc:
            if exc.request_id is None:
                exc.request_id = stats.request_id
            return exc
        except DB_UNAVAILABLE:
            raise
        except asyncpg.PostgresError as exc:
            log.exception("database error in job", extra=_ids(claim))
            return InternalError(f"database error ({type(exc).__name__})", retryable=True)
        except (
            AssertionError,
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            LookupError,
        ) as exc:
            log.exception("unexpected error in job", extra=_ids(claim))
            return InternalError(f"internal error ({type(exc).__name__})")

    async def publish(self, claim: Claim, data: bytes, stats: CallStats) -> bool:
        """Upload and mark succeeded while holding the row: nothing newer can interleave."""
        async with self.pool.acquire() as conn, conn.transaction():
            held = await conn.fetchval(
                q("lock_job_for_publish"), claim.npc_id, claim.job_id, claim.lease_token
            )
            if held is None:
                await self._insert_attempt(conn, claim, Outcome("discarded", stats=stats))
                return False
            upload_started = time.monotonic()
            await self.storage.put(xml_key(claim.npc_id), data)
            self.metrics.upload_latency.observe(time.monotonic() - upload_started)
            await conn.execute(
                q("finish_succeeded"), claim.npc_id, claim.job_id, claim.lease_token, len(data)
            )
            await self._insert_attempt(conn, claim, Outcome("succeeded", stats=stats))
        return True

    async def fail(self, claim: Claim, error: JobError, stats: CallStats) -> Outcome:
        """Requeue a retryable failure with backoff, or end the job failed; both fenced."""
        retry = error.retryable and claim.attempt < self.max_attempts
        outcome = Outcome("retry" if retry else "failed", error=error, stats=stats)
        async with self.pool.acquire() as conn, conn.transaction():
            if retry:
                delay = (
                    error.retry_after
                    if error.retry_after is not None
                    else backoff_seconds(claim.attempt)
                )
                outcome.retry_in = delay
                status = await conn.execute(
                    q("requeue_for_retry"), claim.npc_id, claim.job_id, claim.lease_token,
                    float(delay), error.as_json(),
                )  # fmt: skip
            else:
                status = await conn.execute(
                    q("finish_failed"), claim.npc_id, claim.job_id, claim.lease_token,
                    error.as_json(),
                )  # fmt: skip
            if status.endswith(" 0"):
                outcome = Outcome("discarded", error=error, stats=stats)
            await self._insert_attempt(conn, claim, outcome)
        return outcome

    async def record_attempt(self, claim: Claim, outcome: Outcome) -> None:
        async with self.pool.acquire() as conn:
            await self._insert_attempt(conn, claim, outcome)

    async def _insert_attempt(self, conn: Any, claim: Claim, outcome: Outcome) -> None:
        stats, error = outcome.stats, outcome.error
        duration_ms = int((time.monotonic() - claim.started_mono) * 1000)
        await conn.execute(
            q("insert_attempt"),
            claim.job_id, claim.npc_id, claim.attempt, self.worker_id, claim.claimed_at,
            outcome.status, error.code if error else None, error.message if error else None,
            stats.model, stats.generation_id, stats.request_id or (error.request_id if error else None),
            stats.prompt_tokens, stats.completion_tokens, stats.cost, stats.retries, duration_ms,
        )  # fmt: skip


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


def _ids(claim: Claim) -> dict[str, Any]:
    return {"job_id": str(claim.job_id), "npc_id": str(claim.npc_id), "attempt": claim.attempt}


def log_ids(claim: Claim) -> dict[str, Any]:
    return _ids(claim)
