"""One measured drain of N jobs by one contender (W1, W2, W4), and the tables of its report.

Each drain gets a fresh database cloned from the migrated template, N fresh NPC rows and fresh
contender processes: `npcforge` (P `python -m npcforge worker` processes), `pgqueuer` (its minimal
body) or `noqueue` (npcforge's body, no queue; bench/_baselines.py).

- start: npcforge and PGQueuer — the enqueuing statement returned to the harness (its commit;
  the workers are connected and idle); no queue — the baseline begins reading.
- end: the last durable completion — npcforge `max(generation_job_finished_at)` (the fenced
  finalize); PGQueuer `max(pgqueuer_log.created)` of its `successful` rows; no queue: the last
  storage write. jobs/s = jobs / (end - start).
- CPU per job: utime+stime from /proc between just before the enqueue and just after the last
  completion was seen (polled every 100 ms): the contender's processes; PostgreSQL = the
  postmaster, its reaped and live children, minus the harness's own backend; the stand-in.
- statements per job: pg_stat_statements (top level, BEGIN/COMMIT included) without the
  harness's role. Peak RSS: VmHWM; sockets: the most open at one sample (every 100 ms).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import _harness as h
import aiohttp
import asyncpg
from _baselines import LOAD_ALL, prompt_parts

from npcforge.db.npcs import record_from_row
from npcforge.generation.prompt import record_for_prompt

LABELS = {
    "npcforge": "npcforge",
    "pgqueuer": "PGQueuer (minimal body)",
    "noqueue": "no queue (npcforge body)",
}


async def prompt_records(conn: Any) -> list[tuple[str, str]]:
    """(npc id, the record JSON exactly as npcforge's prompt carries it) for every NPC."""
    return [
        (str(npc.id), json.dumps(record_for_prompt(npc), ensure_ascii=False))
        for npc in map(record_from_row, await conn.fetch(LOAD_ALL))
    ]


async def warm_standin(standin: h.Process, records: list[tuple[str, str]]) -> None:
    """Fill the stand-in's answer cache so no contender pays for the first rendering."""
    system, frame = prompt_parts()
    sem = asyncio.Semaphore(32)
    async with aiohttp.ClientSession() as session:

        async def one(record: str) -> None:
            messages = [
                {"role": "system", "content": system[:64]},
                {"role": "user", "content": frame.format(record)},
            ]
            async with (
                sem,
                session.post(
                    standin.url + "/api/v1/chat/completions",
                    json={"model": "w", "messages": messages},
                ) as response,
            ):
                await response.read()

        await asyncio.gather(*(one(record) for _, record in records))
    await standin.reset()


async def warm(cluster: h.Cluster, standin: h.Process, jobs: int) -> None:
    """Every run's NPCs are "Bench 1".."Bench N": warm the stand-in once for all of them."""
    conn = await h.harness_connection(await h.create_database(cluster, "warm"))
    await h.make_npcs(conn, jobs)
    await warm_standin(standin, await prompt_records(conn))
    await conn.close()
    await h.drop_database(cluster, "warm")


def baseline_argv(kind: str, dsn: str, standin: h.Process, storage: Path, c: int, out: Path) -> list[str]:  # fmt: skip
    options = f"--dsn {dsn} --standin {standin.url} --storage-dir {storage} --concurrency {c}"
    return [h.PYTHON, str(h.BENCH_DIR / "_baselines.py"), kind, *options.split(), "--result", str(out)]  # fmt: skip


class Sampler:
    """CPU of every measured process before/after; RSS and sockets sampled while it runs."""

    def __init__(
        self, cluster: h.Cluster, conn: Any, workers: list[h.Process], standin: h.Process
    ) -> None:
        self.cluster, self.workers, self.standin = cluster, workers, standin
        self.backend = conn.get_server_pid()
        self.sockets = 0
        self.rss_mb = 0.0

    def snap(self) -> dict[str, float]:
        return {
            "worker": sum(h.proc_cpu(w.pid) for w in self.workers),
            "worker_sys": sum(h.proc_cpu(w.pid, kernel_only=True) for w in self.workers),
            "postgres": self.cluster.cpu_seconds() - h.proc_cpu(self.backend),
            "standin": h.proc_cpu(self.standin.pid),
        }

    def sample(self) -> None:
        self.sockets = max(self.sockets, sum(h.open_sockets(w.pid) for w in self.workers))
        rss = sum((h.proc_status_kb(w.pid, "VmRSS") or 0) for w in self.workers) / 1024
        self.rss_mb = max(self.rss_mb, rss)

    def __enter__(self) -> Sampler:
        self.before = self.snap()
        return self

    def __exit__(self, *exc: object) -> None:
        self.after = self.snap()

    def per_job_ms(self, jobs: int) -> dict[str, float]:
        return {k: (self.after[k] - self.before[k]) * 1000 / jobs for k in self.before}


async def drain(
    cluster: h.Cluster,
    standin: h.Process,
    wd: Path,
    contender: str,
    *,
    jobs: int,
    concurrency: int,
    tag: str,
    processes: int = 1,
    analyze: bool = False,
    env: dict[str, str] | None = None,
    timeout: float = 900.0,
) -> dict[str, Any]:
    name = f"run_{tag}"
    dsn = await h.create_database(cluster, name)
    conn = await h.harness_connection(dsn)
    await h.make_npcs(conn, jobs)
    if analyze:
        await conn.execute("ANALYZE")
    storage = h.storage_root(wd)
    result_path = wd / f"{tag}.json"
    procs: list[h.Process] = []
    profiler: h.Process | None = None
    try:
        if contender == "npcforge":
            worker_env = {**h.npcforge_env(dsn, standin.url, storage, concurrency), **(env or {})}
            procs = [h.spawn_worker(f"{tag}-{i}", wd, worker_env) for i in range(processes)]
            await h.wait_for_backends(conn, "npcforge-listener", processes)
            await h.wait_for_backends(conn, "npcforge-worker", processes)
            await asyncio.sleep(0.5)  # the start-up sweep has run; the workers are idle
            if "BENCH_PYSPY" in worker_env:  # one profiled run (W1 --profile): py-spy attaches
                spy = [
                    str(Path(h.PYTHON).parent / "py-spy"),
                    "record",
                    "--rate",
                    "250",
                    "--gil",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    worker_env["BENCH_PYSPY"],
                    "--pid",
                    str(procs[0].pid),
                ]
                profiler = h.spawn(f"{tag}-py-spy", spy, cwd=wd)
                await asyncio.sleep(1.0)
        else:
            pipes = {"stdout": subprocess.PIPE, "stdin": subprocess.PIPE}
            argv = baseline_argv(contender, dsn, standin, storage, concurrency, result_path)
            procs = [h.spawn(tag, argv, cwd=wd, **pipes)]
            if await procs[0].read_line() != "READY":
                raise RuntimeError(f"{contender} did not start:\n{procs[0].log_tail()}")
        if contender == "pgqueuer":
            from pgqueuer import AsyncpgDriver, Queries

            payloads = [f"{i}\n{r}".encode() for i, r in await prompt_records(conn)]
            plain = await asyncpg.connect(h.harness_dsn(dsn))  # without npcforge's codecs
            queries = Queries(AsyncpgDriver(plain))
        await standin.reset()
        await h.reset_statement_stats(conn)
        with Sampler(cluster, conn, procs, standin) as sampler:
            started = time.time()
            if contender == "npcforge":
                await conn.execute("UPDATE npcs SET generation_job_status = 'queued'")
                started = time.time()
                done_sql = "SELECT count(*) >= $1 FROM npcs WHERE generation_job_status IN ('succeeded', 'failed')"
            elif contender == "pgqueuer":
                await queries.enqueue(["npc_xml"] * jobs, payloads, [0] * jobs)  # type: ignore[arg-type]
                started = time.time()
                await plain.close()
                done_sql = "SELECT count(*) = 0 OR $1 < 0 FROM pgqueuer"
            else:
                assert procs[0].popen.stdin is not None
                procs[0].popen.stdin.write(b"GO\n")
                procs[0].popen.stdin.flush()
                done_sql = ""
            deadline = time.monotonic() + timeout
            while not (await conn.fetchval(done_sql, jobs) if done_sql else result_path.exists()):
                sampler.sample()
                if not all(p.alive() for p in procs) or time.monotonic() > deadline:
                    raise RuntimeError(f"{contender} did not finish:\n{procs[0].log_tail()}")
                await asyncio.sleep(0.1)
            if not done_sql:
                await procs[0].read_line()  # DONE
        result: dict[str, Any] = {
            "contender": contender,
            "jobs": jobs,
            "concurrency": concurrency,
            "processes": processes,
            "stats": "analyzed" if analyze else "none",
            "cpu_ms_per_job": sampler.per_job_ms(jobs),
            "sockets_max": sampler.sockets,
            "rss_max_mb": round(sampler.rss_mb, 1),
            "peak_rss_mb": max(p.peak_rss_mb() or 0 for p in procs),
            "variant": (env or {}).get("BENCH_VARIANT", "default"),
        }
        if contender != "noqueue":
            stats = await h.statement_stats(conn)
            result.update(statements_per_job=stats["calls"] / jobs, statements=stats)
        if contender == "npcforge":
            row = await conn.fetchrow(
                "SELECT extract(epoch FROM max(generation_job_finished_at))::float8 AS last, "
                "count(*) FILTER (WHERE generation_job_status = 'succeeded') AS ok FROM npcs"
            )
            result.update(last=row["last"], succeeded=row["ok"])
        elif contender == "pgqueuer":
            row = await conn.fetchrow(
                "SELECT extract(epoch FROM max(created))::float8 AS last, count(*) AS ok "
                "FROM pgqueuer_log WHERE status = 'successful'"
            )
            result.update(last=row["last"], succeeded=row["ok"])
        else:
            body = json.loads(result_path.read_text())
            started = body["started"]
            result.update(last=body["last_finish"], succeeded=jobs - body["failures"])
    finally:
        if profiler is not None:
            profiler.popen.send_signal(2)  # SIGINT: py-spy writes its profile and exits
            profiler.popen.wait(60)
        for proc in procs:
            proc.stop()
        await conn.close()
        await h.drop_database(cluster, name)
    result["wall_s"] = result["last"] - started
    result["jobs_per_s"] = jobs / result["wall_s"]
    result["files"] = sum(1 for p in (storage / h.BUCKET).iterdir() if p.suffix == ".xml")
    return result


# --- reporting ----------------------------------------------------------------------------------


def label(result: dict[str, Any]) -> str:
    text = LABELS[result["contender"]]
    if result["contender"] == "npcforge":
        text += " (ANALYZE)" if result.get("stats") == "analyzed" else ""
        if result.get("processes", 1) > 1:
            text += f" {result['processes']} processes"
        if result.get("variant", "default") != "default":
            text += f" [{result['variant']}]"
    return text


def one_line(r: dict[str, Any]) -> str:
    cpu = r["cpu_ms_per_job"]
    return (
        f"    {label(r)} c={r['concurrency']}: {r['jobs_per_s']:.0f} jobs/s, wall "
        f"{r['wall_s']:.2f} s, worker {cpu['worker']:.3f} ms/job (sys {cpu['worker_sys']:.3f}), "
        f"postgres {cpu['postgres']:.3f}, stand-in {cpu['standin']:.3f}, rss "
        f"{r['peak_rss_mb']} MB, done {r['succeeded']}, files {r['files']}"
    )


def groups(results: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for result in results:
        out.setdefault((label(result), result["concurrency"]), []).append(result)
    return out


COLUMNS = [  # header, value of one run, digits
    ("jobs/s", lambda r: r["jobs_per_s"], 0),
    ("wall s", lambda r: r["wall_s"], 2),
    *((f"{name} CPU ms/job", lambda r, k=key: r["cpu_ms_per_job"][k], 3) for name, key in
      [("worker", "worker"), ("of which kernel", "worker_sys"), ("PostgreSQL", "postgres"),
       ("stand-in", "standin")]),
    ("total CPU ms/job", lambda r: sum(r["cpu_ms_per_job"][k] for k in ("worker", "postgres", "standin")), 2),
    ("SQL statements/job", lambda r: r.get("statements_per_job"), 2),
    ("peak RSS MB", lambda r: r["peak_rss_mb"], 1),
]  # fmt: skip


def results_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for (name, concurrency), runs in groups(results).items():
        cells = [h.summary([fn(r) for r in runs], digits) for _, fn, digits in COLUMNS]
        complete = all(r["files"] == r["jobs"] == r["succeeded"] for r in runs)
        rows.append([name, concurrency, *cells, f"{len(runs)}{'' if complete else ' (incomplete!)'}"])  # fmt: skip
    return h.table("|".join(["contender", "concurrency", *(c[0] for c in COLUMNS), "runs"]), rows)


def median_of(runs: list[dict[str, Any]], key: Any) -> float:
    return statistics.median(key(r) for r in runs)


def ratios(results: list[dict[str, Any]], key: str, higher_is_better: bool) -> str:
    """npcforge ÷ each baseline at the same concurrency, medians of the runs."""
    found = groups(results)
    lines = ["Ratios of medians (npcforge ÷ baseline):", ""]
    for (name, concurrency), runs in found.items():
        if not name.startswith("npcforge"):
            continue
        for other in (LABELS["pgqueuer"], LABELS["noqueue"]):
            theirs = found.get((other, concurrency))
            if theirs:
                mine, base = median_of(runs, lambda r: r[key]), median_of(theirs, lambda r: r[key])
                cpu = median_of(runs, lambda r: r["cpu_ms_per_job"]["worker"]) / median_of(
                    theirs, lambda r: r["cpu_ms_per_job"]["worker"]
                )
                what = "jobs/s" if higher_is_better else "wall time"
                lines.append(
                    f"- concurrency {concurrency}, {name} ÷ {other}: {what} × {mine / base:.2f}, "
                    f"worker CPU per job × {cpu:.2f}"
                )
    return "\n".join(lines)


def statement_table(results: list[dict[str, Any]]) -> str:
    out = []
    for contender in ("npcforge", "pgqueuer"):
        runs = [r for r in results if r["contender"] == contender and "statements" in r]
        if runs:
            last = runs[-1]
            out += [
                f"Statements of one {contender} run (concurrency {last['concurrency']}):",
                "",
                h.table(
                    "per job|mean ms|statement",
                    [
                        [
                            f"{s['calls'] / last['jobs']:.3f}",
                            f"{s['mean_ms']:.3f}",
                            f"`{s['query']}`",
                        ]
                        for s in last["statements"]["top"]
                        if s["calls"] / last["jobs"] >= 0.005
                    ],
                ),
                "",
            ]
    return "\n".join(out).rstrip()


METHOD = (__doc__ or "").split("\n\n", 2)[2].strip()
