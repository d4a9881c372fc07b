"""The worker daemon: supervised loops around a claim → run → finalize pipeline.

Loops: the listener (LISTEN + probe), the claimer (`claimer`), the lease keeper and the reaper
(`leases`) and the heartbeat, each started, watched and restarted by the `supervisor`; the jobs
themselves run as tasks (`inflight`), one attempt each (`attempt`). None of the loops ends the
daemon because PostgreSQL went away: they wait for it, and running jobs keep their results
until they can be finalized.

Housekeeping uses its own small pool, so renewals and claims never queue behind jobs that hold
connections while they upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable

import asyncpg

from npcforge.budget import CostPolicy
from npcforge.db.connect import DB_UNAVAILABLE, create_pool
from npcforge.db.console import WorkerRoster
from npcforge.db.jobs import JobQueue
from npcforge.db.spend import Generations, SpendLedger
from npcforge.generation.base import Provider
from npcforge.metrics import WorkerMetrics
from npcforge.storage.base import Storage
from npcforge.worker.attempt import JobRunner
from npcforge.worker.claimer import Claimer, Wakeups
from npcforge.worker.claims import Claim, Outcome, log_fields
from npcforge.worker.inflight import InFlight
from npcforge.worker.leases import Leases
from npcforge.worker.listener import Listener
from npcforge.worker.options import WorkerOptions
from npcforge.worker.presence import Presence
from npcforge.worker.sdnotify import SystemdNotifier
from npcforge.worker.spend_control import SpendControl
from npcforge.worker.supervisor import Supervisor, loop_backoff

log = logging.getLogger("npcforge.worker")

# How long shutdown keeps trying to hand jobs back while the database is unreachable.
HAND_BACK_SECONDS = 5.0

DEFAULT_OPTIONS = WorkerOptions()


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(
        self,
        *,
        dsn: str,
        provider: Provider,
        storage: Storage,
        options: WorkerOptions = DEFAULT_OPTIONS,
        metrics: WorkerMetrics | None = None,
        notifier: SystemdNotifier | None = None,
        worker_id: str | None = None,
        listen_dsn: str | None = None,
        transaction_pooler: bool = False,
        cost_policy: CostPolicy | None = None,
    ) -> None:
        self.dsn = dsn
        # Daily budgets, prices and reuse (a provider that calls no model: none of them).
        self.cost_policy = cost_policy or CostPolicy()
        # LISTEN needs a session of its own: behind a transaction pooler (`transaction_pooler`,
        # the pools' DSN) it goes over `listen_dsn`, a direct or session-mode URL.
        self.listen_dsn = listen_dsn or dsn
        self.transaction_pooler = transaction_pooler
        self.provider = provider
        self.storage = storage
        self.options = options
        self.metrics = metrics or WorkerMetrics()
        self.notifier = notifier or SystemdNotifier(None)
        self.worker_id = worker_id or make_worker_id()

        self.pool: asyncpg.Pool | None = None  # jobs
        self.control: asyncpg.Pool | None = None  # claims, renewals, reaping, hand-back
        self.ready = asyncio.Event()
        self.presence: Presence | None = None  # the console's roster row, once running
        self.stopping = asyncio.Event()
        self._claimed_once = False
        self.supervisor = Supervisor(
            metrics=self.metrics,
            # Every wait in a loop is bounded by its interval, and every statement by db_timeout.
            stale_after=max(
                options.poll_seconds,
                options.lease_seconds / 3,
                options.listener_probe_interval + options.listener_probe_timeout,
            )
            + 2 * options.db_timeout
            + 10,
        )
        self.wakeups = Wakeups()
        self.inflight = InFlight(
            worker_id=self.worker_id,
            metrics=self.metrics,
            supervisor=self.supervisor,
            on_done=self._slot_freed,
        )
        self.listener = Listener(
            self.listen_dsn,
            self._on_notify,
            self._on_listener_connected,
            probe_interval=options.listener_probe_interval,
            probe_timeout=options.listener_probe_timeout,
            on_state=self._on_listener_state,
            beat=lambda: self.supervisor.beat("listener"),
        )

    # --- what the worker is doing -------------------------------------------------------

    @property
    def running(self) -> dict[uuid.UUID, tuple[Claim, asyncio.Task[None]]]:
        """The jobs running now, by lease token."""
        return self.inflight.running

    @property
    def done_count(self) -> int:
        return self.inflight.done_count

    @property
    def alive(self) -> bool:
        """Every loop is running and reported recently (a database outage is not a hang)."""
        return self.supervisor.alive

    async def check_database(self, timeout: float = 2.0) -> bool:
        return self.control is not None and await JobQueue(self.control).ping(timeout=timeout)

    def status_text(self) -> str:
        text = f"in flight {len(self.running)}/{self.options.concurrency}, done {self.done_count}"
        if self.stopping.is_set():
            return f"draining: {text}"
        if not self.supervisor.db_reachable and self.control is not None:
            return f"{text}; database unreachable, retrying"
        if self.ready.is_set() and not self.listener.up:
            return f"{text}; listener reconnecting"
        return text

    # --- wake-ups and READY ---------------------------------------------------------------

    def _on_notify(self) -> None:
        self.metrics.notifications.inc()
        self.wakeups.notification()

    def _on_listener_connected(self) -> None:
        if self.listener.connections > 1:
            self.metrics.listener_reconnects.inc()
        self.wakeups.reconnected()  # the catch-up claim
        self._maybe_ready()

    def _on_listener_state(self, up: bool) -> None:
        self.metrics.listener_up.set(1 if up else 0)

    def _slot_freed(self) -> None:
        if not self.stopping.is_set():
            self.wakeups.slot_freed()

    def _claimed(self) -> None:
        self._claimed_once = True
        self._maybe_ready()

    def _maybe_ready(self) -> None:
        """READY=1 once: connected, listening, and the first claim went through."""
        if self.ready.is_set() or not (self._claimed_once and self.listener.up):
            return
        if self.stopping.is_set():
            return
        self.ready.set()
        self.notifier.ready(self.status_text())
        log.info("worker ready", extra={"action": "ready", "worker_id": self.worker_id})

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Run until `stopping` is set, then drain and hand back; returns when done."""
        if not await self._connect_pools():
            return  # stopped before the database was ever reachable
        assert self.pool is not None and self.control is not None
        jobs = JobQueue(self.control)
        spend = SpendControl(
            self.cost_policy,
            ledger=SpendLedger(self.control),
            generations=Generations(self.pool),
            storage=self.storage,
            metrics=self.metrics,
        )
        self.inflight.runner = JobRunner(
            pool=self.pool,
            provider=self.provider,
            storage=self.storage,
            worker_id=self.worker_id,
            max_attempts=self.options.max_attempts,
            job_deadline=self.options.job_deadline_seconds,
            metrics=self.metrics,
            spend=spend,
            max_retry_delay=self.options.max_retry_delay_seconds,
        )
        claimer = Claimer(
            jobs=jobs,
            inflight=self.inflight,
            provider=self.provider,
            spend=spend,
            supervisor=self.supervisor,
            wakeups=self.wakeups,
            stopping=self.stopping,
            on_claimed=self._claimed,
            worker_id=self.worker_id,
            concurrency=self.options.concurrency,
            lease_seconds=self.options.lease_seconds,
            poll_seconds=self.options.poll_seconds,
            claim_timeout=self.options.claim_timeout,
            db_timeout=self.options.db_timeout,
        )
        leases = Leases(
            jobs=jobs,
            inflight=self.inflight,
            supervisor=self.supervisor,
            metrics=self.metrics,
            worker_id=self.worker_id,
            max_attempts=self.options.max_attempts,
            lease_seconds=self.options.lease_seconds,
            poll_seconds=self.options.poll_seconds,
            db_timeout=self.options.db_timeout,
        )
        self.supervisor.start("listener", self.listener.run)
        self.supervisor.start("claimer", claimer.run)
        self.supervisor.start("leases", leases.keep)
        self.supervisor.start("reaper", leases.reap)
        self.supervisor.start(
            "heartbeat",
            lambda: self.supervisor.heartbeat(self.notifier, self.ready, self.status_text),
        )
        self.presence = Presence(
            roster=WorkerRoster(self.control), worker_id=self.worker_id,
            concurrency=self.options.concurrency, in_flight=lambda: len(self.running),
            draining=self.stopping.is_set, beat=lambda: self.supervisor.beat("presence"),
            db_timeout=self.options.db_timeout,
        )  # fmt: skip
        self.supervisor.start("presence", self.presence.run)
        log.info(
            "worker started",
            extra={
                "worker_id": self.worker_id,
                "concurrency": self.options.concurrency,
                "action": "start",
            },
        )
        try:
            await self.stopping.wait()
        finally:
            await self._shutdown(claimer)

    def stop(self) -> None:
        self.stopping.set()
        self.wakeups.event.set()

    async def _shutdown(self, claimer: Claimer) -> None:
        """Stop claiming → let running jobs finish until the deadline → cancel the rest →
        hand them back → stop the other loops → close the pools."""
        deadline = time.monotonic() + self.options.shutdown_seconds
        self.notifier.stopping()
        log.info(
            "worker stopping",
            extra={"action": "stop", "worker_id": self.worker_id, "in_flight": len(self.running)},
        )
        # A claim in flight may finish (a claimed row must not go unseen).
        await self.supervisor.stop("claimer", "reaper", grace=2.0)
        self.notifier.status(self.status_text())
        # Leases are renewed and the watchdog fed while the jobs finish.
        unfinished = await self.inflight.finish(deadline)
        unfinished += await claimer.lost_claims(known=unfinished)
        if unfinished:
            await self._hand_back(unfinished)
        await self.supervisor.stop_all()
        if self.presence is not None:
            await self.presence.leave()
        await self._close()
        log.info(
            "worker stopped",
            extra={"action": "stopped", "worker_id": self.worker_id, "done": self.done_count},
        )

    async def _hand_back(self, claims: list[Claim]) -> None:
        """Return unfinished jobs to the queue now, the interrupted attempt not counted."""
        assert self.control is not None and self.inflight.runner is not None
        outcomes = self.inflight.runner.outcomes
        deadline = time.monotonic() + HAND_BACK_SECONDS
        failures = 0
        while True:
            try:
                tokens = [claim.lease_token for claim in claims]
                async with (
                    self.control.acquire(timeout=self.options.db_timeout) as conn,
                    conn.transaction(),
                ):
                    jobs = JobQueue(conn)
                    released = await jobs.release(worker_id=self.worker_id, tokens=tokens)
                    await outcomes.record(
                        jobs, [(c, Outcome("released")) for c in claims if c.npc_id in released]
                    )
                break
            except DB_UNAVAILABLE as exc:
                failures += 1
                if time.monotonic() > deadline:
                    log.warning(
                        "could not hand jobs back; their leases will expire",
                        extra={"action": "release_failed", "count": len(claims),
                               "error": type(exc).__name__},
                    )  # fmt: skip
                    return
                await asyncio.sleep(loop_backoff(failures, cap=1.0))
        self.metrics.released.inc(len(released))
        for claim in claims:
            if claim.npc_id in released:
                log.info(
                    "job handed back to the queue",
                    extra={**log_fields(claim, self.worker_id), "action": "release",
                           "duration_ms": claim.elapsed_ms()},
                )  # fmt: skip

    # --- the pools ------------------------------------------------------------------------

    async def _connect_pools(self) -> bool:
        """Connect both pools, retrying with backoff until it works or the worker is stopped."""
        failures = 0
        while not self.stopping.is_set():
            try:
                if self.pool is None:
                    self.pool = await self._wait_unless_stopped(
                        self._new_pool(self.options.jobs_pool_size)
                    )
                if self.control is None and self.pool is not None:
                    # Claims, renewals and reaping may commit without waiting for the WAL flush:
                    # one lost in a crash only leaves a row as it was (queued, or on its old
                    # lease), and every finalize -- synchronous -- is fenced against that.
                    self.control = await self._wait_unless_stopped(
                        self._new_pool(3, synchronous_commit=False)
                    )
            except DB_UNAVAILABLE as exc:
                failures += 1
                delay = loop_backoff(failures, cap=10.0)
                log.warning(
                    "database unreachable at start; retrying",
                    extra={"error": type(exc).__name__, "retry_in_s": round(delay, 2)},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), timeout=delay)
                continue
            if self.pool is not None and self.control is not None:
                self.supervisor.db_reachable = True
                return True
        await self._close()
        return False

    async def _new_pool(self, size: int, *, synchronous_commit: bool = True) -> asyncpg.Pool:
        # No session state is ever changed on these connections (LISTEN has its own).
        return await create_pool(
            self.dsn,
            min_size=1,
            max_size=size,
            application_name="npcforge-worker",
            keep_session=True,
            synchronous_commit=synchronous_commit,
            transaction_pooler=self.transaction_pooler,
        )

    async def _wait_unless_stopped(self, work: Awaitable[asyncpg.Pool]) -> asyncpg.Pool | None:
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        return None

    async def _close(self) -> None:
        for pool in (self.pool, self.control):
            if pool is None:
                continue
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except Exception:
                pool.terminate()
