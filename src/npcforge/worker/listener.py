"""The one LISTEN connection: notifications wake the claimer; a self-NOTIFY probe proves the
connection is alive; any loss reconnects with backoff and jitter and triggers a catch-up claim.

Loss is noticed three ways: the driver's termination callback (the server closed the
connection), TCP keepalives (set up by `connect`, for a peer that vanished), and the probe, which
catches everything else (a stalled backend, a half-open socket): at most `probe_interval +
probe_timeout` seconds pass between the last proof of life and the reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any

from npcforge.backoff import backoff
from npcforge.db.connect import connect

log = logging.getLogger("npcforge.listener")

JOBS_CHANNEL = "npcforge_jobs"
MAX_RECONNECT_DELAY = 5.0


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
        beat: Callable[[], None] | None = None,
        channel: str = JOBS_CHANNEL,
        application_name: str = "npcforge-listener",
    ) -> None:
        self._dsn = dsn
        self.channel = channel
        self._application_name = application_name
        self._on_notify = on_notify
        self._on_connected = on_connected
        self._on_state = on_state or (lambda up: None)
        self._beat = beat or (lambda: None)
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self._probe_channel = f"npcforge_probe_{uuid.uuid4().hex[:16]}"
        self._probe_seen = asyncio.Event()
        self._lost = asyncio.Event()
        self.up = False
        self.connections = 0

    def _notified(self, _conn: Any, _pid: int, channel: str, _payload: str) -> None:
        if channel == self.channel:
            self._on_notify()
        else:
            self._probe_seen.set()

    def _terminated(self, _conn: Any) -> None:
        self._lost.set()

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            self.up = up
            self._on_state(up)

    async def run(self) -> None:
        """Stay connected until cancelled."""
        failures = 0
        while True:
            self._beat()
            conn = None
            try:
                conn = await connect(self._dsn, application_name=self._application_name)
                self._lost.clear()
                conn.add_termination_listener(self._terminated)
                await conn.add_listener(self.channel, self._notified)
                await conn.add_listener(self._probe_channel, self._notified)
                self.connections += 1
                self._set_up(True)
                if self.connections > 1:
                    log.info("listener reconnected", extra={"action": "listener_up"})
                failures = 0
                self._on_connected()  # catch-up claim: notifications may have been missed
                await self._probe_until_lost(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning(
                    "listener connection lost" if self.up else "listener cannot connect",
                    extra={"action": "listener_down", "error": type(exc).__name__},
                )
            finally:
                self._set_up(False)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
            delay = backoff(failures, base=0.2, cap=MAX_RECONNECT_DELAY, floor=0.5)
            self._beat()
            await asyncio.sleep(delay)

    async def _probe_until_lost(self, conn: Any) -> None:
        while True:
            self._beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), timeout=self.probe_interval)
                raise ConnectionError("the server closed the LISTEN connection")
            self._probe_seen.clear()
            try:
                async with asyncio.timeout(self.probe_timeout):
                    await conn.execute(f"NOTIFY {self._probe_channel}")
                    await self._probe_seen.wait()
            except TimeoutError:
                raise ConnectionError(
                    f"no answer to the listener's probe within {self.probe_timeout:g} s"
                ) from None
