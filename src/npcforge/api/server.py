"""Serving an ASGI app under uvicorn: the listening socket and the server."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable, Iterator

import uvicorn
from starlette.types import ASGIApp

from npcforge.exits import CommandFailed, UsageError


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
