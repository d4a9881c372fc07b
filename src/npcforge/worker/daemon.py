"""The worker daemon: supervised loops around a claim → run → finalize pipeline.

Loops: the listener (LISTEN + probe), the claimer (notification / timer / slot-freed wake-ups),
the lease keeper (one renewal statement per lease/3) and the reaper (expired leases). Each is
supervised: a crash is logged and the loop restarts with backoff; the daemon never runs
half-alive and never exits because PostgreSQL went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg

from npcforge.db.connect import create_pool
from npcforge.db.queries import q
from npcforge.generation.base import Provider
from npcforge.metrics import WorkerMetrics
from npcforge.storage.base import Storage
from npcforge.worker.listener import Listener
from npcforge.worker.pipeline import DB_UNAVAILABLE, Claim, JobRunner, Outcome, log_ids
from npcforge.worker.sdnotify import SystemdNotifier

log = logging.getLogger("npcforge.worker")


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(
        self,
        *,
        dsn: str,
        provider: Provider,
        storage: Storage,
        concurrency: int = 16,
        lease_seconds: float = 30.0,
        max_attempts: int = 3,
        poll_seconds: float = 5.0,
        shutdown_seconds: float = 30.0,
        job_deadline_seconds: float = 300.0,
        metrics: WorkerMetrics | None = None,
        notifier: SystemdNotifier | None = None,
        worker_id: str | None = None,
        pool_size: int | None = None,
    ) -> None:
        self.dsn = dsn
        self.provider = provider
        self.storage = storage
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.poll_seconds = poll_seconds
        self.shutdown_seconds = shutdown_seconds
        self.job_deadline_seconds = job_deadline_seconds
        self.metrics = metrics or WorkerMetrics()
        self.notifier = notifier or SystemdNotifier(None)
        self.worker_id = worker_id or make_worker_id()
        self.pool_size = pool_size or min(max(4, concurrency // 4 + 2), 20)

        self.pool: asyncpg.Pool | None = None
        self.runner: JobRunner | None = None
        self.listener = Listener(
            dsn, self._on_notify, self._on_listener_connected, on_state=self._on_listener_state
        )
        self.running: dict[uuid.UUID, tuple[Claim, asyncio.Task[None]]] = {}
        self.done_count = 0
        self.ready = asyncio.Event()
        self.stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._notified = False
        self._maybe_more = True
        self._loop_health: dict[str, float] = {}

    # --- wake-ups ---------------------------------------------------------------------

    def _on_notify(self) -> None:
        self.metrics.notifications.inc()
        self._notified = True
        self._maybe_more = True
        self._wake.set()

    def _on_listener_connected(self) -> None:
        self._maybe_more = True
        self._wake.set()

    def _on_listener_state(self, up: bool) -> None:
        self.metrics.listener_up.set(1 if up else 0)

    @property
    def free_slots(self) -> int:
        return self.concurrency - len(self.running)

    @property
    def healthy(self) -> bool:
        """Every loop reported progress recently and the listener is connected."""
        now = time.monotonic()
        limit = max(self.poll_seconds, self.lease_seconds / 3) * 3 + 5
        return self.listener.up and all(now - t < limit for t in self._loop_health.values())

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Run until `stopping` is set, then drain and hand back; returns when done."""
        self.pool = await self._connect_pool()
        self.runner = JobRunner(
            pool=self.pool,
            provider=self.provider,
            storage=self.storage,
            worker_id=self.worker_id,
            max_attempts=self.max_attempts,
            job_deadline=self.job_deadline_seconds,
            metrics=self.metrics,
        )
        loops = [
            asyncio.create_task(self._supervise("listener", self.listener.run), name="listener"),
            asyncio.create_task(self._supervise("claimer", self._claim_loop), name="claimer"),
            asyncio.create_task(self._supervise("leases", self._lease_loop), name="leases"),
            asyncio.create_task(self._supervise("reaper", self._reap_loop), name="reaper"),
            asyncio.create_task(self._supervise("watchdog", self._watchdog_loop), name="watchdog"),
        ]
        log.info(
            "worker started",
            extra={"worker_id": self.worker_id, "concurrency": self.concurrency, "action": "start"},
        )
        try:
            await self.stopping.wait()
        finally:
            self.notifier.stopping()
            log.info("worker stopping", extra={"action": "stop", "in_flight": len(self.running)})
            for task in loops:
                if task.get_name() not in ("leases", "listener"):
                    task.cancel()
            await self._drain()
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self._close()

    def stop(self) -> None:
        self.stopping.set()

    async def _connect_pool(self) -> asyncpg.Pool:
        failures = 0
        while True:
            try:
                return await create_pool(
                    self.dsn,
                    min_size=1,
                    max_size=self.pool_size,
                    application_name="npcforge-worker",
                )
            except DB_UNAVAILABLE as exc:
                failures += 1
                delay = min(10.0, 0.2 * 2 ** min(failures, 6)) * random.uniform(0.5, 1.0)
                log.warning(
                    "database unreachable at start; retrying",
                    extra={"error": type(exc).__name__, "retry_in_s": round(delay, 2)},
                )
                if self.stopping.is_set():
                    raise
                await asyncio.sleep(delay)

    async def _drain(self) -> None:
        """Let running jobs finish within the shutdown budget; hand the rest back at once."""
        if self.running:
            tasks = [task for _, task in self.running.values()]
            await asyncio.wait(tasks, timeout=self.shutdown_seconds)
        leftover = list(self.running.values())
        if not leftover:
            return
        for claim, task in leftover:
            claim.lease_lost = True  # its own finalize must not run now
            task.cancel()
        await asyncio.gather(*(task for _, task in leftover), return_exceptions=True)
        tokens = [claim.lease_token for claim, _ in leftover]
        assert self.pool is not None and self.runner is not None
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                released = await conn.fetch(q("release_jobs"), self.worker_id, tokens)
                for claim, _ in leftover:
                    await self.runner._insert_attempt(conn, claim, Outcome("released"))
            log.info(
                "handed unfinished jobs back", extra={"action": "release", "count": len(released)}
            )
        except DB_UNAVAILABLE:
            log.warning(
                "could not hand jobs back; their leases will expire", extra={"count": len(tokens)}
            )

    async def _close(self) -> None:
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), timeout=5)

    # --- supervision --------------------------------------------------------------------

    async def _supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        failures = 0
        self._loop_health[name] = time.monotonic()
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except DB_UNAVAILABLE as exc:
                self.metrics.db_errors.labels(loop=name).inc()
                failures += 1
                log.warning(
                    "database unavailable", extra={"loop": name, "error": type(exc).__name__}
                )
            except Exception:
                failures += 1
                log.exception("worker loop crashed; restarting", extra={"loop": name})
            await asyncio.sleep(min(5.0, 0.1 * 2 ** min(failures, 6)) * random.uniform(0.5, 1.0))

    def _beat(self, name: str) -> None:
        self._loop_health[name] = time.monotonic()

    # --- the claim loop -----------------------------------------------------------------

    async def _claim_loop(self) -> None:
        assert self.pool is not None
        first = True
        while not self.stopping.is_set():
            self._beat("claimer")
            free = self.free_slots
            claimed = 0
            if free > 0:
                from_notify = self._notified
                self._notified = False
                self._wake.clear()
                rows = await self.pool.fetch(
                    q("claim_jobs"), free, self.worker_id, self.lease_seconds
                )
                claimed = len(rows)
                self._maybe_more = claimed == free
                for row in rows:
                    self._start(row, from_notify)
                if first:
                    first = False
                    self.ready.set()
                    self.notifier.ready(self._status_text())
                if claimed == free:
                    continue  # a full batch: there may be more right now
            timeout = self.poll_seconds
            if free > 0 and claimed < free:
                wait = await self.pool.fetchval(q("next_run_after"))
                if wait is not None:
                    timeout = max(0.0, min(timeout, wait.total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    def _start(self, row: Any, from_notify: bool) -> None:
        claim = Claim(
            npc_id=row["id"],
            job_id=row["job_id"],
            lease_token=row["lease_token"],
            attempt=row["attempt"],
            queued_at=row["queued_at"],
            claimed_at=row["claimed_at"],
        )
        self.metrics.claimed.inc()
        (self.metrics.notify_pickups if from_notify else self.metrics.sweep_pickups).inc()
        if claim.queued_at is not None and claim.attempt == 1:
            pickup = (claim.claimed_at - claim.queued_at).total_seconds()
            self.metrics.pickup.observe(max(pickup, 0.0))
        task = asyncio.create_task(self._run_job(claim), name=f"job-{claim.job_id}")
        self.running[claim.lease_token] = (claim, task)
        self.metrics.in_flight.set(len(self.running))

    async def _run_job(self, claim: Claim) -> None:
        assert self.runner is not None
        ids = log_ids(claim)
        log.info("job claimed", extra={**ids, "action": "claim", "worker_id": self.worker_id})
        try:
            outcome = await self._run_with_db_retries(claim)
            if outcome is not None:
                self._account(claim, outcome)
        except asyncio.CancelledError:
            if not self.stopping.is_set():
                log.info("job abandoned: lease lost", extra={**ids, "action": "lease_lost"})
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.runner.record_attempt(claim, Outcome("discarded")))
            raise
        finally:
            self.running.pop(claim.lease_token, None)
            self.done_count += 1
            self.metrics.in_flight.set(len(self.running))
            if self._maybe_more and not self.stopping.is_set():
                self._wake.set()

    async def _run_with_db_retries(self, claim: Claim) -> Outcome | None:
        """Run the attempt; if the database drops mid-way, keep retrying the fenced finalize."""
        assert self.runner is not None
        failures = 0
        while True:
            try:
                return await self.runner.run(claim)
            except DB_UNAVAILABLE as exc:
                failures += 1
                if claim.lease_lost or self.stopping.is_set():
                    return None
                delay = min(5.0, 0.2 * 2 ** min(failures, 5)) * random.uniform(0.5, 1.0)
                log.warning(
                    "database unavailable during job; will retry",
                    extra={
                        **log_ids(claim),
                        "error": type(exc).__name__,
                        "retry_in_s": round(delay, 2),
                    },
                )
                await asyncio.sleep(delay)

    def _account(self, claim: Claim, outcome: Outcome) -> None:
        ids = log_ids(claim)
        duration_ms = int((time.monotonic() - claim.started_mono) * 1000)
        extra: dict[str, Any] = {
            **ids,
            "action": outcome.status,
            "duration_ms": duration_ms,
            "retries": outcome.stats.retries,
            "request_id": outcome.stats.request_id,
        }
        if outcome.error is not None:
            extra["code"] = outcome.error.code
        if outcome.status == "succeeded":
            self.metrics.succeeded.inc()
            if claim.queued_at is not None:
                self.metrics.end_to_end.observe(_age(claim.queued_at))
            log.info("job succeeded", extra=extra)
        elif outcome.status == "failed" and outcome.error is not None:
            self.metrics.failed.labels(code=outcome.error.code).inc()
            log.warning("job failed", extra=extra)
        elif outcome.status == "retry":
            self.metrics.retried.inc()
            log.info("job will retry", extra={**extra, "retry_in_s": outcome.retry_in})
        else:
            self.metrics.discarded.inc()
            log.info("result discarded: job was superseded, cancelled or reaped", extra=extra)

    # --- leases, reaper, watchdog ---------------------------------------------------------

    async def _lease_loop(self) -> None:
        assert self.pool is not None
        interval = self.lease_seconds / 3
        while True:
            self._beat("leases")
            if self.running:
                claims = {token: claim for token, (claim, _) in self.running.items()}
                rows = await self.pool.fetch(
                    q("renew_leases"), self.worker_id, list(claims), self.lease_seconds
                )
                kept = {row["lease_token"] for row in rows}
                for token, claim in claims.items():
                    entry = self.running.get(token)
                    if token in kept or entry is None:
                        continue
                    # Reaped, superseded by a forced job, or cancelled: stop working on it.
                    claim.lease_lost = True
                    self.metrics.lease_lost.inc()
                    entry[1].cancel()
            self.notifier.status(self._status_text())
            await asyncio.sleep(interval)

    async def _reap_loop(self) -> None:
        assert self.pool is not None
        while True:
            self._beat("reaper")
            rows = await self.pool.fetch(q("reap_expired_leases"), self.max_attempts)
            if rows:
                self.metrics.rescued.inc(len(rows))
                for row in rows:
                    if row["status"] == "failed":
                        self.metrics.failed.labels(code="WORKER_LOST").inc()
                log.warning(
                    "took back jobs with expired leases",
                    extra={"action": "reap", "count": len(rows)},
                )
            stats = await self.pool.fetchrow(q("queue_stats"))
            if stats is not None:
                self.metrics.queue_depth.set(stats["depth"])
                self.metrics.oldest_age.set(stats["oldest_age"])
            await asyncio.sleep(self.poll_seconds)

    async def _watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval
        while True:
            self._beat("watchdog")
            if interval is None:
                await asyncio.sleep(3600)
                continue
            if self.ready.is_set() and self.healthy:
                self.notifier.watchdog()
            await asyncio.sleep(interval)

    def _status_text(self) -> str:
        return f"in flight {len(self.running)}, done {self.done_count}"


def _age(moment: datetime) -> float:
    from datetime import UTC

    return max(0.0, (datetime.now(UTC) - moment).total_seconds())
