"""`npcforge worker` with knobs the shipped CLI does not expose, to try optimizations quickly.

    python bench/_experiment_worker.py [--pool-size N] [--no-reset] [--uvloop] [--async-commit]
                                       [--no-fsync] [--record-starts FILE]

Builds the worker exactly as `npcforge worker` does (load_settings → build_storage →
build_worker), then applies the knobs:

- `--pool-size N`: the worker's asyncpg pool size (shipped: min(max(4, concurrency // 4 + 2), 20)).
- `--no-reset`: the pool skips asyncpg's reset on release (`SELECT pg_advisory_unlock_all();
  CLOSE ALL; UNLISTEN *; RESET ALL`); npcforge now does this itself (`keep_session`).
- `--uvloop`: the event loop runs on uvloop.
- `--async-commit` (experiment only): `synchronous_commit = off` on the pool's connections.
- `--no-fsync` (experiment only): the storage writes' fsyncs become no-ops.
- `--record-starts FILE`: `time.time()` when each job's `JobRunner.run` begins (W3's "job
  start"), written as `[[time, job_id], …]` on exit.

W1 runs it for `--npcforge-variants`, W3 for the start times; nothing in npcforge imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any


async def _no_reset(_conn: Any) -> None:
    return None


async def run(args: argparse.Namespace) -> None:
    from npcforge.compose import build_worker
    from npcforge.config import load_settings
    from npcforge.db import connect as db_connect
    from npcforge.logs import configure_logging
    from npcforge.storage.factory import build_storage
    from npcforge.worker import daemon

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    if args.no_reset or args.async_commit:
        server_settings = {}
        if args.async_commit:
            # Upper-bound experiment only: no commit of the worker's pool waits for its WAL flush.
            server_settings["synchronous_commit"] = "off"

        async def create_pool(*a: Any, **kw: Any) -> Any:
            import asyncpg

            keep_session = args.no_reset or kw.get("keep_session", False)
            extra: dict[str, Any] = {"reset": _no_reset} if keep_session else {}
            pool = await asyncpg.create_pool(
                a[0],
                min_size=kw.get("min_size", 1),
                max_size=kw.get("max_size", 10),
                init=db_connect.init_connection,
                timeout=10.0,
                command_timeout=kw.get("command_timeout", 60.0),
                max_inactive_connection_lifetime=300.0,
                server_settings={
                    "application_name": kw.get("application_name", "npcforge"),
                    **server_settings,
                },
                **extra,
            )
            return pool

        daemon.create_pool = create_pool  # type: ignore[attr-defined]
    if args.no_fsync:
        # Upper-bound experiment only: storage writes skip their fsyncs.
        import os

        os.fsync = lambda _fd: None
    starts: list[tuple[float, str]] = []
    if args.record_starts:
        import time

        from npcforge.worker.attempt import JobRunner

        original_run = JobRunner.run

        async def timed_run(self: Any, claim: Any) -> Any:
            starts.append((time.time(), str(claim.job_id)))
            return await original_run(self, claim)

        JobRunner.run = timed_run  # type: ignore[method-assign]
    storage = build_storage(settings)
    worker = build_worker(settings, settings.require_database_url(), storage=storage)
    if args.pool_size:
        worker.pool_size = args.pool_size
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        await worker.provider.close()
        await worker.storage.close()
        if args.record_starts:
            import json
            from pathlib import Path

            Path(args.record_starts).write_text(json.dumps(starts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pool-size", type=int, default=0)
    parser.add_argument("--no-reset", action="store_true")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--record-starts", default="")
    parser.add_argument("--async-commit", action="store_true")
    parser.add_argument("--no-fsync", action="store_true")
    args = parser.parse_args(argv)
    if args.uvloop:
        import uvloop

        uvloop.run(run(args))
    else:
        asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
