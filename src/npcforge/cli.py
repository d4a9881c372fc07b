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
import uuid
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg

from npcforge import __version__
from npcforge.api.dto import json_document
from npcforge.config import ConfigError, Settings, load_settings
from npcforge.db.connect import connect
from npcforge.db.jobs import JobQueue
from npcforge.db.migrate import MigrationError, migrate
from npcforge.errors import StorageError
from npcforge.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandFailed, UsageError
from npcforge.importer import ImportError_, insert_npc, parse_npc, read_npc_file
from npcforge.logs import configure_logging, say
from npcforge.storage.base import Storage

log = logging.getLogger("npcforge")


# --- helpers ---------------------------------------------------------------------------------


def _uuid_arg(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a UUID") from None


def sample_npc_data() -> Any:
    text = resources.files("npcforge.data").joinpath("sample_npc.json").read_text("utf-8")
    return json.loads(text)


def with_dev_database(settings: Settings) -> Settings:
    """For the operator commands only (never worker, api or migrate): without DATABASE_URL, the
    database of a running `npcforge dev` under NPCFORGE_HOME, said on stderr."""
    if settings.database_url:
        return settings
    from npcforge.embedded import running_dev_url

    url = running_dev_url(settings.home)
    if url is None:
        return settings
    say(f"npcforge: DATABASE_URL is not set; using the running `npcforge dev` database ({url})")
    return settings.model_copy(update={"database_url": url})


async def _with_conn(
    settings: Settings, body: Callable[[Any], Awaitable[int]], *, dev_database: bool = True
) -> int:
    if dev_database:
        settings = with_dev_database(settings)
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
    """First SIGTERM/SIGINT/SIGHUP: graceful stop. A second one: exit at once, after stopping
    any embedded PostgreSQL this process started."""
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
            from npcforge.embedded import stop_all

            stop_all()
            os._exit(EXIT_FAILURE)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, handler, sig.name)


def _interrupted(signum: int, frame: object) -> None:
    """SIGTERM or SIGHUP in a command that is not a daemon: stop as Ctrl-C does (exit 1)."""
    raise KeyboardInterrupt


# --- commands ----------------------------------------------------------------------------------


async def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    async def body(conn: Any) -> int:
        applied = await migrate(conn)
        print(
            f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else "")
        )
        return EXIT_OK

    return await _with_conn(settings, body, dev_database=False)


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

    await serve_api(settings, host=args.host, port=args.port)
    return EXIT_OK


async def cmd_enqueue(settings: Settings, args: argparse.Namespace) -> int:
    from npcforge.api.dto import QueuedJobOut

    if args.npc_ids and (args.all or args.where_status):
        raise UsageError("name NPC_IDs or select with --all / --where-status, not both")
    if not (args.npc_ids or args.all or args.where_status):
        raise UsageError("name at least one NPC_ID, or select NPCs with --all or --where-status")

    async def body(conn: Any) -> int:
        if args.npc_ids:
            ids = list(dict.fromkeys(args.npc_ids))  # once each, in the order given
            try:
                rows = await JobQueue(conn).enqueue(npc_ids=ids, force=args.force)
            except asyncpg.PostgresError as exc:
                if not isinstance(exc, asyncpg.RaiseError) and exc.sqlstate not in (
                    "P0002",
                    "55P03",
                ):
                    raise
                nothing = "; nothing was queued" if len(ids) > 1 else ""
                raise CommandFailed(_sql_message(exc) + nothing) from None
            skipped = 0
        else:
            selected = await JobQueue(conn).enqueue_where(
                statuses=args.where_status, force=args.force
            )
            rows = [row for row in selected if row["job_id"] is not None]
            skipped = len(selected) - len(rows)
        jobs = [QueuedJobOut(npc_id=row["npc_id"], job_id=row["job_id"]) for row in rows]
        if args.json:
            print(json_document(list(jobs)))
        else:
            for job in jobs:
                print(job.job_id)
        if not args.npc_ids:
            note = f"npcforge: queued {len(jobs)} job(s)"
            if skipped:
                note += (
                    f"; skipped {skipped} NPC(s) whose job is queued or processing "
                    "(--force replaces them)"
                )
            say(note)
        return EXIT_OK

    return await _with_conn(settings, body)


def _sql_message(exc: Exception) -> str:
    return str(getattr(exc, "message", None) or exc).split(":", 1)[-1].strip()


