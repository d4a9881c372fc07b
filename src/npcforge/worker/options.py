"""What a worker is told: every tunable it reads, in one frozen object built once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerOptions:
    """The composition root builds this from Settings (`npcforge.compose.worker_options`);
    tests build it directly. Defaults are the documented defaults of the settings."""

    concurrency: int = 16
    lease_seconds: float = 30.0
    max_attempts: int = 3
    poll_seconds: float = 5.0
    shutdown_seconds: float = 30.0
    job_deadline_seconds: float = 300.0
    max_retry_delay_seconds: float = 180.0
    db_timeout: float = 10.0
    # None: sized from `concurrency` (see `jobs_pool_size`).
    pool_size: int | None = None
    listener_probe_interval: float = 3.0
    listener_probe_timeout: float = 5.0

    @property
    def jobs_pool_size(self) -> int:
        return self.pool_size or min(max(4, self.concurrency // 4 + 2), 20)

    @property
    def claim_timeout(self) -> float:
        """A claim sets its leases' expiry when its statement starts: one that came back later
        than this would hand out leases already running out, which other workers' reapers take
        back while this one starts the jobs (a second run of each). Cut short, the claim is
        retried, or adopted with most of its lease left if it did commit."""
        return min(self.db_timeout, self.lease_seconds / 3)
