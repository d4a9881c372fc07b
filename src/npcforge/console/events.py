"""Live job changes for the console's browsers: ONE LISTEN connection per API process, fanned out.

The database notifies `npcforge_job_events` once per transaction that changed a job's state
(0007_console.sql). On a notification the hub reads what changed since the last read — one
bounded, indexed query whatever the number of browsers — and hands each change to the
subscriptions allowed to see it (their owner's NPCs, or all for the service role), which the
Server-Sent Events responses drain. The read starts a few seconds before the last change it saw
(a transaction may commit after a later one did) and drops what it already sent. Notifications
are not durable: the hub also reads after every (re)connect and every `sweep_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from npcforge.db.connect import DB_UNAVAILABLE
from npcforge.db.console import ConsoleReads, Row
from npcforge.worker.listener import Listener

log = logging.getLogger("npcforge.console")

EVENTS_CHANNEL = "npcforge_job_events"
# How far back each read looks behind the newest change it saw.
OVERLAP = timedelta(seconds=5)
MAX_CHANGES_PER_READ = 500
MAX_PAGES = 20
QUEUE_SIZE = 256


@dataclass(eq=False)
class Subscription:
    """One browser's stream: the NPCs of `owner` (None: all), or of one NPC."""

    owner: UUID | None
    npc_id: UUID | None = None
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    overflowed: bool = False

    def wants(self, row: Row) -> bool:
        return (self.owner is None or row["owner_id"] == self.owner) and (
            self.npc_id is None or row["npc_id"] == self.npc_id
        )


def change_event(row: Row) -> dict[str, Any]:
    """A changed job as the browser's script reads it (no owner id)."""

    def iso(at: datetime | None) -> str | None:
        return at.isoformat() if at is not None else None

    return {
        "npcId": str(row["npc_id"]),
        "name": row["name"],
        "jobId": str(row["job_id"]) if row["job_id"] is not None else None,
        "status": row["status"],
        "attempts": row["attempts"],
        "errorCode": row["error_code"],
        "startedAt": iso(row["started_at"]),
        "claimedAt": iso(row["claimed_at"]),
        "finishedAt": iso(row["finished_at"]),
        "updatedAt": iso(row["updated_at"]),
    }


class EventHub:
    def __init__(self, dsn: str, pool: Any, *, sweep_seconds: float = 10.0) -> None:
        self.reads = ConsoleReads(pool)
        self.sweep_seconds = sweep_seconds
        self.listener = Listener(
            dsn, self._wake, self._wake, channel=EVENTS_CHANNEL,
            application_name="npcforge-console-events",
        )  # fmt: skip
        self.subscriptions: set[Subscription] = set()
        self.reads_done = 0
        self._dirty = asyncio.Event()
        self._since: datetime | None = None
        self._sent: dict[UUID, datetime] = {}  # npc -> the change last handed out
        self._tasks: list[asyncio.Task[None]] = []

    def _wake(self) -> None:
        self._dirty.set()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.listener.run(), name="console-listener"),
            asyncio.create_task(self._pump(), name="console-events"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def subscribe(self, owner: UUID | None, npc_id: UUID | None = None) -> Subscription:
        subscription = Subscription(owner=owner, npc_id=npc_id)
        self.subscriptions.add(subscription)
        return subscription

    async def catch_up(self, subscription: Subscription, since: datetime) -> None:
        """Hand `subscription` the changes after `since` that it wants (a page rendered before
        the browser subscribed must not miss what happened in between). The read starts OVERLAP
        earlier: a change stamped after the page's reads but before its clock was taken, or
        committed after it, is in no page and was handed to no subscription yet. The rows are
        the jobs' current state, so sending one again is harmless."""
        rows = await self.reads.job_changes(since=since - OVERLAP, limit=MAX_CHANGES_PER_READ)
        for row in rows:
            if subscription.wants(row):
                try:
                    subscription.queue.put_nowait(change_event(row))
                except asyncio.QueueFull:
                    subscription.overflowed = True
                    return

    def unsubscribe(self, subscription: Subscription) -> None:
        self.subscriptions.discard(subscription)

    async def _pump(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout=self.sweep_seconds)
            self._dirty.clear()
            try:
                await self.read_changes()
            except Exception as exc:
                if isinstance(exc, DB_UNAVAILABLE):
                    log.warning("console events: database unavailable", extra={"error": repr(exc)})
                else:
                    log.exception("console events: reading changes failed")
                await asyncio.sleep(1.0)

    async def read_changes(self) -> None:
        """Read what changed since the last read and hand it to the subscriptions."""
        if self._since is None or not self.subscriptions:
            # Nobody watches: only remember where now is.
            self._since = await self.reads.latest_change() - OVERLAP
            return
        start = self._since - OVERLAP
        for _ in range(MAX_PAGES):
            rows = await self.reads.job_changes(since=start, limit=MAX_CHANGES_PER_READ)
            self.reads_done += 1
            self._hand_out(rows)
            if len(rows) < MAX_CHANGES_PER_READ:
                break
            start = rows[-1]["updated_at"]  # a bulk change: page on from the last row
        horizon = self._since - 2 * OVERLAP
        self._sent = {npc: at for npc, at in self._sent.items() if at >= horizon}

    def _hand_out(self, rows: list[Row]) -> None:
        assert self._since is not None
        for row in rows:
            at: datetime = row["updated_at"]
            if self._sent.get(row["npc_id"], at - OVERLAP) >= at:
                continue
            self._sent[row["npc_id"]] = at
            self._since = max(self._since, at)
            event = change_event(row)
            for subscription in list(self.subscriptions):
                if subscription.wants(row):
                    try:
                        subscription.queue.put_nowait(event)
                    except asyncio.QueueFull:
                        subscription.overflowed = True  # the page reloads itself
