"""Running a real Worker in-process for tests, and providers we control."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from npcforge.budget import CostPolicy
from npcforge.errors import JobError
from npcforge.generation.base import Generated, Provider, RepairRequest
from npcforge.generation.template import TemplateProvider
from npcforge.npc import NpcRecord
from npcforge.storage.base import Storage
from npcforge.storage.filesystem import FilesystemStorage
from npcforge.worker.daemon import Worker
from npcforge.worker.options import WorkerOptions
from npcforge.worker.sdnotify import SystemdNotifier


class ScriptedProvider:
    """The Provider port, driven by the test: raise given errors, wait on gates, count calls.

    It stands in for our own port (not for the database); upstream wire behaviour is tested
    against the OpenRouter stand-in.
    """

    name = "scripted"

    def __init__(self) -> None:
        self.inner = TemplateProvider()
        self.paused_for = 0.0  # as a fleet-wide upstream pause would report it
        self.errors: list[JobError] = []
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.calls = 0
        self.xml_override: str | None = None

    async def generate(
        self, npc: NpcRecord, repair: RepairRequest | None = None, **call: Any
    ) -> Generated:
        self.calls += 1
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.errors:
            raise self.errors.pop(0)
        generated = await self.inner.generate(npc, repair, **call)
        if self.xml_override is not None:
            generated.xml = self.xml_override
        return generated

    async def close(self) -> None:
        return None


@contextlib.asynccontextmanager
async def running_worker(
    dsn: str,
    storage_dir: Path | None = None,
    *,
    provider: Provider | None = None,
    bucket: str = "npc-xml-files",
    storage: Storage | None = None,
    notifier: SystemdNotifier | None = None,
    worker_id: str | None = None,
    cost_policy: CostPolicy | None = None,
    **options: Any,
) -> AsyncIterator[Worker]:
    """A Worker on `storage` (used as given; the caller closes it), or else on a
    FilesystemStorage under `storage_dir` with its bucket created; `options` are WorkerOptions'."""
    if storage is None:
        assert storage_dir is not None, "running_worker needs storage_dir or storage"
        storage = FilesystemStorage(storage_dir, bucket)
        await storage.ensure_bucket()
    options.setdefault("poll_seconds", 0.5)
    worker = Worker(
        dsn=dsn, provider=provider or TemplateProvider(), storage=storage,
        options=WorkerOptions(**options), notifier=notifier, worker_id=worker_id,
        cost_policy=cost_policy,
    )  # fmt: skip
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.ready.wait(), timeout=20)
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=60)


async def job_row(conn: Any, npc_id: Any) -> Any:
    return await conn.fetchrow(
        "SELECT generation_job_id AS job_id, generation_job_status::text AS status, "
        "generation_job_error AS error, generation_job_attempts AS attempts, "
        "generation_job_run_after AS run_after, content_size_bytes "
        "FROM npcs WHERE id = $1",
        npc_id,
    )


async def wait_status(conn: Any, npc_id: Any, *statuses: str, timeout: float = 20) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        row = await job_row(conn, npc_id)
        if row["status"] in statuses:
            return row
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job of {npc_id} is {row['status']}, wanted {statuses}")
        await asyncio.sleep(0.05)
