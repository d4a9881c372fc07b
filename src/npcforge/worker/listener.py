"""The one LISTEN connection: notifications wake the claimer; a self-NOTIFY probe proves the
connection is alive; any loss reconnects with backoff and jitter and triggers a catch-up claim."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Callable
from typing import Any

from npcforge.db.connect import connect

log = logging.getLogger("npcforge.listener")

JOBS_CHANNEL = "npcforge_jobs"


class Listener:
    def __init__(
        self,
        dsn: str,
        on_notify: Callable[[], None],
        on_connected: Callable[[], None],
        *,
        probe_interval: float = 3.0,
        probe_timeout: float = 5.0,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        self._dsn = dsn
        self._on_notify = on_notify
        self._on_connected = on_connected
        self._on_state = on_state or (lambda up: None)
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._probe_channel = f"npcforge_probe_{uuid.uuid4().hex[:16]}"
        self._probe_seen = asyncio.Event()
        self._lost = asyncio.Event()
        self.up = False
        self.reconnects = 0

    def _notified(self, _conn: Any, _pid: int, channel: str, _payload: str) -> None:
        if channel == JOBS_CHANNEL:
            self._on_notify()
        else:
            self._probe_seen.set()

    def _terminated(self, _conn: Any) -> None:
        self._lost.set()

    def _set_up(self, up: bool) -> None:
        self.up = up
        self._on_state(up)

    async def run(self) -> None:
        """Stay connected until cancelled."""
        failures = 0
        while True:
            conn = None
            try:
                conn = await connect(self._dsn, application_name="npcforge-listener")
                self._lost.clear()
                conn.add_termination_listener(self._terminated)
                await conn.add_listener(JOBS_CHANNEL, self._notified)
                await conn.add_listener(self._probe_channel, self._notified)
                self._set_up(True)
                if failures or self.reconnects:
                    log.info("listener reconnected", extra={"action": "listener_up"})
                failures = 0
                self._on_connected()  # catch-up claim: notifications may have been missed
                await self._probe_until_lost(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning(
                    "listener connection failed",
                    extra={"action": "listener_down", "error": type(exc).__name__},
                )
            finally:
                self._set_up(False)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
            self.reconnects += 1
            delay = min(10.0, 0.2 * 2 ** min(failures, 6)) * random.uniform(0.5, 1.0)
            await asyncio.sleep(delay)

    async def _probe_until_lost(self, conn: Any) -> None:
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), timeout=self._probe_interval)
                raise ConnectionError("LISTEN connection terminated")
            except TimeoutError:
                pass
            self._probe_seen.clear()
            await asyncio.wait_for(
                conn.execute(f"NOTIFY {self._probe_channel}"), timeout=self._probe_timeout
            )
            await asyncio.wait_for(self._probe_seen.wait(), timeout=self._probe_timeout)
