"""The worker daemon: supervised loops around a claim → run → finalize pipeline.

Loops: the listener (LISTEN + probe), the claimer (notification / timer / slot-freed wake-ups),
the lease keeper (one renewal statement per lease/3), the reaper (expired leases, queue gauges)
and the heartbeat (systemd watchdog and status). Each is supervised: a crash is logged and the
loop restarts with backoff. None of them ends the daemon because PostgreSQL went away: they wait
for it, and running jobs keep their results until they can be finalized.

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
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from npcforge.backoff import backoff
from npcforge.db.connect import DB_UNAVAILABLE, create_pool
from npcforge.db.npcs import record_from_row
from npcforge.db.queries import q
from npcforge.errors import InternalError
from npcforge.generation.base import Provider, upstream_pause
from npcforge.metrics import WorkerMetrics
from npcforge.storage.base import Storage
from npcforge.worker.attempt import Claim, JobRunner, Outcome, log_fields
from npcforge.worker.listener import Listener
from npcforge.worker.sdnotify import SystemdNotifier

log = logging.getLogger("npcforge.worker")

# After an under-full claim, wait at least this long before claiming again: rows that are due
# but locked by someone else must not turn the claimer into a busy loop.
MIN_CLAIM_PAUSE = 0.1
# Jobs already writing their result at the drain deadline get this long to finish, so an upload
# is never cut off half-way.
FINALIZE_GRACE_SECONDS = 5.0
# How long shutdown keeps trying to hand jobs back while the database is unreachable.
HAND_BACK_SECONDS = 5.0
# Non-connection database errors in a job before it gives up on the database for this attempt.
MAX_STATEMENT_ERRORS = 3


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _backoff(failures: int, cap: float = 5.0) -> float:
    """A loop's wait after its `failures`-th failure in a row."""
    return backoff(failures, base=0.1, cap=cap, floor=0.5)


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
        max_retry_delay_seconds: float = 180.0,
        metrics: WorkerMetrics | None = None,
        notifier: SystemdNotifier | None = None,
        worker_id: str | None = None,
        pool_size: int | None = None,
        db_timeout: float = 10.0,
        listener_probe_interval: float = 3.0,
        listener_probe_timeout: float = 5.0,
        listen_dsn: str | None = None,
        transaction_pooler: bool = False,
    ) -> None:
        self.dsn = dsn
        # LISTEN needs a session of its own: behind a transaction pooler (`transaction_pooler`,
        # the pools' DSN) it goes over `listen_dsn`, a direct or session-mode URL.
        self.listen_dsn = listen_dsn or dsn
        self.transaction_pooler = transaction_pooler
        self.provider = provider
        self.storage = storage
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.poll_seconds = poll_seconds
        self.shutdown_seconds = shutdown_seconds
        self.job_deadline_seconds = job_deadline_seconds
        self.max_retry_delay_seconds = max_retry_delay_seconds
        self.metrics = metrics or WorkerMetrics()
        self.notifier = notifier or SystemdNotifier(None)
        self.worker_id = worker_id or make_worker_id()
        self.pool_size = pool_size or min(max(4, concurrency // 4 + 2), 20)
        self.db_timeout = db_timeout
        # A claim sets its leases' expiry when its statement starts: one that came back later
        # than this would hand out leases already running out, which other workers' reapers
        # take back while this one starts the jobs (a second run of each). Cut short, the claim
        # is retried, or adopted with most of its lease left if it did commit.
        self.claim_timeout = min(db_timeout, lease_seconds / 3)

        self.pool: asyncpg.Pool | None = None  # jobs
        self.control: asyncpg.Pool | None = None  # claims, renewals, reaping, hand-back
        self.runner: JobRunner | None = None
        self.listener = Listener(
            self.listen_dsn,
            self._on_notify,
            self._on_listener_connected,
            probe_interval=listener_probe_interval,
            probe_timeout=listener_probe_timeout,
            on_state=self._on_listener_state,
            beat=lambda: self._beat("listener"),
        )
        self.running: dict[uuid.UUID, tuple[Claim, asyncio.Task[None]]] = {}
        self.done_count = 0
        self.ready = asyncio.Event()
        self.stopping = asyncio.Event()
        self.db_reachable = False
        self._wake = asyncio.Event()
        self._notified = False
        self._maybe_more = True
        self._claimed_once = False
        # A claim failed after it may have committed: some rows may be ours without our knowing.
        self._claim_in_doubt = False
        # Claims this worker stopped working on without finalizing (the lease lapses, counted).
        self._dropped: set[uuid.UUID] = set()
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._beats: dict[str, float] = {}
        # A loop that has not reported for this long is stuck: every wait in a loop is bounded
        # by its interval, and every statement by db_timeout.
        self._stale_after = (
            max(poll_seconds, lease_seconds / 3, listener_probe_interval + listener_probe_timeout)
            + 2 * db_timeout
            + 10
        )

    # --- wake-ups ---------------------------------------------------------------------

    def _on_notify(self) -> None:
        self.metrics.notifications.inc()
        self._notified = True
        self._maybe_more = True
        self._wake.set()

    def _on_listener_connected(self) -> None:
        if self.listener.connections > 1:
            self.metrics.listener_reconnects.inc()
        self._maybe_more = True
        self._wake.set()  # the catch-up claim
        self._maybe_ready()

    def _on_listener_state(self, up: bool) -> None:
        self.metrics.listener_up.set(1 if up else 0)

    def _maybe_ready(self) -> None:
        """READY=1 once: connected, listening, and the first claim went through."""
        if self.ready.is_set() or not (self._claimed_once and self.listener.up):
            return
        if self.stopping.is_set():
            return
        self.ready.set()
        self.notifier.ready(self.status_text())
        log.info("worker ready", extra={"action": "ready", "worker_id": self.worker_id})

    @property
    def free_slots(self) -> int:
        return self.concurrency - len(self.running)

    # --- health ---------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Every loop is running and reported recently (a database outage is not a hang)."""
        return bool(self._loops) and not self._unwell_loops()

    def _unwell_loops(self) -> list[str]:
        now = time.monotonic()
        return [
            name
            for name, task in self._loops.items()
            if task.done() or now - self._beats.get(name, 0.0) > self._stale_after
        ]

    async def check_database(self, timeout: float = 2.0) -> bool:
        if self.control is None:
            return False
        try:
            await self.control.fetchval(q("worker_db_ping"), timeout=timeout)
        except (*DB_UNAVAILABLE, asyncpg.PostgresError):
            return False
        return True

    def status_text(self) -> str:
        text = f"in flight {len(self.running)}/{self.concurrency}, done {self.done_count}"
        if self.stopping.is_set():
            return f"draining: {text}"
        if not self.db_reachable and self.control is not None:
            return f"{text}; database unreachable, retrying"
        if self.ready.is_set() and not self.listener.up:
            return f"{text}; listener reconnecting"
        return text

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Run until `stopping` is set, then drain and hand back; returns when done."""
        if not await self._connect_pools():
            return  # stopped before the database was ever reachable
        assert self.pool is not None
        self.runner = JobRunner(
            pool=self.pool,
            provider=self.provider,
            storage=self.storage,
            worker_id=self.worker_id,
            max_attempts=self.max_attempts,
            job_deadline=self.job_deadline_seconds,
            metrics=self.metrics,
            max_retry_delay=self.max_retry_delay_seconds,
        )
        self._start_loop("listener", self.listener.run)
        self._start_loop("claimer", self._claim_loop)
        self._start_loop("leases", self._lease_loop)
        self._start_loop("reaper", self._reap_loop)
        self._start_loop("heartbeat", self._heartbeat_loop)
        log.info(
            "worker started",
            extra={"worker_id": self.worker_id, "concurrency": self.concurrency, "action": "start"},
        )
        try:
            await self.stopping.wait()
        finally:
            await self._shutdown()

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()

    async def _shutdown(self) -> None:
        """Stop claiming → wait up to shutdown_seconds → cancel the rest → hand it back."""
        deadline = time.monotonic() + self.shutdown_seconds
        self.notifier.stopping()
        log.info(
            "worker stopping",
            extra={"action": "stop", "worker_id": self.worker_id, "in_flight": len(self.running)},
        )
        # The claimer may be inside a claim: let that finish (a claimed row must not go unseen).
        stopped = [self._loops.pop(name) for name in ("claimer", "reaper") if name in self._loops]
        if stopped:
            with contextlib.suppress(TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(stopped[0]), timeout=2.0)
        for task in stopped:
            task.cancel()
        self.notifier.status(self.status_text())
        await self._drain(deadline)  # leases are renewed and the watchdog fed meanwhile
        stopped.extend(self._loops.values())
        for task in stopped:
            task.cancel()
        await asyncio.gather(*stopped, return_exceptions=True)
        await self._close()
        log.info(
            "worker stopped",
            extra={"action": "stopped", "worker_id": self.worker_id, "done": self.done_count},
        )

    async def _connect_pools(self) -> bool:
        """Connect both pools, retrying with backoff until it works or the worker is stopped."""
        failures = 0
        while not self.stopping.is_set():
            try:
                if self.pool is None:
                    self.pool = await self._wait_unless_stopped(self._new_pool(self.pool_size))
                if self.control is None and self.pool is not None:
                    # Claims, renewals and reaping may commit without waiting for the WAL flush:
                    # one lost in a crash only leaves a row as it was (queued, or on its old
                    # lease), and every finalize -- synchronous -- is fenced against that.
                    self.control = await self._wait_unless_stopped(
                        self._new_pool(3, synchronous_commit=False)
                    )
            except DB_UNAVAILABLE as exc:
                failures += 1
                delay = _backoff(failures, cap=10.0)
                log.warning(
                    "database unreachable at start; retrying",
                    extra={"error": type(exc).__name__, "retry_in_s": round(delay, 2)},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), timeout=delay)
                continue
            if self.pool is not None and self.control is not None:
                self.db_reachable = True
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

    async def _drain(self, deadline: float) -> None:
        """Let running jobs finish until the deadline; hand the rest back at once."""
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
        claims = [claim for claim, _ in leftover]
        if self._claim_in_doubt:
            claims += await self._lost_claims(known=[claim.lease_token for claim in claims])
        if claims:
            await self._hand_back(claims)

    async def _lost_claims(self, known: list[uuid.UUID]) -> list[Claim]:
        """Rows held by a claim whose reply never arrived (shutdown hands them back too)."""
        assert self.control is not None
        try:
            rows = await self.control.fetch(
                q("adopt_lost_claims"), self.worker_id, [*known, *self._dropped],
                timeout=self.db_timeout,
            )  # fmt: skip
        except DB_UNAVAILABLE:
            return []
        return [_claim_of(row) for row in rows]

    async def _hand_back(self, claims: list[Claim]) -> None:
        """Return unfinished jobs to the queue now, the interrupted attempt not counted."""
        assert self.control is not None and self.runner is not None
        deadline = time.monotonic() + HAND_BACK_SECONDS
        failures = 0
        while True:
            try:
                tokens = [claim.lease_token for claim in claims]
                async with (
                    self.control.acquire(timeout=self.db_timeout) as conn,
                    conn.transaction(),
                ):
                    rows = await conn.fetch(q("release_jobs"), self.worker_id, tokens)
                    released = {row["id"] for row in rows}
                    await self.runner.insert_attempts(
                        conn, [(c, Outcome("released")) for c in claims if c.npc_id in released]
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
                await asyncio.sleep(_backoff(failures, cap=1.0))
        self.metrics.released.inc(len(released))
        for claim in claims:
            if claim.npc_id in released:
                log.info(
                    "job handed back to the queue",
                    extra={**self._ids(claim), "action": "release", "duration_ms": _ms(claim)},
                )

    async def _close(self) -> None:
        for pool in (self.pool, self.control):
            if pool is None:
                continue
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except Exception:
                pool.terminate()

    # --- supervision --------------------------------------------------------------------

    def _start_loop(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        self._beat(name)
        self._loops[name] = asyncio.create_task(self._supervise(name, loop), name=name)

    async def _supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        failures = 0
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except DB_UNAVAILABLE as exc:
                self._db_trouble(name, exc)
            except Exception:
                self.metrics.loop_crashes.labels(loop=name).inc()
                log.exception("worker loop crashed; restarting", extra={"loop": name})
            failures += 1
            self._beat(name)
            await asyncio.sleep(_backoff(failures))
            self._beat(name)

    def _beat(self, name: str) -> None:
        self._beats[name] = time.monotonic()

    def _db_trouble(self, loop: str, exc: BaseException) -> None:
        self.metrics.db_errors.labels(loop=loop).inc()
        if self.db_reachable:
            log.warning(
                "database unavailable; retrying",
                extra={"action": "db_down", "loop": loop, "error": type(exc).__name__},
            )
        self.db_reachable = False

    def _db_fine(self) -> None:
        if not self.db_reachable:
            log.info("database reachable again", extra={"action": "db_up"})
        self.db_reachable = True

    # --- the claim loop -----------------------------------------------------------------

    async def _claim_loop(self) -> None:
        assert self.control is not None
        failures = 0
        while not self.stopping.is_set():
            self._beat("claimer")
            timeout = self.poll_seconds
            free = self.free_slots
            pause = upstream_pause(self.provider)
            if pause > 0:
                # The upstream rate-limited the fleet: claiming now would only burn attempts.
                timeout = min(timeout, pause)
                if not self._claimed_once and await self.check_database(self.db_timeout):
                    # Paused from the start: the database answering stands in for the first
                    # claim, so READY is not held back for the whole pause.
                    self._claimed_once = True
                    self._maybe_ready()
            elif free > 0:
                from_notify = self._notified
                self._notified = False
                self._wake.clear()
                try:
                    if self._claim_in_doubt:
                        free -= await self._adopt_lost_claims()
                    self._claim_in_doubt = True
                    rows = await self.control.fetch(
                        q("claim_jobs"), free, self.worker_id, self.lease_seconds,
                        timeout=self.claim_timeout,
                    )  # fmt: skip
                    self._claim_in_doubt = False
                    for row in rows:
                        self._start(row, from_notify)
                    wait = None
                    if len(rows) < free:
                        self._maybe_more = False
                        wait = await self.control.fetchval(
                            q("next_run_after"), timeout=self.db_timeout
                        )
                except DB_UNAVAILABLE as exc:
                    failures += 1
                    self._db_trouble("claimer", exc)
                    # Retry soon; a listener reconnect wakes us earlier for the catch-up claim.
                    timeout = min(timeout, _backoff(failures))
                else:
                    failures = 0
                    self._db_fine()
                    if not self._claimed_once:
                        self._claimed_once = True
                        self._maybe_ready()
                    if len(rows) == free:
                        continue  # a full batch: there may be more right now
                    if wait is not None:
                        timeout = min(timeout, max(MIN_CLAIM_PAUSE, wait.total_seconds()))
            if self.stopping.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def _adopt_lost_claims(self) -> int:
        """Start the jobs a lost claim reply left in our hands (their attempt already counted)."""
        assert self.control is not None
        rows = await self.control.fetch(
            q("adopt_lost_claims"), self.worker_id, [*self.running, *self._dropped],
            timeout=self.claim_timeout,
        )  # fmt: skip
        for row in rows:
            log.warning(
                "adopting a job claimed by a claim whose reply was lost",
                extra={"action": "adopt", "job_id": str(row["job_id"]), "npc_id": str(row["id"]),
                       "attempt": row["attempt"], "worker_id": self.worker_id},
            )  # fmt: skip
            self._start(row, from_notify=False)
        self._claim_in_doubt = False
        return len(rows)

    def _start(self, row: Any, from_notify: bool) -> None:
        claim = _claim_of(row)
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
        log.debug("job claimed", extra={**self._ids(claim), "action": "claim"})
        finished = False
        try:
            outcome = await self._attempt(claim)
            if outcome is not None:
                finished = True
                self._account(claim, outcome)
            elif not claim.abandoned:
                self._dropped.add(claim.lease_token)
        except asyncio.CancelledError:
            if claim.abandoned == "lease_lost":
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.runner.record_attempt(claim, Outcome("discarded")))
            raise
        except Exception:
            # Never expected (the attempt handles its own failures); the lease will lapse.
            self._dropped.add(claim.lease_token)
            log.exception("job crashed", extra={**self._ids(claim), "action": "crash"})
        finally:
            self.running.pop(claim.lease_token, None)
            if finished:
                self.done_count += 1
            self.metrics.in_flight.set(len(self.running))
            if self._maybe_more and not self.stopping.is_set():
                self._wake.set()

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
                self._db_trouble("job", exc)
            except asyncpg.PostgresError as exc:
                error = exc
                statement_errors += 1
                self.metrics.db_errors.labels(loop="job").inc()
                log.error(
                    "database refused a job statement",
                    extra={**self._ids(claim), "error": type(exc).__name__, "sqlstate": exc.sqlstate},
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
            delay = _backoff(failures)
            log.warning(
                "database unavailable during job; will retry",
                extra={**self._ids(claim), "phase": claim.phase, "error": type(error).__name__,
                       "retry_in_s": round(delay, 2)},
            )  # fmt: skip
            await asyncio.sleep(delay)

    def _account(self, claim: Claim, outcome: Outcome) -> None:
        extra: dict[str, Any] = {
            **self._ids(claim),
            "action": outcome.status,
            "duration_ms": _ms(claim),
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

    def _ids(self, claim: Claim) -> dict[str, Any]:
        return log_fields(claim, self.worker_id)

    # --- leases, reaper, heartbeat --------------------------------------------------------

    async def _lease_loop(self) -> None:
        assert self.control is not None
        interval = self.lease_seconds / 3
        failures = 0
        while True:
            self._beat("leases")
            delay = interval
            claims = {token: claim for token, (claim, _) in self.running.items()}
            if claims:
                try:
                    rows = await self.control.fetch(
                        q("renew_leases"), self.worker_id, list(claims), self.lease_seconds,
                        timeout=self.db_timeout,
                    )  # fmt: skip
                except DB_UNAVAILABLE as exc:
                    failures += 1
                    self._db_trouble("leases", exc)
                    delay = min(interval, _backoff(failures))
                else:
                    failures = 0
                    self._db_fine()
                    ours = {row["lease_token"] for row in rows}
                    for token, claim in claims.items():
                        if token not in ours:
                            self._give_up(claim)
            await asyncio.sleep(delay)

    def _give_up(self, claim: Claim) -> None:
        """The row is no longer this claim's (reaped, superseded, cancelled)."""
        entry = self.running.get(claim.lease_token)
        if entry is None or claim.abandoned or claim.phase != "producing":
            return  # gone, or already writing: its fenced finalize sorts itself out
        claim.abandoned = "lease_lost"
        self.metrics.lease_lost.inc()
        log.warning(
            "lease lost; abandoning the job",
            extra={**self._ids(claim), "action": "lease_lost", "duration_ms": _ms(claim)},
        )
        entry[1].cancel()

    async def _reap_loop(self) -> None:
        assert self.control is not None
        while True:
            self._beat("reaper")
            rows = await self.control.fetch(
                q("reap_expired_leases"), self.max_attempts, self.lease_seconds,
                list(self.running), timeout=self.db_timeout,
            )  # fmt: skip
            self._db_fine()
            for row in rows:
                self.metrics.rescued.inc()
                lost = row["status"] == "failed"
                if lost:
                    self.metrics.failed.labels(code="WORKER_LOST").inc()
                log.warning(
                    "took back a job whose lease expired",
                    extra={
                        "action": "reap",
                        "job_id": str(row["job_id"]),
                        "npc_id": str(row["id"]),
                        "attempt": row["attempts"],
                        "worker_id": self.worker_id,
                        "lost_worker_id": row["owner"],
                        "code": "WORKER_LOST",
                        "status": row["status"],
                    },
                )
            stats = await self.control.fetchrow(q("queue_stats"), timeout=self.db_timeout)
            if stats is not None:
                self.metrics.queue_depth.set(stats["depth"])
                self.metrics.oldest_age.set(stats["oldest_age"])
            await asyncio.sleep(self.poll_seconds)

    async def _heartbeat_loop(self) -> None:
        """WATCHDOG=1 every half WATCHDOG_USEC while the loops are alive; STATUS= on change."""
        interval = self.notifier.watchdog_interval
        tick = min(1.0, interval) if interval else 1.0
        last_ping = 0.0
        last_status = ""
        withheld = False
        while True:
            self._beat("heartbeat")
            now = time.monotonic()
            if interval and self.ready.is_set() and now - last_ping >= interval * 0.9:
                if self.alive:
                    self.notifier.watchdog()
                    last_ping = now
                    withheld = False
                elif not withheld:
                    withheld = True
                    log.error(
                        "a worker loop is stuck or dead; withholding the watchdog ping",
                        extra={"action": "watchdog_withheld", "loops": self._unwell_loops()},
                    )
            status = self.status_text()
            if status != last_status and self.ready.is_set():
                self.notifier.status(status)
                last_status = status
            await asyncio.sleep(tick)


def _claim_of(row: Any) -> Claim:
    """A claim from a claim_jobs row (which carries the record) or an adopt_lost_claims row."""
    with_record = "claimed_id" in row
    return Claim(
        npc_id=row["claimed_id"] if with_record else row["id"],
        job_id=row["job_id"],
        lease_token=row["lease_token"],
        attempt=row["attempt"],
        queued_at=row["queued_at"],
        claimed_at=row["claimed_at"],
        record=record_from_row(row) if with_record and row["id"] is not None else None,
        record_loaded=with_record,
    )


def _ms(claim: Claim) -> int:
    return int((time.monotonic() - claim.started_mono) * 1000)


def _age(moment: datetime) -> float:
    return max(0.0, (datetime.now(UTC) - moment).total_seconds())
