"""The two long-running processes: `npcforge worker` and `npcforge api`.

Each checks its configuration first (exit 2 naming the fix), gets its pieces from the
composition root, stops gracefully on the first signal and closes what it opened.
"""

from __future__ import annotations

import argparse
import logging

from npcforge.compose import (
    build_api,
    build_storage,
    build_worker,
    check_bind,
    check_storage_at_start,
    check_worker_config,
)
from npcforge.config import Settings
from npcforge.exits import EXIT_OK
from npcforge.signals import install_signal_handlers

log = logging.getLogger("npcforge.api")


async def run_worker(settings: Settings, args: argparse.Namespace) -> int:
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
        await check_storage_at_start(storage)
        if settings.metrics_port is not None:
            # Imported only when asked for: aiohttp's server side is ~1 MB of the worker's RSS.
            from npcforge.worker.metrics_server import serve_metrics

            metrics_server = await serve_metrics(worker, "0.0.0.0", settings.metrics_port)  # noqa: S104
        await worker.run()
    finally:
        if metrics_server is not None:
            await metrics_server.cleanup()
        await worker.provider.close()
        await worker.storage.close()
    return EXIT_OK


async def run_api(settings: Settings, args: argparse.Namespace) -> int:
    await serve_api(settings, host=args.host, port=args.port)
    return EXIT_OK


async def serve_api(settings: Settings, *, host: str, port: int) -> None:
    from npcforge.api.app import create_api_pool
    from npcforge.api.server import ApiServer, listen_socket

    check_bind(settings, host)
    dsn = settings.require_database_url()
    storage = build_storage(settings)
    sock = pool = None
    try:
        sock = listen_socket(host, port)
        pool = await create_api_pool(dsn, transaction_pooler=settings.transaction_pooler)
        server = ApiServer(build_api(settings, storage=storage, pool=pool, daemon=True))
        install_signal_handlers(server.stopper())
        log.info(
            "api listening",
            extra={"action": "start", "address": f"http://{host}:{port}", "auth": settings.auth,
                   "storage": storage.name},
        )  # fmt: skip
        await server.serve_on(sock)
        log.info("api stopped", extra={"action": "stopped"})
    finally:
        if pool is not None:
            await pool.close()
        if sock is not None:
            sock.close()
        await storage.close()
