"""The composition root: every process's pieces built from Settings, and the start-up checks.

The daemons (`npcforge.daemons`), `dev`/`demo` (`npcforge.devmode`) and the operator commands
get their worker, provider, storage, authenticator and API app from here; nothing else reads
Settings to decide what to build.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from npcforge.budget import CostPolicy
from npcforge.config import ConfigError, Settings
from npcforge.errors import StorageError
from npcforge.generation.base import Provider
from npcforge.generation.template import TemplateProvider
from npcforge.storage.base import Storage
from npcforge.storage.factory import build_storage
from npcforge.worker.daemon import Worker
from npcforge.worker.options import WorkerOptions
from npcforge.worker.sdnotify import SystemdNotifier

if TYPE_CHECKING:  # the worker process never imports the API's modules
    import asyncpg
    from starlette.applications import Starlette

log = logging.getLogger("npcforge")


# --- the pieces --------------------------------------------------------------------------------


def build_provider(settings: Settings, dsn: str | None = None) -> Provider:
    """The configured provider. With a database (`dsn`, else DATABASE_URL) the openrouter
    provider shares the fleet's rate gate there; `provider.close()` closes the gate too."""
    if settings.provider == "template":
        return TemplateProvider()
    from npcforge.generation.openrouter import OpenRouterProvider

    dsn = dsn or settings.database_url
    if dsn is None:
        if settings.openrouter_requests_per_minute is not None:
            raise ConfigError(
                "OPENROUTER_REQUESTS_PER_MINUTE is counted in PostgreSQL; set DATABASE_URL"
            )
        return OpenRouterProvider(settings)
    from npcforge.db.upstream_gate import PostgresUpstreamGate

    gate = PostgresUpstreamGate(
        dsn,
        per_minute=settings.openrouter_requests_per_minute,
        # A pause longer than the client would sleep for a Retry-After sends the job back to
        # the queue; a cap's queue is waited out for up to half the job's deadline.
        max_pause_wait=settings.openrouter_max_retry_after_seconds,
        max_slot_wait=settings.job_deadline_seconds / 2,
        max_pause=settings.openrouter_max_delay_seconds,
    )
    return OpenRouterProvider(settings, gate=gate)


def worker_options(settings: Settings) -> WorkerOptions:
    """The one place Settings become the worker's tunables."""
    return WorkerOptions(
        concurrency=settings.concurrency,
        lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts,
        poll_seconds=settings.poll_seconds,
        shutdown_seconds=settings.shutdown_seconds,
        job_deadline_seconds=settings.job_deadline_seconds,
        max_retry_delay_seconds=settings.openrouter_max_delay_seconds,
    )


def build_worker(
    settings: Settings,
    dsn: str,
    storage: Storage | None = None,
    *,
    listen_dsn: str | None = None,
    transaction_pooler: bool = False,
) -> Worker:
    """The worker on `dsn`; LISTEN (its own and the rate gate's) on `listen_dsn` if given."""
    return Worker(
        dsn=dsn,
        listen_dsn=listen_dsn,
        transaction_pooler=transaction_pooler,
        # The rate gate LISTENs on its one connection, so it needs a session too.
        provider=build_provider(settings, listen_dsn or dsn),
        storage=storage or build_storage(settings),
        options=worker_options(settings),
        notifier=SystemdNotifier(
            settings.notify_socket, settings.watchdog_usec, settings.watchdog_pid
        ),
        cost_policy=CostPolicy.of(settings),
    )


def build_api(
    settings: Settings,
    *,
    storage: Storage,
    pool: asyncpg.Pool | None = None,
    no_auth: bool = False,
    daemon: bool = False,
) -> Starlette:
    """The API app, with the authenticator NPCFORGE_AUTH asks for, or none at all (`no_auth`:
    `npcforge dev`, loopback only); `daemon` for a process that serves only this app."""
    from npcforge.api.app import build_authenticator, create_app
    from npcforge.api.auth import NoAuth

    authenticator = NoAuth() if no_auth else build_authenticator(settings)
    return create_app(
        settings, storage=storage, pool=pool, authenticator=authenticator, freeze_heap=daemon
    )


# --- start-up checks ---------------------------------------------------------------------------


def check_worker_config(settings: Settings) -> None:
    """Fail fast (exit 2) on anything the worker would need and does not have (a LISTEN URL
    besides a transaction pooler's DATABASE_URL included)."""
    settings.require_database_url()
    settings.require_listen_url()
    if settings.provider == "openrouter":
        settings.require_openrouter_key()
    if settings.storage == "supabase":
        settings.require_supabase()


def check_bind(settings: Settings, host: str) -> None:
    """The API's configuration for serving on `host`: no open API on a public address."""
    from npcforge.api.auth import is_loopback

    if settings.auth == "none" and not is_loopback(host):
        raise ConfigError(
            f"NPCFORGE_AUTH=none is only allowed on a loopback address, not {host!r}; "
            "bind to 127.0.0.1 or set NPCFORGE_AUTH=jwt"
        )
    if (
        settings.auth == "jwt"
        and settings.supabase_jwt_secret is None
        and not settings.effective_jwks_url
    ):
        raise ConfigError(
            "NPCFORGE_AUTH=jwt needs SUPABASE_JWT_SECRET (HS256) or NPCFORGE_JWKS_URL / SUPABASE_URL"
        )


async def check_storage_at_start(storage: Storage) -> None:
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


def offline_fallback(settings: Settings) -> Settings:
    """dev/demo: without an OpenRouter key, use the template provider (and say so)."""
    if settings.provider == "openrouter" and settings.openrouter_api_key is None:
        return settings.model_copy(update={"provider": "template"})
    return settings


__all__ = [
    "ConfigError",
    "build_api",
    "build_provider",
    "build_storage",
    "build_worker",
    "check_bind",
    "check_storage_at_start",
    "check_worker_config",
    "offline_fallback",
    "worker_options",
]
