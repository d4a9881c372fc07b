"""`npcforge doctor`: one OK/FAIL line per thing the daemons need (database, pooler,
migrations, queue, LISTEN/NOTIFY, storage, provider key), each failure with its fix."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from npcforge.api.dto import DoctorCheckOut, json_document
from npcforge.budget import Budget, CostPolicy
from npcforge.compose import build_storage
from npcforge.config import ConfigError, Settings
from npcforge.costs import budget_overview
from npcforge.db.connect import connect
from npcforge.db.jobs import JobQueue
from npcforge.db.migrate import MigrationError, check_current
from npcforge.errors import StorageError
from npcforge.exits import EXIT_FAILURE, EXIT_OK
from npcforge.ops import with_dev_database


@dataclass(slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


async def _doctor_connect(dsn: str) -> Any:
    # No prepared-statement cache: correct on a direct connection and behind any pooler.
    return await connect(
        dsn, application_name="npcforge-doctor", timeout=5, transaction_pooler=True
    )


async def _check_database(settings: Settings) -> tuple[Check, Any]:
    try:
        dsn = settings.require_database_url()
    except ConfigError as exc:
        return Check("database", False, str(exc), "set DATABASE_URL"), None
    try:
        conn = await _doctor_connect(dsn)
    except Exception as exc:
        return (
            Check("database", False, f"cannot connect ({type(exc).__name__})",
                  "check DATABASE_URL, network access and credentials"),
            None,
        )  # fmt: skip
    version = await conn.fetchval("SHOW server_version")
    return Check("database", True, f"connected, PostgreSQL {version}"), conn


async def _shares_server_sessions(dsn: str, conn: Any) -> bool:
    """Two client connections on one server session: a transaction (or statement) pooler.

    `conn`'s statement releases its server connection at once behind such a pooler, and the
    next client is handed the idle one (PgBouncer reuses the most recent). On a direct or
    session-mode connection two clients never share a backend. Busy pools can hide it: a True
    is proof, a False is not."""
    first = await conn.fetchval("SELECT pg_backend_pid()")
    other = await _doctor_connect(dsn)
    try:
        async with other.transaction():
            second = await other.fetchval("SELECT pg_backend_pid()")
    finally:
        await other.close()
    return bool(first == second)


async def _check_pooler(settings: Settings, pooled: bool) -> Check:
    if pooled and not settings.transaction_pooler:
        return Check(
            "pooler", False,
            "DATABASE_URL is a transaction-mode pooler (two connections shared one server "
            "session); prepared statements and session settings break there",
            "set NPCFORGE_DB_POOLER=transaction, and DATABASE_LISTEN_URL (a direct or "
            "session-mode URL) for the worker",
        )  # fmt: skip
    if pooled:
        return Check("pooler", True, "transaction-mode pooler on DATABASE_URL, as configured")
    if settings.transaction_pooler:
        return Check(
            "pooler", True,
            "NPCFORGE_DB_POOLER=transaction, no pooling seen on DATABASE_URL (works either way)",
        )  # fmt: skip
    return Check("pooler", True, "direct or session-mode connection")


async def _check_migrations(conn: Any) -> Check:
    try:
        missing = await check_current(conn)
    except MigrationError as exc:
        return Check("migrations", False, str(exc), "restore the migration files of this release")
    if missing:
        return Check(
            "migrations", False, "not applied: " + ", ".join(missing), "run `npcforge migrate`"
        )
    return Check("migrations", True, "all applied")


async def _check_budget(settings: Settings, conn: Any) -> Check:
    """The daily model budgets: a price to estimate calls with, and whether jobs are held."""
    budget = Budget.of(settings)
    if not budget.capped:
        return Check("budget", True, "no daily model budget set (NPCFORGE_DAILY_BUDGET_USD)")
    try:
        CostPolicy.of(settings)
    except ConfigError as exc:
        return Check("budget", False, str(exc), "set NPCFORGE_MODEL_PRICES for the model")
    overview = await budget_overview(conn, budget)
    detail = f"today ${overview.fleet_spent_usd:.6f} spent (reserved included)"
    if overview.fleet_limit_usd is not None:
        detail += f" of ${overview.fleet_limit_usd:.6f}"
    if overview.user_limit_usd is not None:
        detail += (
            f"; ${overview.user_limit_usd:.6f} per owner, {overview.owners_at_limit} owner(s) at it"
        )
    if overview.held_jobs == 0:
        return Check("budget", True, detail)
    return Check(
        "budget", False,
        f"{detail}; {overview.held_jobs} queued job(s) held until the budget allows "
        f"(resets {overview.resets_at:%Y-%m-%d %H:%M} UTC)",
        "wait for the reset, or raise NPCFORGE_DAILY_BUDGET_USD / "
        "NPCFORGE_USER_DAILY_BUDGET_USD and restart the workers",
    )  # fmt: skip


async def _check_queue(conn: Any) -> Check:
    row = await JobQueue(conn).health()
    if row["webhooks"]:
        return Check(
            "queue", False,
            "a Supabase Database Webhook is still on npcs (" + ", ".join(row["webhooks"]) + "): "
            "the original worker would run every job a second time",
            "delete the webhook in the dashboard (Database -> Webhooks)",
        )  # fmt: skip
    if row["unclaimable"]:
        return Check(
            "queue", False,
            f"{row['unclaimable']} queued job(s) have no generation_job_run_after and are never "
            "claimed",
            "UPDATE npcs SET generation_job_run_after = now() WHERE generation_job_status = "
            "'queued' AND generation_job_run_after IS NULL",
        )  # fmt: skip
    detail = f"{row['queued']} queued"
    if row["unleased"]:
        detail += (
            f"; {row['unleased']} running without a lease (left by another system), taken back "
            "by the worker once it runs"
        )
    return Check("queue", True, detail)


async def _listen_round_trip(conn: Any, where: str) -> Check:
    channel = f"npcforge_doctor_{uuid.uuid4().hex[:12]}"
    got = asyncio.Event()
    await conn.add_listener(channel, lambda *_: got.set())
    try:
        await conn.execute(f"NOTIFY {channel}")
        await asyncio.wait_for(got.wait(), timeout=5)
    except TimeoutError:
        return Check(
            "listen/notify", False, f"no notification came back within 5 s over {where}",
            "use a direct or session-mode connection (port 5432), never the transaction pooler",
        )  # fmt: skip
    finally:
        await conn.remove_listener(channel, lambda *_: None)
    return Check("listen/notify", True, f"round trip ok over {where}")


async def _check_listen(settings: Settings, conn: Any, pooled: bool) -> Check:
    fix = "set DATABASE_LISTEN_URL to a direct or session-mode URL (on Supabase port 5432)"
    if not settings.database_listen_url:
        if pooled:
            return Check(
                "listen/notify", False,
                "DATABASE_URL is a transaction-mode pooler: a LISTEN there loses its "
                "notifications when the pooler hands the server connection to another client",
                fix,
            )  # fmt: skip
        return await _listen_round_trip(conn, "DATABASE_URL")
    try:
        listen = await _doctor_connect(settings.database_listen_url)
    except Exception as exc:
        return Check(
            "listen/notify", False, f"cannot connect to DATABASE_LISTEN_URL ({type(exc).__name__})",
            "check DATABASE_LISTEN_URL, network access and credentials",
        )  # fmt: skip
    try:
        if await _shares_server_sessions(settings.database_listen_url, listen):
            return Check(
                "listen/notify", False, "DATABASE_LISTEN_URL is a transaction-mode pooler too", fix
            )
        return await _listen_round_trip(listen, "DATABASE_LISTEN_URL")
    finally:
        await listen.close()


async def _check_storage(settings: Settings) -> Check:
    try:
        storage = build_storage(settings)
    except ConfigError as exc:
        return Check("storage", False, str(exc), "set the storage variables")
    try:
        await storage.check()
    except StorageError as exc:
        code = (exc.details or {}).get("storageCode", "")
        fix = (
            "run `npcforge storage ensure-bucket`"
            if code == "NoSuchBucket"
            else ("check SUPABASE_URL / SUPABASE_SERVICE_ROLE_KEY or NPCFORGE_STORAGE_DIR")
        )
        return Check("storage", False, f"{exc.message} {code}".strip(), fix)
    finally:
        await storage.close()
    return Check("storage", True, f"{storage.name} bucket {settings.bucket!r} present")


async def _check_provider(settings: Settings) -> Check:
    if settings.provider == "template":
        return Check("provider", True, "template provider (offline) needs no key")
    try:
        key = settings.require_openrouter_key()
    except ConfigError as exc:
        return Check("provider", False, str(exc), "set OPENROUTER_API_KEY")
    base = settings.openrouter_base_url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=10)
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for path in ("/key", "/models"):
                async with session.get(base + path, headers=headers) as response:
                    if response.status in (401, 403):
                        return Check("provider", False, f"key refused (HTTP {response.status})",
                                     "check OPENROUTER_API_KEY")  # fmt: skip
                    if response.status == 200:
                        return Check("provider", True, f"key accepted by {base}{path}")
            return Check("provider", False, f"unexpected HTTP {response.status} from {base}",
                         "check OPENROUTER_BASE_URL")  # fmt: skip
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Check("provider", False, f"cannot reach {base} ({type(exc).__name__})",
                     "check OPENROUTER_BASE_URL and outbound network")  # fmt: skip


async def run_doctor(settings: Settings, *, json_output: bool = False) -> int:
    checks: list[Check] = []
    db_check, conn = await _check_database(settings)
    checks.append(db_check)
    later: list[Callable[[], Awaitable[Check]]] = []
    try:
        if conn is not None:
            pooled = await _shares_server_sessions(settings.require_database_url(), conn)
            checks.append(await _check_pooler(settings, pooled))
            checks.append(await _check_migrations(conn))
            if checks[-1].ok:  # the queue's columns are there
                later.append(lambda: _check_queue(conn))
                later.append(lambda: _check_budget(settings, conn))
            later.append(lambda: _check_listen(settings, conn, pooled))
        later += [lambda: _check_storage(settings), lambda: _check_provider(settings)]
        for step in later:
            checks.append(await step())
    finally:
        if conn is not None:
            await conn.close()
    if json_output:
        print(json_document([DoctorCheckOut(check=c.name, ok=c.ok, detail=c.detail,
                                            fix=c.fix or None) for c in checks]))  # fmt: skip
    else:
        for c in checks:
            line = f"{'OK  ' if c.ok else 'FAIL'} {c.name}: {c.detail}"
            if not c.ok and c.fix:
                line += f" -- fix: {c.fix}"
            print(line)
    return EXIT_OK if all(c.ok for c in checks) else EXIT_FAILURE


async def run_doctor_command(settings: Settings, args: argparse.Namespace) -> int:
    return await run_doctor(with_dev_database(settings), json_output=args.json)
