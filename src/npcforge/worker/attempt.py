"""One job attempt, start to end: load → (reuse the stored file, or be admitted by the daily
budgets →) generate → validate (→ repair) → publish or fail.

The attempt's product (the XML, or the failure) is made once and kept on the claim; every write
after that is fenced by the claim's lease (see `claims.Outcomes` and `publisher`).
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from npcforge.budget import CostPolicy
from npcforge.db.jobs import JobQueue
from npcforge.db.npcs import load_npc
from npcforge.db.spend import Generations, SpendLedger
from npcforge.errors import (
    AiInvalidXml,
    AiTimeout,
    InternalError,
    JobError,
    NpcNotFound,
    RecordInvalid,
)
from npcforge.generation.base import CallStats, Provider, RepairRequest
from npcforge.generation.recordcheck import record_problems
from npcforge.generation.stored_xml import check_npc_xml
from npcforge.metrics import WorkerMetrics
from npcforge.npc import NpcRecord
from npcforge.storage.base import Storage
from npcforge.worker.claims import Claim, Held, Outcome, Outcomes, Reused, log_fields
from npcforge.worker.publisher import Publisher
from npcforge.worker.spend_control import SpendControl

log = logging.getLogger("npcforge.worker")


async def generate_valid_xml(
    provider: Provider, npc: NpcRecord, account: CallStats, *, deadline_seconds: float
) -> str:
    """The document to store: provider output that passed the validator, after at most one
    repair round, as the validator saw it (see `check_npc_xml`).

    The job's deadline bounds both calls together; this is the one place that enforces it. What
    the calls cost is added to `account`, whether they succeed or not.
    """
    deadline = time.monotonic() + deadline_seconds
    try:
        async with asyncio.timeout(deadline_seconds):
            first = await provider.generate(npc, account=account, deadline=deadline)
            checked = check_npc_xml(first.xml, npc)
            if checked.xml is not None:
                return checked.xml
            log.info(
                "output failed validation; asking for a repair",
                extra={"action": "repair", "findings": len(checked.findings)},
            )
            repair = RepairRequest(first.xml, tuple(checked.findings))
            second = await provider.generate(npc, repair, account=account, deadline=deadline)
            checked = check_npc_xml(second.xml, npc)
            if checked.xml is not None:
                return checked.xml
    except TimeoutError:
        raise AiTimeout(
            f"generation did not finish within the {deadline_seconds:g} s job deadline"
        ) from None
    findings = checked.findings
    raise AiInvalidXml(
        f"the model's XML does not match the record ({len(findings)} problems after repair)",
        details={"findings": findings},
        request_id=account.request_id,
    )


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
        spend: SpendControl | None = None,
        max_retry_delay: float = 180.0,
    ) -> None:
        self.pool = pool
        # Without one: no budget, no reuse (a provider that calls no model).
        self.spend = spend or SpendControl(
            CostPolicy(), ledger=SpendLedger(pool), generations=Generations(pool),
            storage=storage, metrics=metrics,
        )  # fmt: skip
        self.provider = provider
        self.worker_id = worker_id
        self.job_deadline = job_deadline
        self.metrics = metrics
        self.outcomes = Outcomes(
            worker_id=worker_id, max_attempts=max_attempts, max_retry_delay=max_retry_delay
        )
        self.publisher = Publisher(
            pool=pool, storage=storage, outcomes=self.outcomes, metrics=metrics
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
        result = claim.result
        if isinstance(result, JobError):
            return await self.fail(claim, result)
        if isinstance(result, Reused):
            return await self._finish_reused(claim, result)
        if isinstance(result, Held):
            return await self._hand_back_held(claim)
        return await self.publisher.publish(claim, result)

    async def _finish_reused(self, claim: Claim, reused: Reused) -> Outcome:
        """Succeed with the stored file: no upload, an attempt row `reused` that cost nothing."""
        claim.stats.model = self.spend.policy.model
        claim.stats.cost = 0.0
        outcome = Outcome("reused", stats=claim.stats)
        async with self.pool.acquire() as conn, conn.transaction():
            jobs = JobQueue(conn)
            if claim.lease_token not in await jobs.hold_for_publish(jobs=[claim]):
                return await self.outcomes.fenced_off(jobs, claim, None)
            await jobs.finish_succeeded(
                jobs=[(claim, reused.data)], attempts=[self.outcomes.row(claim, outcome)]
            )
        return outcome

    async def _hand_back_held(self, claim: Claim) -> Outcome:
        """A daily budget refused the model call: back to the queue, the attempt not counted."""
        await JobQueue(self.pool).release(worker_id=self.worker_id, tokens=[claim.lease_token])
        return Outcome("held")

    async def _produce(self, claim: Claim) -> bytes | JobError | Reused | Held:
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
        stored = await self.spend.reusable(claim, npc)
        if stored is not None:
            return Reused(stored)
        admission = await self.spend.admit(claim, npc)
        if admission is not None and not admission.admitted:
            return Held(admission.scope or "fleet")
        gen_started = time.monotonic()
        try:
            xml = await generate_valid_xml(
                self.provider, npc, stats, deadline_seconds=self.job_deadline
            )
        except JobError as exc:
            if exc.request_id is None:
                exc.request_id = stats.request_id
            return exc
        except Exception as exc:
            log.exception(
                "unexpected error from the provider", extra=log_fields(claim, self.worker_id)
            )
            return InternalError(f"internal error ({type(exc).__name__})")
        finally:
            self.metrics.provider_latency.observe(time.monotonic() - gen_started)
            self.spend.price(claim)
        return xml.encode("utf-8")

    async def fail(self, claim: Claim, error: JobError) -> Outcome:
        """Requeue a retryable failure with backoff, or end the job failed; both fenced."""
        async with self.pool.acquire() as conn, conn.transaction():
            return await self.outcomes.failed(JobQueue(conn), claim, error)

    async def record_attempt(self, claim: Claim, outcome: Outcome) -> None:
        async with self.pool.acquire() as conn:
            await self.outcomes.record(JobQueue(conn), [(claim, outcome)])
