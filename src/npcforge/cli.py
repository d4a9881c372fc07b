"""The `npcforge` command line: the composition root.

Exit codes: 0 success, 2 usage or configuration error, 1 any other failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg

from npcforge import __version__
from npcforge.config import ConfigError, Settings, load_settings
from npcforge.db.connect import connect
from npcforge.db.migrate import MigrationError, migrate
from npcforge.db.queries import q
from npcforge.errors import StorageError
from npcforge.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandFailed, UsageError
from npcforge.importer import ImportError_, insert_npc, parse_npc, read_npc_file
from npcforge.logs import configure_logging
from npcforge.storage.base import Storage

log = logging.getLogger("npcforge")


# --- helpers ---------------------------------------------------------------------------------


def _uuid_arg(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a UUID") from None


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, default=str))


def sample_npc_data() -> Any:
    text = resources.files("npcforge.data").joinpath("sample_npc.json").read_text("utf-8")
    return json.loads(text)


async def _with_conn(settings: Settings, body: Callable[[Any], Awaitable[int]]) -> int:
    conn = await connect(
        settings.require_database_url(),
        application_name="npcforge-cli",
        transaction_pooler=settings.transaction_pooler,
    )
    try:
        return await body(conn)
    finally:
        await conn.close()


def install_signal_handlers(on_first: Callable[[], None]) -> None:
    """First SIGTERM/SIGINT: graceful stop. A second one: exit at once."""
    loop = asyncio.get_running_loop()
    count = 0

    def handler(signame: str) -> None:
        nonlocal count
        count += 1
        if count == 1:
            log.info("signal received; shutting down", extra={"signal": signame})
            on_first()
        else:
            log.warning("second signal; exiting now", extra={"signal": signame})
            os._exit(EXIT_FAILURE)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handler, sig.name)


# --- commands ----------------------------------------------------------------------------------


async def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    async def body(conn: Any) -> int:
        applied = await migrate(conn)
        print(
            f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else "")
        )
        return EXIT_OK

    return await _with_conn(settings, body)


async def _check_storage_at_start(storage: Storage) -> None:
    """A permanent storage problem stops the worker (exit 2, naming the fix); a blip does not."""
    try:
        await storage.check()
    except StorageError as exc:
        code = (exc.details or {}).get("storageCode")
        if not exc.retryable:
            if code == "NoSuchBucket":
                raise ConfigError(
                    f"storage bucket {storage.bucket!r} does not exist ({storage!r}); create it "
                    "with `npcforge storage ensure-bucket`, or set NPCFORGE_BUCKET to your bucket"
                ) from None
            if storage.name == "filesystem":
                fix = "make NPCFORGE_STORAGE_DIR writable for this user"
            elif code == "AccessDenied":
                fix = (
                    "set SUPABASE_SERVICE_ROLE_KEY to the project's service_role key "
                    "(not the anon key)"
                )
            else:
                fix = "check SUPABASE_URL (https://PROJECT_REF.supabase.co) and SUPABASE_SERVICE_ROLE_KEY"
            raise ConfigError(f"{exc.message}; {fix}") from None
        # A storage blip must not keep the daemon down; uploads retry with backoff.
        log.warning(
            "storage unreachable at start; starting anyway",
            extra={"storage": storage.name, "storage_code": code, "error": exc.message},
        )


async def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from npcforge.compose import build_worker, check_worker_config
    from npcforge.heap import settle_heap
    from npcforge.storage.factory import build_storage

    check_worker_config(settings)
    storage = build_storage(settings)
    worker = build_worker(
        settings, settings.require_database_url(), storage=storage,
        listen_dsn=settings.require_listen_url(), transaction_pooler=settings.transaction_pooler,
    )  # fmt: skip
    # Handlers first: a SIGTERM during the start-up checks stops the worker before it claims.
    install_signal_handlers(worker.stop)
    metrics_server = None
    try:
        await _check_storage_at_start(storage)
        if settings.metrics_port is not None:
            # Imported only when asked for: aiohttp's server side is ~1 MB of the worker's RSS.
            from npcforge.worker.metrics_server import serve_metrics

            metrics_server = await serve_metrics(worker, "0.0.0.0", settings.metrics_port)  # noqa: S104
        settle_heap()
        await worker.run()
    finally:
        if metrics_server is not None:
            await metrics_server.cleanup()
        await worker.provider.close()
        await worker.storage.close()
    return EXIT_OK


async def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    from npcforge.api.server import serve_api

    settings.require_database_url()
    await serve_api(settings, host=args.host, port=args.port)
    return EXIT_OK


async def cmd_enqueue(settings: Settings, args: argparse.Namespace) -> int:
    async def body(conn: Any) -> int:
        try:
            job_id = await conn.fetchval(q("enqueue"), args.npc_id, args.force)
        except asyncpg.RaiseError as exc:
            raise CommandFailed(_sql_message(exc)) from None
        except asyncpg.PostgresError as exc:
            if exc.sqlstate in ("P0002", "55P03"):
                raise CommandFailed(_sql_message(exc)) from None
            raise
        print(job_id)
        return EXIT_OK

    return await _with_conn(settings, body)


def _sql_message(exc: Exception) -> str:
    return str(getattr(exc, "message", None) or exc).split(":", 1)[-1].strip()


async def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    async def body(conn: Any) -> int:
        row = await conn.fetchrow(q("job_status"), args.npc_id)
        if row is None or row["deleted_at"] is not None:
            raise CommandFailed(f"NPC {args.npc_id} does not exist or is deleted")
        doc = {
            "npcId": str(row["npc_id"]),
            "jobId": str(row["job_id"]) if row["job_id"] else None,
            "status": row["status"],
            "attempts": row["attempts"],
            "startedAt": row["started_at"],
            "updatedAt": row["updated_at"],
            "runAfter": row["run_after"] if row["status"] == "queued" else None,
            "finishedAt": row["finished_at"],
            "contentSizeBytes": row["content_size_bytes"],
            "error": row["error"],
        }
        if args.json:
            _print_json(doc)
        else:
            line = f"{doc['status'] or 'no job'}"
            if doc["jobId"]:
                line += f"  job {doc['jobId']}  attempts {doc['attempts']}"
            if doc["error"]:
                line += f"  error {doc['error'].get('code')}: {doc['error'].get('message')}"
            print(line)
        return EXIT_OK

    return await _with_conn(settings, body)


async def cmd_npc_import(settings: Settings, args: argparse.Namespace) -> int:
    npc = read_npc_file(Path(args.file))  # validate before touching the database

    async def body(conn: Any) -> int:
        try:
            npc_id = await insert_npc(conn, npc)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise UsageError(f"the database refused the NPC: {exc}") from None
        print(npc_id)
        return EXIT_OK

    return await _with_conn(settings, body)


async def cmd_storage_ensure_bucket(settings: Settings, args: argparse.Namespace) -> int:
    from npcforge.storage.factory import build_storage

    storage = build_storage(settings)
    try:
        created = await storage.ensure_bucket()
    except StorageError as exc:
        if exc.retryable:
            raise CommandFailed(f"{exc.message}; storage is unreachable, try again") from None
        if (exc.details or {}).get("storageCode") == "AccessDenied" and storage.name == "supabase":
            raise ConfigError(
                f"{exc.message}; set SUPABASE_SERVICE_ROLE_KEY to the project's service_role key "
                "(the anon key cannot create buckets)"
            ) from None
        raise CommandFailed(exc.message) from None
    finally:
        await storage.close()
    where = f"{storage.name} storage"
    if created:
        print(f"bucket {storage.bucket!r} created (private) in {where}")
    else:
        print(f"bucket {storage.bucket!r} already exists in {where}; left unchanged")
    return EXIT_OK


async def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from npcforge.devmode import run_demo

    return await run_demo(settings)


async def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    from npcforge.devmode import run_dev

    return await run_dev(settings, host=args.host, port=args.port)


async def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    from npcforge import ops

    return await _with_conn(settings, lambda conn: ops.run_jobs_command(conn, args))


async def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    from npcforge import ops

    return await ops.run_doctor(settings, json_output=args.json)


# --- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npcforge",
        description="Turn NPC records in PostgreSQL into Jiddo NPC XML with a language model.",
    )
    parser.add_argument("--version", action="version", version=f"npcforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("migrate", help="apply sql/migrations to DATABASE_URL (idempotent)")
    p.set_defaults(run=cmd_migrate)

    p = sub.add_parser("worker", help="run the generation daemon until SIGTERM/SIGINT")
    p.set_defaults(run=cmd_worker)

    p = sub.add_parser("api", help="serve the HTTP API under uvicorn")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(run=cmd_api)

    p = sub.add_parser("dev", help="embedded PostgreSQL + worker + API on 127.0.0.1, until Ctrl-C")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(run=cmd_dev, embedded=True)

    p = sub.add_parser("demo", help="generate the bundled sample NPC once, print its XML, exit")
    p.set_defaults(run=cmd_demo, embedded=True)

    p = sub.add_parser("enqueue", help="queue a generation job for an NPC; prints the job id")
    p.add_argument("npc_id", type=_uuid_arg, metavar="NPC_ID")
    p.add_argument("--force", action="store_true", help="replace a queued or running job")
    p.set_defaults(run=cmd_enqueue)

    p = sub.add_parser("status", help="show an NPC's current job")
    p.add_argument("npc_id", type=_uuid_arg, metavar="NPC_ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_status)

    npc = sub.add_parser("npc", help="NPC records").add_subparsers(
        dest="npc_command", metavar="SUBCOMMAND", required=True
    )
    p = npc.add_parser("import", help="create an NPC from a JSON file; prints its id")
    p.add_argument("file", metavar="FILE.json")
    p.set_defaults(run=cmd_npc_import)

    storage = sub.add_parser("storage", help="object storage").add_subparsers(
        dest="storage_command", metavar="SUBCOMMAND", required=True
    )
    p = storage.add_parser("ensure-bucket", help="create the bucket (private) if missing")
    p.set_defaults(run=cmd_storage_ensure_bucket)

    jobs = sub.add_parser("jobs", help="list, retry and cancel jobs").add_subparsers(
        dest="jobs_command", metavar="SUBCOMMAND", required=True
    )
    p = jobs.add_parser("list", help="list jobs")
    p.add_argument("--status", choices=["queued", "processing", "succeeded", "failed"])
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_jobs)
    p = jobs.add_parser("retry", help="queue failed jobs again")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("npc_id", nargs="?", type=_uuid_arg, metavar="NPC_ID")
    target.add_argument("--all-failed", action="store_true")
    p.add_argument("--code", help="with --all-failed: only jobs that failed with this code")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_jobs)
    p = jobs.add_parser("cancel", help="cancel a queued or running job (ends failed, CANCELLED)")
    p.add_argument("npc_id", type=_uuid_arg, metavar="NPC_ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_jobs)

    p = sub.add_parser("doctor", help="check database, migrations, LISTEN/NOTIFY, storage, key")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"npcforge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level, settings.log_format)
    try:
        code: int = asyncio.run(args.run(settings, args))
        return code
    except (ConfigError, UsageError, ImportError_, MigrationError) as exc:
        print(f"npcforge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandFailed as exc:
        print(f"npcforge: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"npcforge: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


__all__ = ["main", "parse_npc", "sample_npc_data"]
