"""The fleet-wide upstream gate: every worker sharing the database obeys one cap and one pause.

State lives in PostgreSQL (`npcforge_rate_limits`, sql/migrations/0003_rate_limit.sql); the
database functions own every decision, this class only asks and waits.

- With `OPENROUTER_REQUESTS_PER_MINUTE`, each upstream call takes a slot from
  `npcforge_rate_acquire`: one round trip, then a sleep until the slot. Slots are spaced so that
  no 60 s window holds more than the cap; after a 429 the spacing widens (the rate halves) and
  narrows again by one call per minute per success (reported with the next acquire, so a success
  costs no round trip).
- Without a cap, a call costs no round trip: the gate only checks a pause it already knows of.
- A 429 (`on_rate_limited`) pauses this process at once and the fleet through
  `npcforge_rate_pause`, which NOTIFYs every gate. A slot handed out before a pause is void
  (its `seq` is older than the pause); its holder waits the pause out and asks again.
- A pause longer than `max_pause_wait` is not slept on a job slot: `acquire` raises a retryable
  LimitExceeded carrying the remaining time, and the worker requeues the job for then.

The gate holds one connection of its own, opened on first use and kept (with reconnects) by a
background task; it LISTENs on it and runs its few statements on it, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from npcforge.backoff import backoff
from npcforge.db.connect import connect
from npcforge.db.queries import q
from npcforge.errors import InternalError, LimitExceeded

log = logging.getLogger("npcforge.upstream_gate")

CHANNEL = "npcforge_rate_limits"
DEFAULT_LIMITER = "openrouter"
# A 429 without Retry-After still pauses the fleet briefly: it is the only "slow down" we get.
DEFAULT_PAUSE_SECONDS = 1.0
# A Retry-After beyond `max_pause` (OPENROUTER_MAX_DELAY_SECONDS) is not taken literally: a
# broken or hostile answer must not stop the fleet for longer.
MAX_PAUSE_SECONDS = 180.0
# How long a call waits for the gate's connection (at first use: to learn of a pause in force).
START_WAIT_SECONDS = 2.0
STATEMENT_TIMEOUT_SECONDS = 5.0
# asyncpg does not always report a connection the server closed; look every so often.
LIVENESS_CHECK_SECONDS = 2.0

_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # e.g. a statement on a connection the server just closed
)


@dataclass(frozen=True, slots=True)
class Slot:
    """The database's answer to one acquire."""

    wait_s: float
    granted: bool
    seq: int
    pause_s: float
    rate: float


