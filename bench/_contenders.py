"""The baselines, each run by the benchmark scripts as its own process.

    python bench/_contenders.py noqueue  --dsn … --standin URL --storage-dir D --concurrency C
    python bench/_contenders.py pgqueuer --dsn … --standin URL --storage-dir D --concurrency C

`noqueue`: npcforge's own job body with no queue at all — read every NPC in one query, then for
each (at most C at once): OpenRouterProvider against the stand-in, the validator (with npcforge's
repair rule), FilesystemStorage.put. Prints READY, waits for a line on stdin, runs, writes its
result JSON to --result. It is the ceiling for one Python process doing this work.

`pgqueuer`: PGQueuer with its recommended settings (uvloop as its CLI runs it, one dedicated
asyncpg connection, `batch_size` = C/2 — the largest its `max_concurrent_tasks ≥ 2 * batch_size`
rule allows — `max_concurrent_tasks` = C, durable tables and `pgq autovac`, both applied by the
harness) running the equivalent minimal job body: POST the same prompt to the same stand-in,
take the XML out of the answer, write the file with the same atomic, fsynced FilesystemStorage
write npcforge uses. Runs until SIGTERM, then writes per-job body start/finish times to --result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp


def _peak_rss_mb() -> float | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_all_sql() -> str:
    """npcforge's own record view, for every NPC at once (the records "read in one query")."""
    return "SELECT * FROM npcforge_npc_records"


# --- no queue ------------------------------------------------------------------------------------


async def run_noqueue(args: argparse.Namespace) -> None:
    from npcforge.config import Settings
    from npcforge.db.connect import create_pool
    from npcforge.db.npcs import record_from_row
    from npcforge.generation.base import CallStats
    from npcforge.generation.openrouter import OpenRouterProvider
    from npcforge.logs import configure_logging
    from npcforge.storage.base import xml_key
    from npcforge.storage.filesystem import FilesystemStorage
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
    pool = await create_pool(args.dsn, min_size=1, max_size=2, application_name="bench-noqueue")
    load_all = load_all_sql()

    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    cpu0 = _cpu_s()
    started = time.time()
    rows = await pool.fetch(load_all)
    npcs = [record_from_row(row) for row in rows]
    sem = asyncio.Semaphore(args.concurrency)
    failures = 0
    last = started

    async def one(npc: Any) -> None:
        nonlocal failures, last
        async with sem:
            try:
                # The worker's own generate → validate (→ repair) step; nothing of its queue.
                xml = await generate_valid_xml(
                    provider, npc, CallStats(), deadline_seconds=settings.job_deadline_seconds
                )
                await storage.put(xml_key(npc.id), xml.encode("utf-8"))
            except Exception:
                failures += 1
                raise
            last = time.time()

    results = await asyncio.gather(*(one(npc) for npc in npcs), return_exceptions=True)
    finished = time.time()
    cpu = _cpu_s() - cpu0
    errors = [repr(r) for r in results if isinstance(r, BaseException)][:3]
    Path(args.result).write_text(
        json.dumps(
            {
                "jobs": len(npcs),
                "failures": failures,
                "errors": errors,
                "started": started,
                "last_finish": last,
                "finished": finished,
                "cpu_s": cpu,
                "peak_rss_mb": _peak_rss_mb(),
            }
        )
    )
    await provider.close()
    await pool.close()
    print("DONE", flush=True)


# --- PGQueuer ------------------------------------------------------------------------------------


def pgqueuer_prompt_parts() -> tuple[str, str]:
    """npcforge's own system prompt and the user prompt's frame, so both send the same bytes."""
    import uuid

    from npcforge.generation.prompt import RECORD_CLOSE, RECORD_OPEN, build_messages
    from npcforge.npc import Look, Messages, NpcRecord

    sample = NpcRecord(
        id=uuid.uuid4(),
        name="x",
        look=Look(type="monster", type_id=1),
        messages=Messages("a", "b", "c", "d", "e"),
    )
    system = build_messages(sample)[0]["content"]
    frame = (
        "Write the Jiddo NPC XML file for this record.\n\n" + RECORD_OPEN + "\n{}\n" + RECORD_CLOSE
    )
    return system, frame


async def run_pgqueuer(args: argparse.Namespace) -> None:
    import asyncpg
    from pgqueuer import PgQueuer
    from pgqueuer.models import Job

    from npcforge.generation.openrouter import RESPONSE_SCHEMA
    from npcforge.storage.filesystem import FilesystemStorage

    system, frame = pgqueuer_prompt_parts()
    storage = FilesystemStorage(args.storage_dir, "npc-xml-files")
    connection = await asyncpg.connect(
        args.dsn, server_settings={"application_name": "pgqueuer-worker"}
    )
    pgq = PgQueuer.from_asyncpg_connection(connection)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max(64, args.concurrency)))
    url = args.standin + "/api/v1/chat/completions"
    headers = {"Authorization": "Bearer bench-key", "Accept": "application/json"}
    starts: list[tuple[float, int]] = []
    finishes: list[tuple[float, int]] = []

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
        await storage.put(f"{npc_id}.xml", xml.encode("utf-8"))
        finishes.append((time.time(), int(job.id)))

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, pgq.shutdown.set)
    batch = max(1, args.batch_size or args.concurrency // 2)
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
    Path(args.result).write_text(
        json.dumps(
            {
                "starts": starts,
                "finishes": finishes,
                "batch_size": batch,
                "peak_rss_mb": _peak_rss_mb(),
            }
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="benchmark baselines (run by the bench scripts)")
    parser.add_argument("kind", choices=["noqueue", "pgqueuer"])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--standin", required=True)
    parser.add_argument("--storage-dir", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=0)
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)
    if args.kind == "noqueue":
        asyncio.run(run_noqueue(args))
    else:
        import uvloop

        uvloop.run(run_pgqueuer(args))
    os._exit(0)  # skip interpreter teardown; the result is written


if __name__ == "__main__":
    sys.exit(main())
