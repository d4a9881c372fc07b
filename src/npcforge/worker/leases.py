"""Leases: the keeper renews this worker's every lease/3 in one statement and gives up a job
whose lease was lost; the reaper takes back jobs whose lease ran out, from any worker, and
reports the queue's depth and age.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from npcforge.db.connect import DB_UNAVAILABLE
from npcforge.db.jobs import JobQueue
from npcforge.metrics import WorkerMetrics
from npcforge.worker.inflight import InFlight
from npcforge.worker.supervisor import Supervisor

log = logging.getLogger("npcforge.worker")


@dataclass(kw_only=True, slots=True)
class Leases:
    jobs: JobQueue
    inflight: InFlight
    supervisor: Supervisor
    metrics: WorkerMetrics
    worker_id: str
    max_attempts: int
    lease_seconds: float
    poll_seconds: float
    db_timeout: float

    async def keep(self) -> None:
        """The lease keeper's loop ("leases")."""
        interval = self.lease_seconds / 3
        while True:
            self.supervisor.beat("leases")
            delay = interval
            claims = {token: claim for token, (claim, _) in self.inflight.running.items()}
            if claims:
                try:
                    ours = await self.jobs.renew_leases(
                        worker_id=self.worker_id, tokens=list(claims),
                        lease_seconds=self.lease_seconds, timeout=self.db_timeout,
                    )  # fmt: skip
                except DB_UNAVAILABLE as exc:
                    delay = min(interval, self.supervisor.db_trouble("leases", exc))
                else:
                    self.supervisor.db_fine("leases")
                    for token, claim in claims.items():
                        if token not in ours:
                            self.inflight.lease_lost(claim)
            await asyncio.sleep(delay)

    async def reap(self) -> None:
        """The reaper's loop ("reaper")."""
        while True:
            self.supervisor.beat("reaper")
            reaped = await self.jobs.reap_expired_leases(
                max_attempts=self.max_attempts, lease_seconds=self.lease_seconds,
                keep=list(self.inflight.running), timeout=self.db_timeout,
            )  # fmt: skip
            self.supervisor.db_fine("reaper")
            for job in reaped:
                self.metrics.rescued.inc()
                if job.status == "failed":
                    self.metrics.failed.labels(code="WORKER_LOST").inc()
                log.warning(
                    "took back a job whose lease expired",
                    extra={
                        "action": "reap",
                        "job_id": str(job.job_id),
                        "npc_id": str(job.npc_id),
                        "attempt": job.attempts,
                        "worker_id": self.worker_id,
                        "lost_worker_id": job.owner,
                        "code": "WORKER_LOST",
                        "status": job.status,
                    },
                )
            stats = await self.jobs.stats(timeout=self.db_timeout)
            if stats is not None:
                self.metrics.queue_depth.set(stats.depth)
                self.metrics.oldest_age.set(stats.oldest_age)
            await asyncio.sleep(self.poll_seconds)
