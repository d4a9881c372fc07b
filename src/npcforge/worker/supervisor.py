"""The supervisor of the worker's loops: starts them, watches them, restarts one that crashed,
stops them; and the heartbeat that tells systemd whether they are alive.

A loop reports (`beat`) at least once per round. One that ended, or has not reported for
`stale_after` seconds, is unwell: the heartbeat then withholds the watchdog ping, so systemd
restarts a half-alive daemon. Losing PostgreSQL is not a crash: a loop reports it
(`db_trouble`), waits and carries on, and the supervisor only restarts what raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from npcforge.backoff import backoff
from npcforge.db.connect import DB_UNAVAILABLE
from npcforge.metrics import WorkerMetrics
from npcforge.worker.sdnotify import SystemdNotifier

log = logging.getLogger("npcforge.worker")


def loop_backoff(failures: int, cap: float = 5.0) -> float:
    """A worker loop's wait after its `failures`-th failure in a row."""
    return backoff(failures, base=0.1, cap=cap, floor=0.5)


class Supervisor:
    def __init__(self, *, metrics: WorkerMetrics, stale_after: float) -> None:
        self.metrics = metrics
        # Every wait in a loop is bounded by its interval and every statement by a timeout, so
        # a loop silent for this long is stuck.
        self.stale_after = stale_after
        self.db_reachable = False
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._beats: dict[str, float] = {}
        self._db_failures: dict[str, int] = {}  # by loop, in a row

    # --- start ---------------------------------------------------------------------------

    def start(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        self.beat(name)
        self._loops[name] = asyncio.create_task(self._supervise(name, loop), name=name)

    def beat(self, name: str) -> None:
        """The loop `name` is making progress."""
        self._beats[name] = time.monotonic()

    # --- watch ---------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Every loop is running and reported recently (a database outage is not a hang)."""
        return bool(self._loops) and not self.unwell()

    def unwell(self) -> list[str]:
        now = time.monotonic()
        return [
            name
            for name, task in self._loops.items()
            if task.done() or now - self._beats.get(name, 0.0) > self.stale_after
        ]

    def db_trouble(self, loop: str, exc: BaseException) -> float:
        """`loop` could not reach the database; how long it should wait before trying again
        (longer with each failure in a row)."""
        self.metrics.db_errors.labels(loop=loop).inc()
        if self.db_reachable:
            log.warning(
                "database unavailable; retrying",
                extra={"action": "db_down", "loop": loop, "error": type(exc).__name__},
            )
        self.db_reachable = False
        self._db_failures[loop] = failures = self._db_failures.get(loop, 0) + 1
        return loop_backoff(failures)

    def db_fine(self, loop: str) -> None:
        """`loop` reached the database."""
        self._db_failures.pop(loop, None)
        if not self.db_reachable:
            log.info("database reachable again", extra={"action": "db_up"})
        self.db_reachable = True

    # --- restart -------------------------------------------------------------------------

    async def _supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        failures = 0
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except DB_UNAVAILABLE as exc:
                self.db_trouble(name, exc)
            except Exception:
                self.metrics.loop_crashes.labels(loop=name).inc()
                log.exception("worker loop crashed; restarting", extra={"loop": name})
            failures += 1
            self.beat(name)
            await asyncio.sleep(loop_backoff(failures))
            self.beat(name)

    # --- stop ----------------------------------------------------------------------------

    async def stop(self, *names: str, grace: float = 0.0) -> None:
        """Stop these loops; the first may finish the round it is in for up to `grace` s."""
        tasks = [self._loops.pop(name) for name in names if name in self._loops]
        if tasks and grace > 0:
            with contextlib.suppress(TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(tasks[0]), timeout=grace)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def stop_all(self) -> None:
        await self.stop(*self._loops)

    # --- the heartbeat -------------------------------------------------------------------

    async def heartbeat(
        self, notifier: SystemdNotifier, ready: asyncio.Event, status: Callable[[], str]
    ) -> None:
        """WATCHDOG=1 every half WATCHDOG_USEC while the loops are alive; STATUS= on change.
        Runs as the loop "heartbeat"."""
        interval = notifier.watchdog_interval
        tick = min(1.0, interval) if interval else 1.0
        last_ping = 0.0
        last_status = ""
        withheld = False
        while True:
            self.beat("heartbeat")
            now = time.monotonic()
            if interval and ready.is_set() and now - last_ping >= interval * 0.9:
                if self.alive:
                    notifier.watchdog()
                    last_ping = now
                    withheld = False
                elif not withheld:
                    withheld = True
                    log.error(
                        "a worker loop is stuck or dead; withholding the watchdog ping",
                        extra={"action": "watchdog_withheld", "loops": self.unwell()},
                    )
            text = status()
            if text != last_status and ready.is_set():
                notifier.status(text)
                last_status = text
            await asyncio.sleep(tick)
