"""Composition: build providers, storage and the worker from Settings."""

from __future__ import annotations

import logging

from npcforge.budget import CostPolicy
from npcforge.config import ConfigError, Settings
from npcforge.generation.base import Provider
from npcforge.generation.template import TemplateProvider
from npcforge.storage.base import Storage
from npcforge.storage.factory import build_storage
from npcforge.worker.daemon import Worker
from npcforge.worker.sdnotify import SystemdNotifier

log = logging.getLogger("npcforge")


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


def check_worker_config(settings: Settings) -> None:
    """Fail fast (exit 2) on anything the worker would need and does not have."""
    settings.require_database_url()
    settings.require_listen_url()
    if settings.provider == "openrouter":
        settings.require_openrouter_key()
    if settings.storage == "supabase":
        settings.require_supabase()


def offline_fallback(settings: Settings) -> Settings:
    """dev/demo: without an OpenRouter key, use the template provider (and say so)."""
    if settings.provider == "openrouter" and settings.openrouter_api_key is None:
        return settings.model_copy(update={"provider": "template"})
    return settings


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
        concurrency=settings.concurrency,
        lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts,
        poll_seconds=settings.poll_seconds,
        shutdown_seconds=settings.shutdown_seconds,
        job_deadline_seconds=settings.job_deadline_seconds,
        max_retry_delay_seconds=settings.openrouter_max_delay_seconds,
        notifier=SystemdNotifier(
            settings.notify_socket, settings.watchdog_usec, settings.watchdog_pid
        ),
        cost_policy=CostPolicy.of(settings),
    )


__all__ = [
    "ConfigError",
    "build_provider",
    "build_worker",
    "check_worker_config",
    "offline_fallback",
]