async def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from npcforge.api.dto import NpcJobOut
    from npcforge.budget import Budget
    from npcforge.costs import hold_reasons

    async def body(conn: Any) -> int:
        row = await JobQueue(conn).status(npc_id=args.npc_id)
        if row is None or row["deleted_at"] is not None:
            raise CommandFailed(f"NPC {args.npc_id} does not exist or is deleted")
        (hold,) = await hold_reasons(conn, Budget.of(settings), [(row["owner_id"], row["status"])])
        error = row["error"] if row["status"] == "failed" and row["error"] else None
        state = NpcJobOut(
            npc_id=row["npc_id"],
            job_id=row["job_id"],
            status=row["status"],
            attempts=row["attempts"],
            started_at=row["started_at"],
            updated_at=row["updated_at"],
            run_after=row["run_after"] if row["status"] == "queued" else None,
            finished_at=row["finished_at"],
            # The size of the file this job stored; an earlier job's file is not this job's.
            content_size_bytes=row["content_size_bytes"] if row["status"] == "succeeded" else None,
            error=_job_error(error) if error else None,
            hold_reason=hold,
        )
        if args.json:
            print(json_document(state))
            return EXIT_OK
        line: str = state.status or "no job"
        if state.job_id:
            line += f"  job {state.job_id}  attempts {state.attempts}"
        if state.error:
            line += f"  error {state.error.code}: {state.error.message}"
        if state.hold_reason:
            line += f"  held: {state.hold_reason} (a daily model budget is spent)"
        print(line)
        for finding in findings_of(state.error):
            print(f"  - {finding}")
        return EXIT_OK

    return await _with_conn(settings, body)


def _job_error(error: Any) -> Any:
    from pydantic import ValidationError

    from npcforge.api.dto import JobErrorDetailOut

    try:
        return JobErrorDetailOut.model_validate(error)
    except ValidationError:  # a row another system wrote: keep what can be shown
        code = error.get("code") if isinstance(error, dict) else None
        return JobErrorDetailOut(code=str(code or "INTERNAL"), message=str(error))


def findings_of(error: Any) -> list[str]:
    """The validator's findings an AI_INVALID_XML error carries, as lines to show."""
    details = getattr(error, "details", None)
    if details is None and isinstance(error, dict):
        details = error.get("details")
    found = details.get("findings") if isinstance(details, dict) else None
    return [str(item) for item in found] if isinstance(found, list) else []


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
    from npcforge.budget import Budget

    budget = Budget.of(settings)
    return await _with_conn(settings, lambda conn: ops.run_jobs_command(conn, args, budget))


async def cmd_costs(settings: Settings, args: argparse.Namespace) -> int:
    from npcforge.budget import Budget
    from npcforge.costs import run_costs_command

    budget = Budget.of(settings)
    return await _with_conn(settings, lambda conn: run_costs_command(conn, args, budget))


async def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    from npcforge import ops

    return await ops.run_doctor(with_dev_database(settings), json_output=args.json)


# --- parser ------------------------------------------------------------------------------------


_JOB_STATUSES = ["queued", "processing", "succeeded", "failed"]
_JSON_HELP = "print JSON (camelCase keys, ISO 8601 times, as the HTTP API) instead of text"
_NPC_ID_HELP = "the NPC's id (a UUID)"


