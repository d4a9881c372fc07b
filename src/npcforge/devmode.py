"""`npcforge demo` and `npcforge dev`: everything on one machine, no set-up."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from npcforge.compose import build_api, build_storage, build_worker, offline_fallback
from npcforge.config import Settings
from npcforge.db.connect import connect
from npcforge.db.jobs import JobQueue
from npcforge.db.migrate import migrate
from npcforge.db.npcs import first_npc_id
from npcforge.embedded import (
    EmbeddedPostgres,
    cli_database_url,
    persistent_postgres,
    temporary_postgres,
)
from npcforge.errors import findings_of
from npcforge.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from npcforge.importer import insert_npc, parse_npc, sample_npc_data
from npcforge.logs import say
from npcforge.signals import install_signal_handlers
from npcforge.storage.base import xml_key

log = logging.getLogger("npcforge.dev")


def _prepare(settings: Settings, storage_dir: Path | None) -> Settings:
    settings = settings.model_copy(update={"storage": "filesystem"})
    if storage_dir is not None:
        settings = settings.model_copy(update={"storage_dir": storage_dir})
    resolved = offline_fallback(settings)
    if resolved.provider != settings.provider:
        say(
            "npcforge: OPENROUTER_API_KEY is not set -- using the offline `template` provider "
            "(deterministic XML, no language model)"
        )
    else:
        say(f"npcforge: provider `{resolved.provider}`, model {resolved.openrouter_model}")
    return resolved


async def _setup_database(dsn: str, *, import_sample: bool) -> Any:
    conn = await connect(dsn, application_name="npcforge-dev")
    await migrate(conn)
    npc_id = None
    if import_sample:
        npc_id = await insert_npc(conn, parse_npc(sample_npc_data()))
    return conn, npc_id


async def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="npcforge-demo-") as tmp:
        settings = _prepare(settings, Path(tmp) / "storage")
        with temporary_postgres() as pg:
            return await _demo(settings, pg)


async def _demo(settings: Settings, pg: EmbeddedPostgres) -> int:
    started = time.monotonic()
    conn, npc_id = await _setup_database(pg.dsn, import_sample=True)
    storage = build_storage(settings)
    await storage.ensure_bucket()
    worker = build_worker(settings, pg.dsn, storage=storage)
    worker_task = asyncio.create_task(worker.run())
    interrupted = asyncio.Event()
    install_signal_handlers(interrupted.set)
    try:
        # Enqueue the way any user can: a plain UPDATE (the trigger assigns the job id).
        job_id = await JobQueue(conn).enqueue_by_update(npc_id=npc_id)
        say(f"npcforge: queued job {job_id} for sample NPC {npc_id}")
        while True:
            row = await JobQueue(conn).status(npc_id=npc_id)
            assert row is not None  # the demo's own NPC, in its own database
            if row["status"] in ("succeeded", "failed"):
                break
            if worker_task.done():
                worker_task.result()
                say("npcforge: the worker stopped before the job finished")
                return EXIT_FAILURE
            if interrupted.is_set():
                # Nothing to wait for: the database goes too.
                worker.options = dataclasses.replace(worker.options, shutdown_seconds=0)
                say("npcforge: interrupted; the demo's database is removed")
                return EXIT_FAILURE
            await asyncio.sleep(0.05)
        if row["status"] == "failed":
            error = row["error"] or {}
            say(f"npcforge: job failed: {error.get('code')}: {error.get('message')}")
            for finding in findings_of(error):
                say(f"  - {finding}")
            return EXIT_FAILURE
        data = await storage.get(xml_key(npc_id))
        if data is None:
            say("npcforge: job succeeded but the XML is missing from storage")
            return EXIT_FAILURE
        sys.stdout.write(data.decode("utf-8"))
        sys.stdout.flush()
        say(f"npcforge: done in {time.monotonic() - started:.2f} s ({len(data)} bytes)")
        return EXIT_OK
    finally:
        worker.stop()
        with contextlib.suppress(Exception):
            await worker_task
        await worker.provider.close()
        await conn.close()


async def run_dev(settings: Settings, args: argparse.Namespace) -> int:
    from npcforge.api.auth import is_loopback
    from npcforge.api.server import listen_socket

    host, port = args.host, args.port
    if not is_loopback(host):
        say(f"npcforge: dev serves without authentication and only binds loopback, not {host!r}")
        return EXIT_USAGE
    home = settings.home.resolve()
    settings = _prepare(
        settings,
        settings.storage_dir if "storage_dir" in settings.model_fields_set else home / "storage",
    )
    # The port first: a busy one is a one-line error before any PostgreSQL is started.
    sock = listen_socket(host, port)
    try:
        with persistent_postgres(home) as pg:
            return await _serve_dev(settings, pg, sock, home=home, host=host, port=port)
    finally:
        sock.close()


async def _serve_dev(
    settings: Settings, pg: EmbeddedPostgres, sock: Any, *, home: Path, host: str, port: int
) -> int:
    from npcforge.api.server import ApiServer

    conn, _ = await _setup_database(pg.dsn, import_sample=False)
    try:
        sample_id = await first_npc_id(conn)
        if sample_id is None:
            sample_id = await insert_npc(conn, parse_npc(sample_npc_data()))
    finally:
        await conn.close()
    storage = build_storage(settings)
    await storage.ensure_bucket()
    worker = build_worker(settings, pg.dsn, storage=storage)
    settings = settings.model_copy(update={"database_url": pg.dsn})
    # Loopback only (checked above), so the API answers without a token.
    server = ApiServer(build_api(settings, storage=storage, no_auth=True))

    def stop() -> None:
        worker.stop()
        server.should_exit = True

    install_signal_handlers(stop)
    running = asyncio.gather(worker.run(), server.serve_on(sock))
    try:
        # Print the ready-to-paste lines only once both halves answer.
        while not (server.started and worker.ready.is_set()):
            if running.done():
                break
            await asyncio.sleep(0.02)
        if not running.done():
            url = cli_database_url(pg.dsn)
            say(f"npcforge dev: data in {home}, API on http://{host}:{port}")
            say(f"  console: http://{host}:{port}/console")
            say(f"  curl -s -X POST http://{host}:{port}/api/npcs/{sample_id}/generate")
            say(f"  export DATABASE_URL='{url}'   # for npcforge status, jobs, enqueue, ...")
            say(f"  psql '{url}'")
            say(f"  UPDATE npcs SET generation_job_status = 'queued' WHERE id = '{sample_id}';")
            say("  Ctrl-C stops (PostgreSQL too).")
        await running
    finally:
        stop()
        await asyncio.gather(running, return_exceptions=True)
        await worker.provider.close()
    return EXIT_OK
