"""The baselines, each its own process (started by bench/_drain.py and W3).

    python bench/_baselines.py noqueue|pgqueuer --dsn … --standin URL --storage-dir D
                               --concurrency C --result FILE

`noqueue`: npcforge's own job body with no queue: every record read in one query, then for each
(at most C at once) the worker's generate → validate (→ repair) step against the stand-in and
FilesystemStorage.put. Prints READY, waits for a line on stdin, runs, writes --result, prints DONE.

`pgqueuer`: PGQueuer as its docs recommend (uvloop, one asyncpg connection, `batch_size` = C/2,
the most its `max_concurrent_tasks >= 2 * batch_size` rule allows, `max_concurrent_tasks` = C)
running the minimal equivalent body: POST npcforge's prompt to the stand-in, take the XML out of
the answer, write it with the same fsynced FilesystemStorage.put. Prints READY; on SIGTERM
writes each body's start time to --result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from npcforge.storage.filesystem import FilesystemStorage

LOAD_ALL = "SELECT * FROM npcforge_npc_records"


def prompt_parts() -> tuple[str, str]:
    """npcforge's system prompt and its user prompt's frame, so both contenders send the same."""
    from npcforge.generation.prompt import RECORD_CLOSE, RECORD_OPEN, build_messages
    from npcforge.npc import Look, Messages, NpcRecord

    sample = NpcRecord(
        id=uuid.uuid4(),
        name="x",
        look=Look(type="monster", type_id=1),
        messages=Messages("a", "b", "c", "d", "e"),
    )
    frame = f"Write the Jiddo NPC XML file for this record.\n\n{RECORD_OPEN}\n{{}}\n{RECORD_CLOSE}"
    return build_messages(sample)[0]["content"], frame


async def run_noqueue(args: argparse.Namespace) -> None:
    from npcforge.config import Settings
    from npcforge.db.connect import connect
    from npcforge.db.npcs import record_from_row
    from npcforge.generation.base import CallStats
    from npcforge.generation.openrouter import OpenRouterProvider
    from npcforge.logs import configure_logging
    from npcforge.storage.base import xml_key
    from npcforge.worker.attempt import generate_valid_xml

    configure_logging("info", "json")
    settings = Settings(  # type: ignore[call-arg]
        OPENROUTER_API_KEY="bench-key",
        OPENROUTER_BASE_URL=args.standin + "/api/v1",
        OPENROUTER_MODEL="bench/standin",
        OPENROUTER_MAX_CONNECTIONS=max(64, args.concurrency),
    )
    provider = OpenRouterProvider(settings)
    storage = FilesystemStorage(args.storage_dir, "npc-xml-files")
    conn = await connect(args.dsn, application_name="bench-noqueue")
    print("READY", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    started = time.time()
    npcs = [record_from_row(row) for row in await conn.fetch(LOAD_ALL)]
    sem = asyncio.Semaphore(args.concurrency)
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
    Path(args.result).write_text(
        json.dumps(
            {"started": started, "last_finish": last, "failures": len(errors), "errors": errors[:3]}
        )
    )
    await provider.close()
    await conn.close()
    print("DONE", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # alive until the harness has read its CPU


async def run_pgqueuer(args: argparse.Namespace) -> None:
    import asyncpg
    from pgqueuer import PgQueuer
    from pgqueuer.models import Job

    from npcforge.generation.openrouter import RESPONSE_SCHEMA

    system, frame = prompt_parts()
    storage = FilesystemStorage(args.storage_dir, "npc-xml-files")
    connection = await asyncpg.connect(
        args.dsn, server_settings={"application_name": "pgqueuer-worker"}
    )
    pgq = PgQueuer.from_asyncpg_connection(connection)
    limit = max(64, args.concurrency)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))
    url = args.standin + "/api/v1/chat/completions"
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
                {"role": "user", "content": frame.format(record)},
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
    batch = max(1, args.concurrency // 2)
    task = asyncio.create_task(
        pgq.run(
            batch_size=batch,
            max_concurrent_tasks=args.concurrency,
            dequeue_timeout=timedelta(seconds=30),
        )
    )
    await asyncio.sleep(0.5)
    print("READY", flush=True)
    await task
    await session.close()
    Path(args.result).write_text(json.dumps({"starts": starts, "batch_size": batch}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="benchmark baselines (run by bench/ scripts)")
    parser.add_argument("kind", choices=["noqueue", "pgqueuer"])
    for option in ("--dsn", "--standin", "--storage-dir", "--result"):
        parser.add_argument(option, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args()
    if args.kind == "noqueue":
        asyncio.run(run_noqueue(args))
    else:
        uvloop.run(run_pgqueuer(args))
    os._exit(0)  # the result is written; skip interpreter teardown
