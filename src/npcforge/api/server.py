"""Serving the API under uvicorn, with the loopback rule for NPCFORGE_AUTH=none."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections.abc import Callable, Iterator

import uvicorn
from starlette.types import ASGIApp

from npcforge.api.app import create_api_pool, create_app
from npcforge.api.auth import is_loopback
from npcforge.config import ConfigError, Settings
from npcforge.exits import CommandFailed, UsageError
from npcforge.storage.factory import build_storage

log = logging.getLogger("npcforge.api")


def check_bind(settings: Settings, host: str) -> None:
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


def listen_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts: a busy port or a wrong address
    is one clear line (exit 1 or 2), not a server that half starts."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except socket.gaierror:
        raise UsageError(f"--host {host!r} is not an address or a name that resolves") from None
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            raise UsageError(f"--host {host!r} is not an address of this machine") from None
        hint = (
            "another process listens there; stop it or choose another --port"
            if exc.errno == errno.EADDRINUSE
            else "choose another --port"
        )
        raise CommandFailed(f"cannot listen on {host}:{port}: {exc.strerror}; {hint}") from None


class ApiServer(uvicorn.Server):
    """uvicorn, leaving SIGINT/SIGTERM to npcforge's handler (which stops everything that runs
    beside the server too, and exits 0), and logging through npcforge's handler."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(
            uvicorn.Config(
                app, log_level="warning", access_log=False, lifespan="on", log_config=None
            )
        )

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def serve_on(self, sock: socket.socket) -> None:
        try:
            await self.serve(sockets=[sock])
        except SystemExit:  # uvicorn's way of saying the app's start-up failed (logged)
            raise CommandFailed("the API failed to start; see the log lines above") from None

    def stopper(self) -> Callable[[], None]:
        def stop() -> None:
            self.should_exit = True

        return stop


async def serve_api(settings: Settings, *, host: str, port: int) -> None:
    from npcforge.api.app import build_authenticator
    from npcforge.cli import install_signal_handlers

    check_bind(settings, host)
    dsn = settings.require_database_url()
    storage = build_storage(settings)
    sock = pool = None
    try:
        sock = listen_socket(host, port)
        pool = await create_api_pool(dsn, transaction_pooler=settings.transaction_pooler)
        app = create_app(
            settings, storage=storage, pool=pool, authenticator=build_authenticator(settings),
            freeze_heap=True,
        )  # fmt: skip
        server = ApiServer(app)
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