class PostgresUpstreamGate:
    """UpstreamGate counted in PostgreSQL: a fleet-wide cap (optional) and fleet-wide 429 pauses."""

    def __init__(
        self,
        dsn: str,
        *,
        per_minute: int | None,
        max_pause_wait: float,
        max_slot_wait: float,
        max_pause: float = MAX_PAUSE_SECONDS,
        name: str = DEFAULT_LIMITER,
        connect_wait: float = START_WAIT_SECONDS,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dsn = dsn
        self._per_minute = float(per_minute) if per_minute is not None else None
        self._max_pause_wait = max_pause_wait
        self._max_slot_wait = max_slot_wait
        self._max_pause = max_pause
        self._name = name
        self._connect_wait = connect_wait
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock

        self._paused_until = 0.0  # on self._clock
        self._pause_seq = 0
        self._successes = 0  # not yet reported to the database
        self._below_cap = False  # the last answer said the rate is reduced

        self._conn: Any = None
        self._lost = asyncio.Event()  # the current connection is gone
        self._conn_lock = asyncio.Lock()  # one statement at a time on the connection
        self._connected = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        self._warm = False  # the first contact with the database was made (or given up on)
        self._closed = False

    # --- UpstreamGate ------------------------------------------------------------------------------

    async def acquire(self) -> None:
        if not self._warm:
            await self._warm_up()
        while True:
            await self._wait_out_pause()
            if self._per_minute is None:
                return
            slot = await self._take_slot(self._per_minute)
            if not slot.granted:
                raise LimitExceeded(
                    f"the fleet-wide cap of {self._per_minute:g} calls per minute has no free "
                    f"slot for {slot.wait_s:.1f}s",
                    details={"rateLimit": "fleet", "perMinute": slot.rate},
                    retryable=True,
                    retry_after=slot.wait_s,
                )
            if slot.wait_s > 0:
                await asyncio.sleep(slot.wait_s)
            if self._pause_seq == slot.seq and self.paused_for <= 0:
                return
            # A pause began after this slot was handed out: the slot is void, ask again.

    async def on_rate_limited(self, retry_after: float | None) -> None:
        seconds = DEFAULT_PAUSE_SECONDS if retry_after is None else retry_after
        seconds = min(max(seconds, 0.0), self._max_pause)
        self._extend_pause(seconds)  # this process stops at once, the fleet a moment later
        row = None
        for attempt in range(2):
            try:
                row = await self._fetchrow(q("rate_pause"), self._name, seconds)
                break
            except _DB_ERRORS as exc:
                if attempt == 0:
                    # Most likely the connection just dropped: give the gate a moment to reconnect.
                    await asyncio.sleep(0.2)
                    continue
                log.warning(
                    "could not pause the fleet; pausing this worker only",
                    extra={"error": type(exc).__name__, "pause_s": seconds},
                )
                return
        if row is not None:
            self._learn(int(row["seq"]), float(row["pause_s"]))
            self._below_cap = self._per_minute is not None and float(row["rate_factor"]) < 1.0
            log.warning(
                "upstream rate limit: fleet paused",
                extra={
                    "pause_s": round(float(row["pause_s"]), 3),
                    "pause_seq": int(row["seq"]),
                    "rate_factor": float(row["rate_factor"]),
                },
            )

    async def on_success(self) -> None:
        if self._below_cap:
            self._successes += 1

    async def close(self) -> None:
        self._closed = True
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        await self._drop_connection()

    # --- what this process knows -------------------------------------------------------------

    @property
    def paused_for(self) -> float:
        """Seconds of pause this process knows to be in force."""
        return max(0.0, self._paused_until - self._clock())

    def _extend_pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def _learn(self, seq: int, pause_s: float) -> None:
        """Adopt the database's pause generation and remaining pause (never going backwards)."""
        self._pause_seq = max(self._pause_seq, seq)
        if pause_s > 0:
            self._extend_pause(pause_s)

    async def _wait_out_pause(self) -> None:
        while True:
            remaining = self.paused_for
            if remaining <= 0:
                return
            if remaining > self._max_pause_wait:
                raise LimitExceeded(
                    f"upstream rate limiting paused the fleet for another {remaining:.1f}s",
                    details={"rateLimit": "fleet-pause"},
                    retryable=True,
                    retry_after=remaining,
                )
            # Spread the fleet's restart a little instead of firing every waiting call at once.
            jitter = self._rng.uniform(0.0, min(0.5, remaining * 0.1))
            await asyncio.sleep(remaining + jitter)

    # --- talking to the database -------------------------------------------------------------

    async def _take_slot(self, per_minute: float) -> Slot:
        successes, self._successes = self._successes, 0
        try:
            row = await self._fetchrow(
                q("rate_acquire"), self._name, per_minute, successes, self._max_slot_wait
            )
        except _DB_ERRORS as exc:
            self._successes += successes
            raise InternalError(
                f"the fleet rate limiter is unavailable ({type(exc).__name__})",
                details={"rateLimit": "fleet"},
                retryable=True,
            ) from None
        assert row is not None
        slot = Slot(
            wait_s=max(0.0, float(row["wait_s"])),
            granted=bool(row["granted"]),
            seq=int(row["seq"]),
            pause_s=float(row["pause_s"]),
            rate=float(row["rate"]),
        )
        self._learn(slot.seq, slot.pause_s)
        self._below_cap = slot.rate < per_minute
        return slot

    async def _fetchrow(self, sql: str, *args: object) -> Any:
        if not self._warm:
            await self._warm_up()
        if not self._connected.is_set():
            await asyncio.wait_for(self._connected.wait(), self._connect_wait)
        async with self._conn_lock:
            conn = self._conn
            if conn is None or conn.is_closed():
                self._connection_lost()
                raise asyncpg.InterfaceError("the rate gate's connection is closed")
            try:
                return await conn.fetchrow(sql, *args, timeout=STATEMENT_TIMEOUT_SECONDS)
            except _DB_ERRORS:
                if conn.is_closed():
                    self._connection_lost()
                raise

    def _connection_lost(self) -> None:
        """Tell the keeper to reconnect now (it may not have heard from asyncpg)."""
        self._connected.clear()
        self._lost.set()

    async def _warm_up(self) -> None:
        """Open the connection on first use and wait briefly for it, to learn of a pause in force.

        If the database cannot be reached in time, calls go ahead on what this process knows.
        """
        if self._keeper is None and not self._closed:
            self._keeper = asyncio.create_task(self._keep_connected(), name="rate-gate")
        if self._keeper is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), self._connect_wait)
        self._warm = True

    async def _keep_connected(self) -> None:
        """Hold the connection, reconnecting with backoff whenever it is lost."""
        failures = 0
        connections = 0
        while True:
            try:
                connections += 1
                await self._hold_connection(reconnected=connections > 1)
                failures = 0
                log.warning("rate gate lost its database connection; reconnecting")
            except _DB_ERRORS as exc:
                failures += 1
                log.warning(
                    "rate gate cannot reach the database",
                    extra={"error": type(exc).__name__, "failures": failures},
                )
            except Exception:
                failures += 1
                log.exception("rate gate connection loop failed; restarting")
            finally:
                self._connected.clear()
            await self._drop_connection()
            await asyncio.sleep(backoff(failures, base=0.1, cap=5.0, floor=0.5, rng=self._rng))

    async def _hold_connection(self, *, reconnected: bool) -> None:
        """Connect, LISTEN, read the pause in force, then return when the connection drops."""
        lost = self._lost = asyncio.Event()
        conn = await connect(self._dsn, application_name="npcforge-rate-gate")
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(CHANNEL, self._on_notify)
            row = await conn.fetchrow(
                q("rate_state"), self._name, timeout=STATEMENT_TIMEOUT_SECONDS
            )
        except BaseException:
            conn.terminate()
            raise
        if row is not None:
            self._learn(int(row["seq"]), float(row["pause_s"]))
        self._conn = conn  # only now may statements from acquire/on_rate_limited use it
        self._connected.set()
        if reconnected:
            log.info("rate gate reconnected")
        while not lost.is_set() and not conn.is_closed():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), LIVENESS_CHECK_SECONDS)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            event = json.loads(payload)
            if event.get("name") != self._name:
                return
            seq, seconds = int(event["seq"]), float(event["seconds"])
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("ignored a malformed rate-limit notification")
            return
        if seq > self._pause_seq:
            log.info(
                "fleet pause announced",
                extra={"pause_s": round(seconds, 3), "pause_seq": seq},
            )
        self._learn(seq, seconds)

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), timeout=2.0)
        except asyncio.CancelledError:
            conn.terminate()
            raise
        except _DB_ERRORS:
            conn.terminate()
