"""One measured drain of N jobs by one contender: npcforge, PGQueuer or the no-queue baseline.

Shared by W1 (throughput) and W2 (slow upstream). Each call gets a fresh database cloned from the
migrated template, N fresh NPC rows, a fresh contender process; it returns the numbers of that
one run. Definitions (also in docs/benchmarks.md):

- start: npcforge and PGQueuer — the moment the enqueuing statement returned to the harness (its
  commit; the worker is already running and idle); no-queue — when the baseline began reading.
- end: the last job's durable completion — npcforge: max(generation_job_finished_at), set by the
  fenced finalize; PGQueuer: max(pgqueuer_log.created) of the `successful` rows, written when its
  status buffer flushes; no-queue: the last storage write.
- CPU: utime+stime from /proc between the two moments just before the enqueue and just after the
  last completion was seen: the contender's process (all threads); PostgreSQL = the postmaster
  with its reaped children plus every live child, minus the harness's own backend.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import _harness as h
import aiohttp
import asyncpg
from _contenders import load_all_sql, pgqueuer_prompt_parts

from npcforge.db.npcs import record_from_row
from npcforge.generation.prompt import record_for_prompt

POLL_S = 0.1


async def prompt_records(conn: Any) -> list[tuple[str, str]]:
    """(npc id, the record JSON exactly as npcforge's prompt carries it) for every NPC."""
    rows = await conn.fetch(load_all_sql())
    out = []
    for row in rows:
        npc = record_from_row(row)
        out.append((str(npc.id), json.dumps(record_for_prompt(npc), ensure_ascii=False)))
    return out


async def warm_standin(standin: h.StandInProcess, records: list[tuple[str, str]]) -> None:
    """Fill the stand-in's answer cache so no contender pays for the first rendering."""

    system, frame = pgqueuer_prompt_parts()
    url = standin.url + "/api/v1/chat/completions"
    sem = asyncio.Semaphore(32)
    async with aiohttp.ClientSession() as session:

        async def one(record: str) -> None:
            async with sem:
                body = {
                    "model": "warm",
                    "messages": [
                        {"role": "system", "content": system[:64]},
                        {"role": "user", "content": frame.format(record)},
                    ],
                }
                async with session.post(url, json=body) as response:
                    await response.read()

        await asyncio.gather(*(one(record) for _, record in records))
    await standin.reset()


class Window:
    """CPU snapshots of everything measured, taken before and after the work."""

    def __init__(self, cluster: h.Cluster, harness_pid: int, procs: dict[str, int]) -> None:
        self.cluster = cluster
        self.harness_pid = harness_pid
        self.procs = procs
        self.before: dict[str, float] = {}
        self.after: dict[str, float] = {}

    def _snap(self) -> dict[str, float]:
        snap = {name: h.proc_cpu(pid) for name, pid in self.procs.items()}
        snap["worker_sys"] = h.proc_sys_cpu(self.procs["worker"])
        snap["postgres"] = self.cluster.cpu_seconds()
        snap["harness_backend"] = h.proc_cpu(self.harness_pid)
        return snap

    def start(self) -> None:
        self.before = self._snap()

    def stop(self) -> None:
        self.after = self._snap()

    def delta(self, name: str) -> float:
        return self.after[name] - self.before[name]

    def per_job_ms(self, jobs: int) -> dict[str, float]:
        out = {name: self.delta(name) * 1000 / jobs for name in self.procs}
        out["worker_sys"] = self.delta("worker_sys") * 1000 / jobs
        pg = self.delta("postgres") - self.delta("harness_backend")
        out["postgres"] = pg * 1000 / jobs
        return out


async def _wait_until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the contender did not finish in time")
        await asyncio.sleep(POLL_S)


async def _setup(cluster: h.Cluster, name: str, jobs: int, analyze: bool) -> tuple[str, Any]:
    dsn = await h.create_database(cluster, name)
    conn = await h.harness_connection(dsn)
    await h.make_npcs(conn, jobs)
    if analyze:
        await conn.execute("ANALYZE")
    return dsn, conn


def _files(storage: Path) -> int:
    return sum(1 for p in (storage / "npc-xml-files").iterdir() if p.suffix == ".xml")


async def run_npcforge(
    cluster: h.Cluster,
    standin: h.StandInProcess,
    wd: Path,
    *,
    jobs: int,
    concurrency: int,
    analyze: bool,
    tag: str,
    profile: Path | None = None,
    variant: str = "default",
    timeout: float = 600.0,
) -> dict[str, Any]:
    name = f"run_{tag}"
    dsn, conn = await _setup(cluster, name, jobs, analyze)
    storage = h.storage_root(wd)
    worker = h.spawn(
        f"npcforge-{tag}",
        worker_argv(variant),
        env=h.npcforge_worker_env(dsn, standin.url, storage, concurrency),
        cwd=wd,
    )
    profiler = None
    try:
        await h.wait_for_backends(conn, "npcforge-listener", 1)
        await h.wait_for_backends(conn, "npcforge-worker", 1)
        await asyncio.sleep(0.5)  # the start-up sweep has run; the worker is idle
        await standin.reset()
        await h.reset_statement_stats(conn)
        if profile is not None:
            profiler = h.spawn(
                f"py-spy-{tag}",
                [
                    str(Path(h.PYTHON).parent / "py-spy"),
                    "record",
                    "--pid",
                    str(worker.pid),
                    "--rate",
                    "250",
                    "--nonblocking",
                    "--gil",
                    "--format",
                    "raw",
                    "--output",
                    str(profile),
                ],
                cwd=wd,
            )
            await asyncio.sleep(1.0)
        window = Window(
            cluster, conn.get_server_pid(), {"worker": worker.pid, "standin": standin.pid}
        )
        window.start()
        await conn.execute("UPDATE npcs SET generation_job_status = 'queued'")
        started = time.time()

        async def done() -> bool:
            if not worker.alive():
                raise RuntimeError(f"the worker exited:\n{worker.log_tail()}")
            finished = await conn.fetchval(
                "SELECT count(*) FROM npcs WHERE generation_job_status IN ('succeeded', 'failed')"
            )
            return bool(finished >= jobs)

        await _wait_until(done, timeout)
        window.stop()
        peak_rss = worker.peak_rss_mb()
        statements = await h.statement_stats(conn)
        row = await conn.fetchrow(
            """
            SELECT extract(epoch FROM max(generation_job_finished_at))::float8 AS last_finish,
                   extract(epoch FROM min(generation_job_claimed_at))::float8 AS first_claim,
                   count(*) FILTER (WHERE generation_job_status = 'succeeded') AS succeeded,
                   count(*) FILTER (WHERE generation_job_status = 'failed') AS failed
              FROM npcs
            """
        )
        attempts = await conn.fetchval("SELECT count(*) FROM npc_generation_attempts")
    finally:
        if profiler is not None:
            profiler.popen.send_signal(2)  # SIGINT: py-spy writes the profile and exits
            try:
                profiler.popen.wait(30)
            except subprocess.TimeoutExpired:
                profiler.stop()
        worker.stop()
        await conn.close()
        await h.drop_database(cluster, name)
    wall = row["last_finish"] - started
    return {
        "contender": "npcforge",
        "variant": variant,
        "jobs": jobs,
        "concurrency": concurrency,
        "stats": "analyzed" if analyze else "none",
        "wall_s": wall,
        "jobs_per_s": jobs / wall,
        "first_claim_after_ms": (row["first_claim"] - started) * 1000,
        "succeeded": row["succeeded"],
        "failed": row["failed"],
        "attempt_rows": attempts,
        "files": _files(storage),
        "cpu_ms_per_job": window.per_job_ms(jobs),
        "peak_rss_mb": peak_rss,
        "statements_per_job": statements["calls"] / jobs,
        "statements": statements,
    }


def contender_argv(
    kind: str,
    dsn: str,
    standin: h.StandInProcess,
    storage: Path,
    concurrency: int,
    result: Path,
) -> list[str]:
    """The command line of a baseline process (bench/_contenders.py)."""
    return [
        h.PYTHON,
        str(h.BENCH_DIR / "_contenders.py"),
        kind,
        "--dsn",
        dsn,
        "--standin",
        standin.url,
        "--storage-dir",
        str(storage),
        "--concurrency",
        str(concurrency),
        "--result",
        str(result),
    ]


KNOBS = {
    "noreset": "--no-reset",
    "uvloop": "--uvloop",
    "asynccommit": "--async-commit",
    "nofsync": "--no-fsync",
}


def worker_argv(variant: str) -> list[str]:
    """`npcforge worker` as shipped, or the experiment runner with knobs (`pool=50+noreset`)."""
    if variant == "default":
        return [h.PYTHON, "-m", "npcforge", "worker"]
    argv = [h.PYTHON, str(h.BENCH_DIR / "_experiment_worker.py")]
    for knob in variant.split("+"):
        if knob.startswith("pool="):
            argv += ["--pool-size", knob.split("=", 1)[1]]
        elif knob in KNOBS:
            argv.append(KNOBS[knob])
        else:
            raise SystemExit(f"unknown npcforge variant knob {knob!r}")
    return argv


async def run_pgqueuer(
    cluster: h.Cluster,
    standin: h.StandInProcess,
    wd: Path,
    *,
    jobs: int,
    concurrency: int,
    tag: str,
    timeout: float = 600.0,
) -> dict[str, Any]:
    from pgqueuer import AsyncpgDriver, Queries

    name = f"run_{tag}"
    dsn, conn = await _setup(cluster, name, jobs, analyze=False)
    records = await prompt_records(conn)
    # PGQueuer encodes its own JSON: give it a connection without npcforge's json codecs.
    await conn.close()
    conn = await asyncpg.connect(h.harness_dsn(dsn), server_settings={"application_name": "bench"})
    payloads: list[bytes | None] = [f"{npc_id}\n{record}".encode() for npc_id, record in records]
    storage = h.storage_root(wd)
    result_path = wd / f"pgqueuer-{tag}.json"
    proc = h.spawn(
        f"pgqueuer-{tag}",
        contender_argv("pgqueuer", dsn, standin, storage, concurrency, result_path),
        cwd=wd,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.popen.stdout is not None
        line = await asyncio.to_thread(proc.popen.stdout.readline)
        if line.strip() != b"READY":
            raise RuntimeError(f"PGQueuer contender did not start:\n{proc.log_tail()}")
        await h.wait_for_backends(conn, "pgqueuer-worker", 1)
        await standin.reset()
        await h.reset_statement_stats(conn)
        queries = Queries(AsyncpgDriver(conn))
        window = Window(
            cluster, conn.get_server_pid(), {"worker": proc.pid, "standin": standin.pid}
        )
        window.start()
        await queries.enqueue(["npc_xml"] * jobs, payloads, [0] * jobs)
        started = time.time()

        async def done() -> bool:
            if not proc.alive():
                raise RuntimeError(f"PGQueuer exited:\n{proc.log_tail()}")
            left = await conn.fetchval("SELECT count(*) FROM pgqueuer")
            return bool(left == 0)

        await _wait_until(done, timeout)
        window.stop()
        peak_rss = proc.peak_rss_mb()
        statements = await h.statement_stats(conn)
        row = await conn.fetchrow(
            """
            SELECT extract(epoch FROM max(created))::float8 AS last_finish,
                   count(*) AS succeeded
              FROM pgqueuer_log WHERE status = 'successful'
            """
        )
    finally:
        proc.stop()
        await conn.close()
        await h.drop_database(cluster, name)
    body = json.loads(result_path.read_text()) if result_path.exists() else {}
    wall = row["last_finish"] - started
    return {
        "contender": "pgqueuer",
        "jobs": jobs,
        "concurrency": concurrency,
        "batch_size": body.get("batch_size"),
        "wall_s": wall,
        "jobs_per_s": jobs / wall,
        "succeeded": row["succeeded"],
        "bodies_finished": len(body.get("finishes", [])),
        "files": _files(storage),
        "cpu_ms_per_job": window.per_job_ms(jobs),
        "peak_rss_mb": peak_rss,
        "statements_per_job": statements["calls"] / jobs,
        "statements": statements,
    }


async def run_noqueue(
    cluster: h.Cluster,
    standin: h.StandInProcess,
    wd: Path,
    *,
    jobs: int,
    concurrency: int,
    tag: str,
    timeout: float = 600.0,
) -> dict[str, Any]:
    name = f"run_{tag}"
    dsn, conn = await _setup(cluster, name, jobs, analyze=False)
    storage = h.storage_root(wd)
    result_path = wd / f"noqueue-{tag}.json"
    proc = h.spawn(
        f"noqueue-{tag}",
        contender_argv("noqueue", dsn, standin, storage, concurrency, result_path),
        cwd=wd,
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
    )
    try:
        assert proc.popen.stdout is not None and proc.popen.stdin is not None
        line = await asyncio.to_thread(proc.popen.stdout.readline)
        if line.strip() != b"READY":
            raise RuntimeError(f"no-queue baseline did not start:\n{proc.log_tail()}")
        await standin.reset()
        window = Window(
            cluster, conn.get_server_pid(), {"worker": proc.pid, "standin": standin.pid}
        )
        window.start()
        proc.popen.stdin.write(b"GO\n")
        proc.popen.stdin.flush()
        line = await asyncio.wait_for(asyncio.to_thread(proc.popen.stdout.readline), timeout)
        window.stop()
        if line.strip() != b"DONE":
            raise RuntimeError(f"no-queue baseline failed:\n{proc.log_tail()}")
    finally:
        proc.stop()
        await conn.close()
        await h.drop_database(cluster, name)
    body = json.loads(result_path.read_text())
    wall = body["last_finish"] - body["started"]
    per_job = window.per_job_ms(jobs)
    return {
        "contender": "noqueue",
        "jobs": jobs,
        "concurrency": concurrency,
        "wall_s": wall,
        "jobs_per_s": jobs / wall,
        "failures": body["failures"],
        "errors": body["errors"],
        "files": _files(storage),
        "cpu_ms_per_job": per_job,
        "cpu_ms_per_job_self": body["cpu_s"] * 1000 / jobs,
        "peak_rss_mb": body["peak_rss_mb"],
    }


# --- running a script --------------------------------------------------------------------------------


def add_common_options(parser: Any) -> None:
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument(
        "--from-results",
        metavar="FILE",
        help="re-render the report from a saved bench/results JSON (no measuring)",
    )


def run_script(key: str, title: str, args: Any, measure: Any, report: Any) -> int:
    """Measure (or re-render a saved run), print, save the JSON, update the docs section."""
    if args.from_results:
        saved = json.loads(Path(args.from_results).read_text())
        old = h.DOCS_FILE.read_text() if h.DOCS_FILE.exists() else ""
        # Keep the saved run's environment lines (machine, versions, settings, workload).
        match = re.search(rf"<!-- bench:{key}:start -->.*?(- Run: .*?)\n\n\|", old, re.DOTALL)
        text = report(
            None, argparse.Namespace(**saved["args"]), saved, match.group(1) if match else None
        )
        print(text)
    else:
        with h.bench_cluster() as cluster:
            data = asyncio.run(measure(cluster, args))
            text = report(cluster, args, data)
        print(text)
        h.say(f"results: {h.save_results(key, {'args': vars(args), **data})}")
    if not args.no_docs:
        h.update_docs_section(key, title, text)
        h.say(f"updated {h.DOCS_FILE}")
    return 0


# --- reporting -------------------------------------------------------------------------------------


def _label(result: dict[str, Any]) -> str:
    if result["contender"] == "npcforge":
        label = f"npcforge ({'ANALYZE' if result['stats'] == 'analyzed' else 'no ANALYZE'})"
        variant = result.get("variant", "default")
        return label if variant == "default" else f"{label} [{variant}]"
    if result["contender"] == "pgqueuer":
        return "PGQueuer (minimal body)"
    return "no queue (npcforge body)"


def one_line(result: dict[str, Any]) -> str:
    cpu = result["cpu_ms_per_job"]
    done = result.get("succeeded", result.get("jobs", 0) - result.get("failures", 0))
    return (
        f"{_label(result)}: {result['jobs_per_s']:.0f} jobs/s, wall {result['wall_s']:.2f} s, "
        f"worker {cpu['worker']:.3f} ms/job (sys {cpu.get('worker_sys', 0):.3f}), postgres {cpu['postgres']:.3f} ms/job, "
        f"stand-in {cpu['standin']:.3f} ms/job, rss {result['peak_rss_mb']} MB, "
        f"statements/job {result.get('statements_per_job', float('nan')):.2f}, "
        f"done {done}, files {result['files']}"
    )


def _groups(results: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for result in results:
        groups.setdefault((_label(result), result["concurrency"]), []).append(result)
    return groups


def _total_cpu(result: dict[str, Any]) -> float:
    cpu = result["cpu_ms_per_job"]
    return float(cpu["worker"] + cpu["postgres"] + cpu["standin"])


def results_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for (label, concurrency), runs in _groups(results).items():

        def col(fn: Any, digits: int = 1, runs: list[dict[str, Any]] = runs) -> str:
            return h.summary([fn(r) for r in runs], digits)

        complete = all(
            r["files"] == r["jobs"] and r.get("failed", 0) == 0 and r.get("failures", 0) == 0
            for r in runs
        )
        rows.append(
            [
                label,
                concurrency,
                col(lambda r: r["jobs_per_s"], 0),
                col(lambda r: r["wall_s"], 2),
                col(lambda r: r["cpu_ms_per_job"]["worker"], 3),
                col(lambda r: r["cpu_ms_per_job"].get("worker_sys", float("nan")), 3),
                col(lambda r: r["cpu_ms_per_job"]["postgres"], 3),
                col(lambda r: r["cpu_ms_per_job"]["standin"], 3),
                col(_total_cpu, 2),
                col(lambda r: r["jobs_per_s"] * _total_cpu(r) / 1000, 2),
                col(lambda r: r.get("statements_per_job"), 2)
                if "statements_per_job" in runs[0]
                else "–",
                col(lambda r: r["peak_rss_mb"], 1),
                f"{len(runs)}{'' if complete else ' (incomplete!)'}",
            ]
        )
    return h.table(
        [
            "contender",
            "concurrency",
            "jobs/s",
            "wall s",
            "worker CPU ms/job",
            "of which kernel",
            "PostgreSQL CPU ms/job",
            "stand-in CPU ms/job",
            "total CPU ms/job",
            "CPUs busy",
            "SQL statements/job",
            "peak RSS MB",
            "runs",
        ],
        rows,
    )


def ratios(results: list[dict[str, Any]], *, key: str, higher_is_better: bool) -> str:
    import statistics

    groups = _groups(results)
    lines = ["Ratios of medians (npcforge ÷ baseline):", ""]
    for (label, concurrency), runs in groups.items():
        if not label.startswith("npcforge"):
            continue
        mine = statistics.median(r[key] for r in runs)
        for other in ("PGQueuer (minimal body)", "no queue (npcforge body)"):
            theirs = groups.get((other, concurrency))
            if not theirs:
                continue
            value = statistics.median(r[key] for r in theirs)
            what = "jobs/s" if higher_is_better else "wall time"
            lines.append(
                f"- concurrency {concurrency}, {label} ÷ {other}: {what} × {mine / value:.2f}"
            )
    return "\n".join(lines)


def statement_breakdown(results: list[dict[str, Any]]) -> str:
    out = []
    for contender in ("npcforge", "pgqueuer"):
        runs = [r for r in results if r["contender"] == contender and "statements" in r]
        if not runs:
            continue
        last = runs[-1]
        jobs = last["jobs"]
        out.append(
            f"Statements of one {contender} run (concurrency {last['concurrency']}; "
            "pg_stat_statements, top-level, BEGIN/COMMIT included):"
        )
        out.append("")
        out.append(
            h.table(
                ["per job", "mean ms", "statement"],
                [
                    [f"{s['calls'] / jobs:.3f}", f"{s['mean_ms']:.3f}", f"`{s['query']}`"]
                    for s in last["statements"]["top"]
                    if s["calls"] / jobs >= 0.005
                ],
            )
        )
        out.append("")
    return "\n".join(out).rstrip()


def method_notes() -> str:
    return """How it is measured (`bench/_throughput.py`):
- start: npcforge and PGQueuer — the enqueuing statement returned to the harness (its commit;
  the worker is already connected and idle); no queue — the baseline process starts reading.
- end: the last job's durable completion — npcforge `max(generation_job_finished_at)` (the fenced
  finalize); PGQueuer `max(pgqueuer_log.created)` of its `successful` rows (written when its
  status buffer flushes); no queue: the last storage write. jobs/s = jobs ÷ (end − start).
- CPU per job: utime+stime from `/proc/<pid>/stat` between a snapshot just before the enqueue
  and one just after the last completion was seen (the harness polls every 100 ms). Worker = the
  contender's process with all its threads. PostgreSQL = the postmaster with its reaped children
  plus every live child (backends, WAL writer, checkpointer, autovacuum), minus the harness's
  own backend. Stand-in = the LLM stand-in process (it answers from a warmed cache).
- Statements per job: `pg_stat_statements` (preloaded, `track = top`) calls in the run's
  database, without the harness's role, ÷ jobs. Utility statements (BEGIN, COMMIT, LISTEN) count;
  asyncpg's protocol-level Parse/Describe do not.
- Total CPU = worker + PostgreSQL + stand-in per job; CPUs busy = jobs/s × total CPU: how many
  of the machine's 2 CPUs the contender kept busy. When that is about the same for every
  contender, throughput is CPU-bound and ranks follow total CPU per job.
- Peak RSS: `VmHWM` of the contender's process, read before it is stopped.
- Every contender writes each XML with npcforge's `FilesystemStorage.put` (temporary file,
  fsync, rename, directory fsync) into a directory on the same disk as PostgreSQL's data.
- PGQueuer: uvloop (as its CLI runs), one dedicated asyncpg connection, `batch_size` =
  concurrency ÷ 2 (the most its `max_concurrent_tasks ≥ 2 × batch_size` rule allows),
  `max_concurrent_tasks` = concurrency, durable tables, `pgq autovac` settings; its job payload
  is the NPC id plus the record JSON, and its body POSTs the same prompt npcforge sends.
- npcforge runs `python -m npcforge worker` with `NPCFORGE_LOG_FORMAT=json` at info level into
  a file, and `OPENROUTER_MAX_CONNECTIONS = max(64, concurrency)` (the default of 64 would cap
  the in-flight upstream requests below the concurrency in W2)."""
