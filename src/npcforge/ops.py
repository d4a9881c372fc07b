"""Operator commands on the database and storage: `migrate`, `enqueue`, `status`, `npc import`,
`jobs list/retry/cancel` and `storage ensure-bucket`."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import ValidationError

from npcforge.api.dto import (
    JobErrorDetailOut,
    JobRowOut,
    NpcJobOut,
    OutputModel,
    QueuedJobOut,
    json_document,
)
from npcforge.budget import Budget
from npcforge.compose import build_storage
from npcforge.config import ConfigError, Settings
from npcforge.costs import hold_reasons, run_costs_command
from npcforge.db.connect import connect
from npcforge.db.jobs import JobQueue
from npcforge.db.migrate import migrate
from npcforge.errors import ERROR_CODES, StorageError, findings_of
from npcforge.exits import EXIT_OK, CommandFailed, UsageError
from npcforge.importer import insert_npc, read_npc_file
from npcforge.logs import say


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


async def with_conn(
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


async def run_migrate(settings: Settings, args: argparse.Namespace) -> int:
    async def body(conn: Any) -> int:
        applied = await migrate(conn)
        print(
            f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else "")
        )
        return EXIT_OK

    return await with_conn(settings, body, dev_database=False)


async def run_enqueue(settings: Settings, args: argparse.Namespace) -> int:
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

    return await with_conn(settings, body)


def _sql_message(exc: Exception) -> str:
    return str(getattr(exc, "message", None) or exc).split(":", 1)[-1].strip()


async def run_status(settings: Settings, args: argparse.Namespace) -> int:
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

    return await with_conn(settings, body)


def _job_error(error: Any) -> Any:
    try:
        return JobErrorDetailOut.model_validate(error)
    except ValidationError:  # a row another system wrote: keep what can be shown
        code = error.get("code") if isinstance(error, dict) else None
        return JobErrorDetailOut(code=str(code or "INTERNAL"), message=str(error))


async def run_npc_import(settings: Settings, args: argparse.Namespace) -> int:
    npc = read_npc_file(Path(args.file))  # validate before touching the database

    async def body(conn: Any) -> int:
        try:
            npc_id = await insert_npc(conn, npc)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise UsageError(f"the database refused the NPC: {exc}") from None
        print(npc_id)
        return EXIT_OK

    return await with_conn(settings, body)


async def run_ensure_bucket(settings: Settings, args: argparse.Namespace) -> int:
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


def _emit(rows: list[OutputModel], as_json: bool, empty: str) -> None:
    if as_json:
        print(json_document(rows))
        return
    if not rows:
        print(empty)
    for row in rows:
        doc = row.model_dump(mode="json")
        print("  ".join(f"{k}={v}" for k, v in doc.items() if v is not None))


async def _check_code(conn: Any, code: str | None) -> None:
    """An unknown --code is a typo, not "nothing to retry"."""
    if code is None or code in ERROR_CODES:
        return
    present = await JobQueue(conn).failed_codes()
    if code not in present:
        known = ", ".join(sorted(ERROR_CODES | present))
        raise UsageError(f"--code {code!r} is not an error code; known codes: {known}")


def _queued(rows: list[Any]) -> list[OutputModel]:
    return [QueuedJobOut(npc_id=row["npc_id"], job_id=row["job_id"]) for row in rows]


async def run_jobs_command(conn: Any, args: argparse.Namespace, budget: Budget) -> int:
    command = args.jobs_command
    if command == "list":
        if not 1 <= args.limit <= 10_000:
            raise UsageError("--limit must be between 1 and 10000")
        rows = await JobQueue(conn).recent(status=args.status, limit=args.limit)
        holds = await hold_reasons(conn, budget, [(row["owner_id"], row["status"]) for row in rows])
        listed: list[OutputModel] = [
            JobRowOut.model_validate({**row, "hold_reason": hold})
            for row, hold in zip(rows, holds, strict=True)
        ]
        _emit(listed, args.json, "no jobs")
        return EXIT_OK
    if command == "retry":
        if args.npc_id is not None:
            if args.code:
                raise UsageError("--code goes with --all-failed")
            rows = await JobQueue(conn).retry_failed_job(npc_id=args.npc_id)
            if not rows:
                raise CommandFailed(f"NPC {args.npc_id} has no failed job to retry")
        else:
            await _check_code(conn, args.code)
            rows = await JobQueue(conn).retry_failed(code=args.code)
        _emit(_queued(rows), args.json, "nothing to retry")
        return EXIT_OK
    if command == "cancel":
        rows = await JobQueue(conn).cancel(npc_id=args.npc_id)
        if not rows:
            raise CommandFailed(f"NPC {args.npc_id} has no queued or running job")
        _emit(_queued(rows), args.json, "")
        return EXIT_OK
    raise AssertionError(command)


async def run_jobs(settings: Settings, args: argparse.Namespace) -> int:
    budget = Budget.of(settings)
    return await with_conn(settings, lambda conn: run_jobs_command(conn, args, budget))


async def run_costs(settings: Settings, args: argparse.Namespace) -> int:
    budget = Budget.of(settings)
    return await with_conn(settings, lambda conn: run_costs_command(conn, args, budget))
