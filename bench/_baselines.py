"""The baselines, each its own process started by bench/_drain.py and configured as `npcforge
worker` is, by the same environment (DATABASE_URL, OPENROUTER_*, NPCFORGE_STORAGE_DIR,
NPCFORGE_CONCURRENCY = C: bench/_processes.py `npcforge_env`).

    python bench/_baselines.py noqueue|pgqueuer RESULT_FILE

`noqueue`: npcforge's own job body with no queue: every record read in one query, then for each
(at most C at once) the worker's generate → validate (→ repair) step against the stand-in and
FilesystemStorage.put. Prints READY, waits for a line on stdin, runs, writes RESULT_FILE, prints
DONE.

`pgqueuer`: PGQueuer as its docs recommend (uvloop, one asyncpg connection, `batch_size` = C/2,
the most its `max_concurrent_tasks >= 2 * batch_size` rule allows, `max_concurrent_tasks` = C)
running the minimal equivalent body: POST npcforge's prompt to the stand-in, take the XML out of
the answer, write it with the same fsynced FilesystemStorage.put. Prints READY; on SIGTERM
writes each body's start time to RESULT_FILE.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from npcforge.config import Settings
from npcforge.storage.factory import build_storage

LOAD_ALL = "SELECT * FROM npcforge_npc_records"


async def run_noqueue(settings: Settings, result: Path) -> None:
    from npcforge.db.connect import connect
    from npcforge.db.npcs import record_from_row
    from npcforge.generation.base import CallStats
    from npcforge.generation.openrouter import OpenRouterProvider
    from npcforge.logs import configure_logging
    from npcforge.storage.base import xml_key
    from npcforge.worker.attempt import generate_valid_xml

    configure_logging(settings.log_level, settings.log_format)
    provider = OpenRouterProvider(settings)  # no fleet rate gate: there is no fleet
    storage = build_storage(settings)
    conn = await connect(settings.require_database_url(), application_name="bench-noqueue")
    print("READY", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    started = time.time()
    npcs = [record_from_row(row) for row in await conn.fetch(LOAD_ALL)]
    sem = asyncio.Semaphore(settings.concurrency)
    last = started

    async def one(npc: Any) -> None:
        nonlocal last
        async with sem:
            xml = await generate_valid_xml(
                provider, npc, CallStats(), deadline_seconds=settings.job_deadline_seconds
            )
            await storage.put(xml_key(npc.id), xml.encode())
            last = time.time()

    results = await asyncio.gather(*(one(npc) for npc in npcs), return_exceptions=True)
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    result.write_text(
        json.dumps(
            {"started": started, "last_finish": last, "failures": len(errors), "errors": errors[:3]}
        )
    )
    await provider.close()
    await conn.close()
    print("DONE", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # alive until the harness has read its CPU


async def run_pgqueuer(settings: Settings, result: Path) -> None:
    import asyncpg
    from pgqueuer import PgQueuer
    from pgqueuer.models import Job

    from npcforge.generation.openrouter import RESPONSE_SCHEMA
    from npcforge.generation.prompt import system_prompt, user_prompt

    system = system_prompt()
    storage = build_storage(settings)
    dsn = settings.require_database_url()
    connection = await asyncpg.connect(dsn, server_settings={"application_name": "pgqueuer-worker"})
    pgq = PgQueuer.from_asyncpg_connection(connection)
    limit = settings.effective_openrouter_connections
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))
    url = settings.openrouter_base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": "Bearer bench-key", "Accept": "application/json"}
    starts: list[tuple[float, int]] = []

    @pgq.entrypoint("npc_xml")
    async def npc_xml(job: Job) -> None:
        starts.append((time.time(), int(job.id)))
        assert job.payload is not None
        npc_id, record = job.payload.decode().split("\n", 1)
        body = {
            "model": "bench/standin",
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user_prompt(record)},
            ],
            "temperature": 0,
            "max_tokens": 1024,
            "response_format": RESPONSE_SCHEMA,
        }
        async with session.post(url, json=body, headers=headers) as response:
            response.raise_for_status()
            answer = await response.json()
        xml = json.loads(answer["choices"][0]["message"]["content"])["xml"]
        await storage.put(f"{npc_id}.xml", xml.encode())

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, pgq.shutdown.set)
    batch = max(1, settings.concurrency // 2)
    task = asyncio.create_task(
        pgq.run(
            batch_size=batch,
            max_concurrent_tasks=settings.concurrency,
            dequeue_timeout=timedelta(seconds=30),
        )
    )
    await asyncio.sleep(0.5)
    print("READY", flush=True)
    await task
    await session.close()
    result.write_text(json.dumps({"starts": starts, "batch_size": batch}))


if __name__ == "__main__":
    settings, result = Settings(), Path(sys.argv[2])  # type: ignore[call-arg]
    if sys.argv[1] == "noqueue":
        asyncio.run(run_noqueue(settings, result))
    else:
        uvloop.run(run_pgqueuer(settings, result))
    os._exit(0)  # the result is written; skip interpreter teardown