def _command(
    sub: Any, name: str, summary: str, run: Callable[..., Awaitable[int]], **defaults: Any
) -> argparse.ArgumentParser:
    """A subcommand whose one-line summary is also the description its --help shows."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=summary)
    parser.set_defaults(run=run, **defaults)
    return parser


def _group(sub: Any, name: str, summary: str, dest: str) -> Any:
    parser = sub.add_parser(name, help=summary, description=summary)
    return parser.add_subparsers(dest=dest, metavar="SUBCOMMAND", required=True)


def _listen_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=_port, default=8080, help="TCP port to listen on (default: %(default)s)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npcforge",
        description="Turn NPC records in PostgreSQL into Jiddo NPC XML with a language model. "
        "Settings come from the environment or ./.env (see the README). Exit codes: 0 success, "
        "2 usage or configuration error, 1 any other failure.",
    )
    parser.add_argument(
        "--version", action="version", version=f"npcforge {__version__}",
        help="print the version and exit",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _command(sub, "migrate", "apply sql/migrations to DATABASE_URL (idempotent)", cmd_migrate)
    _command(sub, "worker", "run the generation daemon until SIGTERM/SIGINT", cmd_worker)
    _listen_options(_command(sub, "api", "serve the HTTP API under uvicorn", cmd_api))
    _listen_options(
        _command(
            sub, "dev", "embedded PostgreSQL + worker + API on 127.0.0.1, until Ctrl-C",
            cmd_dev, embedded=True,
        )
    )  # fmt: skip
    _command(
        sub, "demo", "generate the bundled sample NPC once, print its XML, exit", cmd_demo,
        embedded=True,
    )  # fmt: skip

    p = _command(
        sub, "enqueue",
        "queue generation jobs for NPCs named by id, or selected with --all / --where-status; "
        "prints one job id per line",
        cmd_enqueue,
    )  # fmt: skip
    p.add_argument(
        "npc_ids", nargs="*", type=_uuid_arg, metavar="NPC_ID",
        help="NPCs to queue, each once, in this order; all or none are queued",
    )  # fmt: skip
    p.add_argument(
        "--all", action="store_true", help="select every NPC that is not deleted (default: off)"
    )
    p.add_argument(
        "--where-status", action="append", choices=["none", *_JOB_STATUSES], metavar="STATUS",
        help="select NPCs whose current job has this status (none: never generated); "
        "repeat for several; one of: none, " + ", ".join(_JOB_STATUSES) + " (default: no "
        "selection)",
    )  # fmt: skip
    p.add_argument(
        "--force", action="store_true",
        help="also replace a queued or running job (it is superseded and cannot publish), and "
        "call the model even when the record is unchanged since its file was made; without "
        "it a named NPC with such a job is an error and a selected one is skipped (default: off)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help=_JSON_HELP + " (default: off)")

    p = _command(sub, "status", "show an NPC's current job", cmd_status)
    p.add_argument("npc_id", type=_uuid_arg, metavar="NPC_ID", help=_NPC_ID_HELP)
    p.add_argument("--json", action="store_true", help=_JSON_HELP + " (default: off)")

    npc = _group(sub, "npc", "NPC records", "npc_command")
    p = _command(npc, "import", "create an NPC from a JSON file; prints its id", cmd_npc_import)
    p.add_argument(
        "file", metavar="FILE.json",
        help="the NPC as JSON, in the shape of the bundled sample (see the README)",
    )  # fmt: skip

    storage = _group(sub, "storage", "object storage", "storage_command")
    _command(
        storage, "ensure-bucket", "create the bucket (private) if missing",
        cmd_storage_ensure_bucket,
    )  # fmt: skip

    jobs = _group(sub, "jobs", "list, retry and cancel jobs", "jobs_command")
    p = _command(jobs, "list", "list NPCs' current jobs, most recently changed first", cmd_jobs)
    p.add_argument(
        "--status", choices=_JOB_STATUSES,
        help="only jobs with this status (default: every status)",
    )  # fmt: skip
    p.add_argument(
        "--limit",
        type=int,
        default=50,
        help="at most this many jobs, 1-10000 (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help=_JSON_HELP + " (default: off)")
    p = _command(jobs, "retry", "queue failed jobs again, each with a new job id", cmd_jobs)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "npc_id", nargs="?", type=_uuid_arg, metavar="NPC_ID",
        help="retry this NPC's failed job (a cancelled one too)",
    )  # fmt: skip
    target.add_argument(
        "--all-failed", action="store_true",
        help="retry every failed job except the cancelled ones (default: off)",
    )  # fmt: skip
    p.add_argument(
        "--code",
        help="with --all-failed: only jobs that failed with this error code, e.g. AI_UPSTREAM; "
        "CANCELLED retries cancelled jobs (default: every code but CANCELLED)",
    )
    p.add_argument("--json", action="store_true", help=_JSON_HELP + " (default: off)")
    p = _command(
        jobs, "cancel", "cancel a queued or running job (ends failed, CANCELLED)", cmd_jobs
    )
    p.add_argument("npc_id", type=_uuid_arg, metavar="NPC_ID", help=_NPC_ID_HELP)
    p.add_argument("--json", action="store_true", help=_JSON_HELP + " (default: off)")

    p = _command(
        sub, "costs",
        "model spend per UTC day, model and owner from the attempt rows, and today's budgets",
        cmd_costs,
    )  # fmt: skip
    p.add_argument(
        "--days", type=int, default=30,
        help="the last this many UTC days, today included, 1-3660 (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help=_JSON_HELP + " (default: off)")

    p = _command(
        sub, "doctor", "check database, migrations, LISTEN/NOTIFY, storage and provider key",
        cmd_doctor,
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help=_JSON_HELP + " (default: off)")
    return parser


def _port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a TCP port (1-65535)")
    return int(value)


def _fail(exc: BaseException, code: int, text: str | None = None) -> int:
    say(f"npcforge: {text or exc}", level=logging.ERROR, exit_code=code)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupted)  # daemons replace these with a graceful stop
    try:
        settings = load_settings()
    except ConfigError as exc:
        configure_logging()
        return _fail(exc, EXIT_USAGE)
    configure_logging(settings.log_level, settings.log_format)
    try:
        code: int = asyncio.run(args.run(settings, args))
        return code
    except (ConfigError, UsageError, ImportError_, MigrationError) as exc:
        return _fail(exc, EXIT_USAGE)
    except CommandFailed as exc:
        return _fail(exc, EXIT_FAILURE)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return _fail(exc, EXIT_FAILURE, f"{type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        return _fail(KeyboardInterrupt(), EXIT_FAILURE, "interrupted")


__all__ = ["main", "parse_npc", "sample_npc_data"]
