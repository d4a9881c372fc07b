"""Real `npcforge worker` processes for the queue tests, and a model stand-in we can slow down.

Workers run as subprocesses (`python -m npcforge worker`) against a test database, so signals,
exit codes, SIGKILL and lost connections are the real thing. Their JSON log lines go to a file
the test reads back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp

from clikit import cli_env
from standins.openrouter import OpenRouterStandin, RecordedRequest, Reply, openrouter_standin

BUCKET = "npc-xml-files"


def worker_env(dsn: str, storage_dir: Path, **extra: str) -> dict[str, str]:
    """A worker's environment: template provider and filesystem storage unless `extra` says."""
    (storage_dir / BUCKET).mkdir(parents=True, exist_ok=True)
    env = cli_env(
        DATABASE_URL=dsn,
        NPCFORGE_PROVIDER="template",
        NPCFORGE_STORAGE="filesystem",
        NPCFORGE_STORAGE_DIR=str(storage_dir),
        NPCFORGE_LEASE_SECONDS="4",
        NPCFORGE_POLL_SECONDS="0.5",
        NPCFORGE_SHUTDOWN_SECONDS="5",
        NPCFORGE_CONCURRENCY="4",
        NPCFORGE_LOG_LEVEL="info",
    )
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env.pop("WATCHDOG_PID", None)
    env.update(extra)
    return env


def model_env(standin: OpenRouterStandin) -> dict[str, str]:
    """Point a worker at the OpenRouter stand-in (one request per generation, no retries)."""
    return {
        "NPCFORGE_PROVIDER": "openrouter",
        "OPENROUTER_API_KEY": "sk-or-test",
        "OPENROUTER_BASE_URL": standin.base_url,
        "OPENROUTER_MAX_RETRIES": "0",
        "OPENROUTER_TIMEOUT_SECONDS": "120",
    }


class WorkerProcess:
    """One `npcforge worker` subprocess; its stderr (JSON lines) goes to `log_path`."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "npcforge", "worker"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while (code := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.pid} still running after {timeout} s")
            await asyncio.sleep(0.05)
        return code

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def logs(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(raw)
                if isinstance(doc, dict):
                    lines.append(doc)
        return lines

    def raw_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_log(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.logs():
                if predicate(line):
                    return line
            if not self.running():
                raise AssertionError(f"worker exited ({self.proc and self.proc.poll()}):\n"
                                     + self.raw_log()[-3000:])  # fmt: skip
            if time.monotonic() > deadline:
                raise AssertionError("log line not seen; log tail:\n" + self.raw_log()[-3000:])
            await asyncio.sleep(0.05)

    async def wait_ready(self, timeout: float = 20) -> None:
        await self.wait_log(lambda line: line.get("action") == "ready", timeout)


@contextlib.asynccontextmanager
async def worker_processes(
    envs: Iterable[dict[str, str]], log_dir: Path, *, ready: bool = True
) -> AsyncIterator[list[WorkerProcess]]:
    """Start workers (waiting until each is ready); whatever survives the test is killed."""
    workers = [
        WorkerProcess(env, log_dir / f"worker-{index}.log").start()
        for index, env in enumerate(envs)
    ]
    try:
        if ready:
            await asyncio.gather(*(worker.wait_ready() for worker in workers))
        yield workers
    finally:
        for worker in workers:
            worker.kill()


class SlowModel:
    """OpenRouter stand-in behaviour: every answer takes `delay` seconds (correct XML), and an
    NPC whose name is held waits until released. Counts requests per NPC name."""

    def __init__(self, standin: OpenRouterStandin, delay: float = 0.0) -> None:
        self.standin = standin
        self.delay = delay
        self.delays: dict[str, float] = {}
        self.holds: dict[str, asyncio.Event] = {}
        self.arrived: dict[str, asyncio.Event] = {}
        self.requests: Counter[str] = Counter()
        self.scripted: dict[str, list[Reply]] = {}
        standin.responder = self._answer

    def script(self, name: str, *replies: Reply) -> None:
        """Answer `name`'s next requests with these replies, in order."""
        self.scripted.setdefault(name, []).extend(replies)

    def hold(self, name: str) -> asyncio.Event:
        """Make `name`'s next answers wait for the returned event."""
        self.holds[name] = asyncio.Event()
        self.arrived.setdefault(name, asyncio.Event())
        return self.holds[name]

    async def wait_arrival(self, name: str, timeout: float = 20) -> None:
        event = self.arrived.setdefault(name, asyncio.Event())
        await asyncio.wait_for(event.wait(), timeout)

    async def _answer(self, recorded: RecordedRequest) -> Reply:
        name = recorded.record().name
        self.requests[name] += 1
        self.arrived.setdefault(name, asyncio.Event()).set()
        gate = self.holds.get(name)
        if gate is not None:
            await gate.wait()
        await asyncio.sleep(self.delays.get(name, self.delay))
        if self.scripted.get(name):
            return self.scripted[name].pop(0)
        return self.standin.default_reply(recorded)


@contextlib.asynccontextmanager
async def slow_model(delay: float = 0.0) -> AsyncIterator[SlowModel]:
    async with openrouter_standin() as standin:
        model = SlowModel(standin, delay)
        try:
            yield model
        finally:
            for gate in model.holds.values():
                gate.set()  # let held handlers finish so the server can stop


async def scrape_metrics(port: int) -> dict[str, float]:
    """`/metrics` as {series-with-labels: value}."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    series: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)
    return series


async def npc_name(conn: Any, npc_id: Any) -> str:
    """The name the model stand-in sees an NPC by."""
    return str(await conn.fetchval("SELECT name FROM npcs WHERE id = $1", npc_id))


async def job_counts(conn: Any) -> dict[str | None, int]:
    rows = await conn.fetch(
        "SELECT generation_job_status::text AS status, count(*) AS n FROM npcs GROUP BY 1"
    )
    return {row["status"]: row["n"] for row in rows}


async def wait_all(conn: Any, status: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        counts = await job_counts(conn)
        if counts.get(status, 0) == count:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"wanted {count} {status}, have {counts}")
        await asyncio.sleep(0.1)


def pause_process(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)


def resume_process(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)
