"""Worker processes under a supervisor, the way systemd runs them with `Restart=always`.

Each slot runs `python -m npcforge worker` (environment only, as the benchmarks start it). When
its process exits, the supervisor starts a new one after RESTART_DELAY_S (systemd's default
`RestartSec=100ms`) unless the slot was told not to restart. Every process a slot ran is kept
as an Incarnation: its pid (worker ids embed it), when it ran, how it ended and whether the
harness caused that end, so an exit nobody asked for shows up in the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _harness as h

RESTART_DELAY_S = 0.1
POLL_S = 0.02


@dataclass
class Incarnation:
    slot: str
    number: int
    process: h.Process
    started: float
    ended: float | None = None
    exit_code: int | None = None
    # Why the harness ended it ("sigkill", "sigterm"), or None if it ended on its own.
    ended_by: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def summary(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "number": self.number,
            "pid": self.pid,
            "started": self.started,
            "ended": self.ended,
            "exit_code": self.exit_code,
            "ended_by": self.ended_by,
        }


@dataclass
class WorkerSlot:
    name: str
    env: dict[str, str]
    workdir: Path
    restart: bool = True
    incarnations: list[Incarnation] = field(default_factory=list)
    _stopping: bool = False
    _task: asyncio.Task[None] | None = None

    @property
    def current(self) -> Incarnation | None:
        last = self.incarnations[-1] if self.incarnations else None
        return last if last is not None and last.ended is None else None

    def start(self) -> None:
        self._spawn()
        self._task = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    def _spawn(self) -> Incarnation:
        number = len(self.incarnations) + 1
        process = h.spawn(
            f"{self.name}-{number}",
            [h.PYTHON, "-m", "npcforge", "worker"],
            env=self.env,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
        )
        incarnation = Incarnation(self.name, number, process, time.time())
        self.incarnations.append(incarnation)
        return incarnation

    async def _supervise(self) -> None:
        while True:
            incarnation = self.incarnations[-1]
            while (code := incarnation.process.popen.poll()) is None:
                await asyncio.sleep(POLL_S)
            incarnation.ended = incarnation.ended or time.time()
            incarnation.exit_code = code
            if self._stopping or not self.restart:
                return
            await asyncio.sleep(RESTART_DELAY_S)
            if self._stopping:
                return
            self._spawn()

    def kill(self) -> Incarnation | None:
        """SIGKILL the running process (the supervisor restarts it if the slot restarts)."""
        incarnation = self.current
        if incarnation is None:
            return None
        incarnation.ended_by = "sigkill"
        incarnation.ended = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.kill(incarnation.pid, signal.SIGKILL)
        return incarnation

    async def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (the daemon drains and exits 0), SIGKILL after `timeout`."""
        self._stopping = True
        incarnation = self.current
        if incarnation is not None:
            incarnation.ended_by = "sigterm"
            await asyncio.to_thread(incarnation.process.stop, timeout)
        if self._task is not None:
            await self._task

    def unexpected_exits(self) -> list[Incarnation]:
        """Processes that ended without the harness asking, or failed to stop cleanly."""
        return [
            i
            for i in self.incarnations
            if i.ended is not None
            and (i.ended_by is None or (i.ended_by == "sigterm" and i.exit_code != 0))
        ]


class Fleet:
    """The worker slots of one run."""

    def __init__(self, slots: list[WorkerSlot]) -> None:
        self.slots = {slot.name: slot for slot in slots}

    def start(self) -> None:
        for slot in self.slots.values():
            slot.start()

    async def stop(self) -> None:
        await asyncio.gather(*(slot.stop() for slot in self.slots.values()))

    def incarnations(self) -> list[Incarnation]:
        return [i for slot in self.slots.values() for i in slot.incarnations]

    def unexpected_exits(self) -> list[dict[str, Any]]:
        return [
            {**i.summary(), "log_tail": i.process.log_tail(15)}
            for slot in self.slots.values()
            for i in slot.unexpected_exits()
        ]

    def pids(self) -> list[int]:
        return [slot.current.pid for slot in self.slots.values() if slot.current is not None]
