"""The claim loop: claim as many jobs as there are free slots whenever there may be work (a
notification, a listener reconnect, a slot freed after a full claim) and every poll interval,
which is the safety net for lost notifications.

A claim whose reply never arrived (the connection died around its commit) may have handed this
worker jobs it does not know about: before its next claim, the claimer adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from npcforge.db.connect import DB_UNAVAILABLE
from npcforge.db.jobs import JobQueue
from npcforge.generation.base import Provider
from npcforge.worker.claims import Claim
from npcforge.worker.inflight import InFlight
from npcforge.worker.spend_control import SpendControl
from npcforge.worker.supervisor import Supervisor

log = logging.getLogger("npcforge.worker")

# After an under-full claim, wait at least this long before claiming again: rows that are due
# but locked by someone else must not turn the claimer into a busy loop.
MIN_CLAIM_PAUSE = 0.1


class Wakeups:
    """Why the claimer should look for work now rather than at the next poll."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.notified = False  # a NOTIFY arrived since the last claim
        self.maybe_more = True  # the last claim was full, or news arrived since

    def notification(self) -> None:
        self.notified = True
        self.maybe_more = True
        self.event.set()

    def reconnected(self) -> None:
        """The listener (re)connected: notifications may have been missed."""
        self.maybe_more = True
        self.event.set()

    def slot_freed(self) -> None:
        if self.maybe_more:
            self.event.set()


@dataclass(kw_only=True, slots=True)
class Claimer:
    jobs: JobQueue
    inflight: InFlight
    provider: Provider
    spend: SpendControl
    supervisor: Supervisor
    wakeups: Wakeups
    stopping: asyncio.Event
    on_claimed: Callable[[], None]  # the database answered a claim (READY waits for it)
    worker_id: str
    concurrency: int
    lease_seconds: float
    poll_seconds: float
    claim_timeout: float
    db_timeout: float
    claimed_once: bool = field(default=False, init=False)
    # A claim failed after it may have committed: some rows may be ours without our knowing.
    in_doubt: bool = field(default=False, init=False)

    async def run(self) -> None:
        wakeups = self.wakeups
        while not self.stopping.is_set():
            self.supervisor.beat("claimer")
            timeout = self.poll_seconds
            free = self.concurrency - len(self.inflight.running)
            pause = self.provider.paused_for
            if pause > 0:
                # The upstream rate-limited the fleet: claiming now would only burn attempts.
                timeout = min(timeout, pause)
                if not self.claimed_once and await self.jobs.ping(timeout=self.db_timeout):
                    # Paused from the start: the database answering stands in for the first
                    # claim, so READY is not held back for the whole pause.
                    self._claimed()
            elif free > 0:
                from_notify = wakeups.notified
                wakeups.notified = False
                wakeups.event.clear()
                try:
                    if self.in_doubt:
                        free -= await self._adopt_lost_claims()
                    budgets = await self.spend.claim_filter(timeout=self.db_timeout)
                    leases = []
                    if budgets.may_claim:
                        self.in_doubt = True
                        leases = await self.jobs.claim(
                            worker_id=self.worker_id, limit=free,
                            lease_seconds=self.lease_seconds, skip_owners=budgets.skip_owners,
                            timeout=self.claim_timeout,
                        )  # fmt: skip
                        self.in_doubt = False
                    for lease in leases:
                        self.inflight.start(lease, from_notify=from_notify)
                    wait = None
                    if not budgets.may_claim:
                        # The fleet's budget is spent: look again at the next poll (a settled
                        # call or a raised budget may free room), at the latest at midnight.
                        wakeups.maybe_more = False
                        timeout = min(timeout, budgets.wait or timeout)
                    elif len(leases) < free:
                        wakeups.maybe_more = False
                        wait = await self.jobs.next_run_after(
                            skip_owners=budgets.skip_owners, timeout=self.db_timeout
                        )
                except DB_UNAVAILABLE as exc:
                    # Retry soon; a listener reconnect wakes us earlier for the catch-up claim.
                    timeout = min(timeout, self.supervisor.db_trouble("claimer", exc))
                else:
                    self.supervisor.db_fine("claimer")
                    self._claimed()
                    if budgets.may_claim and len(leases) == free:
                        continue  # a full batch: there may be more right now
                    if wait is not None:
                        timeout = min(timeout, max(MIN_CLAIM_PAUSE, wait.total_seconds()))
            if self.stopping.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeups.event.wait(), timeout=timeout)

    def _claimed(self) -> None:
        if not self.claimed_once:
            self.claimed_once = True
            self.on_claimed()

    async def _adopt_lost_claims(self) -> int:
        """Start the jobs a lost claim reply left in our hands (their attempt already counted)."""
        leases = await self.jobs.adopt_lost_claims(
            worker_id=self.worker_id, known=[*self.inflight.running, *self.inflight.dropped],
            timeout=self.claim_timeout,
        )  # fmt: skip
        for lease in leases:
            log.warning(
                "adopting a job claimed by a claim whose reply was lost",
                extra={"action": "adopt", "job_id": str(lease.job_id),
                       "npc_id": str(lease.npc_id), "attempt": lease.attempt,
                       "worker_id": self.worker_id},
            )  # fmt: skip
            self.inflight.start(lease, from_notify=False)
        self.in_doubt = False
        return len(leases)

    async def lost_claims(self, known: list[Claim]) -> list[Claim]:
        """At shutdown: the jobs a claim whose reply never arrived left in our hands, to hand
        back with `known` (empty unless a claim is in doubt or the database cannot say)."""
        if not self.in_doubt:
            return []
        try:
            leases = await self.jobs.adopt_lost_claims(
                worker_id=self.worker_id,
                known=[*(claim.lease_token for claim in known), *self.inflight.dropped],
                timeout=self.db_timeout,
            )
        except DB_UNAVAILABLE:
            return []
        return [Claim.of(lease) for lease in leases]
