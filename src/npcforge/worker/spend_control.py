"""The worker's side of cost control: which jobs may be claimed while a daily budget is spent,
admission (a reservation) before an attempt calls the model, and reuse of a stored file made
from the same inputs.

The caps are checked twice. Before a claim (`claim_filter`), one read of today's spend: no claim
at all while the fleet's budget is spent, and none of the jobs of an owner whose own budget is;
those jobs stay `queued`, with no attempt counted. Before the model call (`admit`), the
reservation in PostgreSQL decides for good, atomically across the fleet; a refused attempt goes
back to the queue uncounted. The first check keeps held jobs from being claimed over and over;
the second is what the bound on overshooting rests on (see docs/operations.md, "Cost control").
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from uuid import UUID

from npcforge.budget import CostPolicy, next_reset, seconds_to_reset
from npcforge.db.spend import Admission, Generations, SpendLedger
from npcforge.errors import StorageError
from npcforge.generation.pricing import charge_of, estimate_attempt, input_hash
from npcforge.metrics import WorkerMetrics
from npcforge.npc import NpcRecord
from npcforge.storage.base import Storage, xml_key
from npcforge.worker.claims import Claim

log = logging.getLogger("npcforge.budget")

# Held jobs are counted for /metrics at most this often (a count of queued rows).
HELD_COUNT_EVERY_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class ClaimFilter:
    may_claim: bool  # False while the fleet's budget is spent
    skip_owners: list[UUID]  # owners whose own budget is spent
    wait: float | None = None  # how long nothing can change but a settle (until midnight)


class SpendControl:
    def __init__(
        self,
        policy: CostPolicy,
        *,
        ledger: SpendLedger,
        generations: Generations,
        storage: Storage,
        metrics: WorkerMetrics,
    ) -> None:
        self.policy = policy
        self.ledger = ledger
        self.generations = generations
        self.storage = storage
        self.metrics = metrics
        self._fleet_over = False
        self._owners_over: set[UUID] = set()
        self._counted_at = -HELD_COUNT_EVERY_SECONDS
        if policy.budget.fleet is not None:
            metrics.budget_limit.set(float(policy.budget.fleet))

    @property
    def calls_model(self) -> bool:
        return self.policy.model is not None

    # --- before a claim --------------------------------------------------------------------

    async def claim_filter(self, *, timeout: float) -> ClaimFilter:
        budget = self.policy.budget
        if not (budget.capped and self.calls_model):
            return ClaimFilter(True, [])
        state = await self.ledger.state(user_limit=budget.user, timeout=timeout)
        fleet_over = budget.fleet_over(state.fleet_spent)
        self._note(state.fleet_spent, state.fleet_reserved, set(state.owners_over))
        if time.monotonic() - self._counted_at >= HELD_COUNT_EVERY_SECONDS:
            self._counted_at = time.monotonic()
            held = 0
            if fleet_over or state.owners_over:
                held = await self.ledger.held_jobs(
                    fleet_over=fleet_over, owners_over=state.owners_over
                )
            self.metrics.budget_held_jobs.set(held)
        return ClaimFilter(not fleet_over, state.owners_over, wait=seconds_to_reset())

    def _note(self, spent: Decimal, reserved: Decimal, owners_over: set[UUID]) -> None:
        """Metrics, and one log line when a cap is reached and one when it lifts. The fleet's
        cap counts as reached when what was paid (not reserved) reaches it: reservations of
        calls in flight come and go near the cap, and each would otherwise log twice."""
        budget = self.policy.budget
        self.metrics.budget_spent.set(float(spent))
        if budget.fleet is not None:
            self.metrics.budget_remaining.set(float(max(budget.fleet - spent, Decimal(0))))
        paid_over = budget.fleet_over(spent - reserved)
        facts = {"spent_usd": float(spent - reserved), "resets_at": next_reset().isoformat()}
        if paid_over and not self._fleet_over:
            log.warning(
                "fleet daily budget reached: jobs wait queued until it lifts",
                extra={**facts, "action": "budget_reached", "scope": "fleet",
                       "limit_usd": float(budget.fleet or 0)},
            )  # fmt: skip
        elif self._fleet_over and not paid_over:
            log.info(
                "fleet daily budget lifted: held jobs run again",
                extra={**facts, "action": "budget_lifted", "scope": "fleet"},
            )
        for owner in sorted(owners_over - self._owners_over):
            log.warning(
                "an owner's daily budget reached: their jobs wait queued",
                extra={"action": "budget_reached", "scope": "user", "owner_id": str(owner),
                       "limit_usd": float(budget.user or 0), "resets_at": facts["resets_at"]},
            )  # fmt: skip
        for owner in sorted(self._owners_over - owners_over):
            log.info(
                "an owner's daily budget lifted",
                extra={"action": "budget_lifted", "scope": "user", "owner_id": str(owner)},
            )
        self._fleet_over = paid_over
        self._owners_over = owners_over

    # --- before the model call ---------------------------------------------------------------

    async def reusable(self, claim: Claim, npc: NpcRecord) -> bytes | None:
        """The stored file when this job may reuse it: not forced, the inputs hash the
        same as the NPC's last successful generation, and the file is still there unchanged."""
        if not self.calls_model:
            return None
        claim.input_hash = input_hash(npc, self.policy.generation_key)
        if claim.force:
            return None
        if claim.record_loaded:  # the claim brought it along
            last = claim.last_generation
        else:
            last = await self.generations.last(npc_id=claim.npc_id)
        if last is None or last.input_hash != claim.input_hash:
            return None
        try:
            data = await self.storage.get(xml_key(claim.npc_id))
        except StorageError:
            return None  # cannot tell: make the file anew
        if (
            data is None
            or len(data) != last.size_bytes
            or hashlib.sha256(data).hexdigest() != last.xml_sha256
        ):
            return None
        return data

    async def admit(self, claim: Claim, npc: NpcRecord) -> Admission | None:
        """Reserve this attempt's estimated cost; None when no cap applies (nothing reserved)."""
        budget = self.policy.budget
        if not (budget.capped and self.calls_model):
            return None
        prices = [p for m in self.policy.models if (p := self.policy.prices.get(m)) is not None]
        estimate = estimate_attempt(npc, prices, max_retries=self.policy.max_retries)
        admission = await self.ledger.reserve(
            npc_id=claim.npc_id, job_id=claim.job_id, attempt=claim.attempt,
            model=self.policy.model, estimate=estimate, fleet_limit=budget.fleet,
            user_limit=budget.user,
        )  # fmt: skip
        if not admission.admitted:
            self.metrics.budget_refusals.labels(scope=admission.scope or "fleet").inc()
        return admission

    # --- after it ----------------------------------------------------------------------------

    def price(self, claim: Claim) -> None:
        """The attempt's cost as its row records it (and the reservation is settled to)."""
        if self.calls_model:
            stats = claim.stats
            stats.cost = charge_of(stats, self.policy.price_of(stats.model))
