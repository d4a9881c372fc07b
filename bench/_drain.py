"""One measured drain of N jobs by one contender (W1, W2, W4; W3 paced), and its report's tables.

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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import _harness as h
import _processes as ps
import aiohttp
import asyncpg
from _baselines import LOAD_ALL
from _report import method, say, summary, table

from npcforge.db.npcs import record_from_row
from npcforge.generation.prompt import record_for_prompt, user_prompt

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


async def warm_standin(standin: ps.Process, records: list[tuple[str, str]]) -> None:
    """Fill the stand-in's answer cache so no contender pays for the first rendering."""
    sem = asyncio.Semaphore(32)
    url = standin.url + "/api/v1/chat/completions"
    async with aiohttp.ClientSession() as session:

        async def one(record: str) -> None:
            message = {"role": "user", "content": user_prompt(record)}
            async with sem, session.post(url, json={"model": "w", "messages": [message]}) as r:
                await r.read()

        await asyncio.gather(*(one(record) for _, record in records))
    await standin.reset()


async def warm(cluster: h.Cluster, standin: ps.Process, jobs: int) -> None:
    """Every run's NPCs are "Bench 1".."Bench N": warm the stand-in once for all of them."""
    async with h.database(cluster, "warm", jobs) as db:
        await warm_standin(standin, await prompt_records(db.conn))


async def start(
    kind: str,
    dsn: str,
    conn: Any,
    standin: ps.Process,
    wd: Path,
    tag: str,
    storage: Path,
    concurrency: int,
    processes: int = 1,
    env: dict[str, str] | None = None,
) -> list[ps.Process]:
    """`kind`'s processes, started and idle: `npcforge worker`s (connected and LISTENing) or a
    baseline of bench/_baselines.py (READY; its result goes to `wd/tag.json`), each in the
    worker's environment (with `env`)."""
    worker_env = {**ps.npcforge_env(dsn, standin.url, storage, concurrency), **(env or {})}
    if kind == "npcforge":
        procs = [ps.spawn_worker(f"{tag}-{i}", wd, worker_env) for i in range(processes)]
        await h.wait_for_workers(conn, processes)
        return procs
    argv = [ps.PYTHON, str(ps.BENCH_DIR / "_baselines.py"), kind, str(wd / f"{tag}.json")]
    proc = ps.spawn(tag, argv, cwd=wd, env=worker_env, stdout=subprocess.PIPE, stdin=subprocess.PIPE)  # fmt: skip
    if await proc.read_line() != "READY":
        raise RuntimeError(f"{kind} did not start:\n{proc.log_tail()}")
    return [proc]


async def pgqueuer_queries(dsn: str) -> tuple[Any, Any]:
    """A plain asyncpg connection (without npcforge's codecs) and PGQueuer's Queries on it."""
    from pgqueuer import AsyncpgDriver, Queries

    plain = await asyncpg.connect(h.harness_dsn(dsn))
    return plain, Queries(AsyncpgDriver(plain))


DONE = {  # every job is done (the baseline without a queue writes its result file instead)
    "npcforge": "SELECT count(*) >= $1 FROM npcs WHERE generation_job_status IN ('succeeded', 'failed')",
    "pgqueuer": "SELECT count(*) = 0 OR $1 < 0 FROM pgqueuer",
}  # fmt: skip
LAST = {  # the last durable completion, and how many succeeded
    "npcforge": "SELECT extract(epoch FROM max(generation_job_finished_at))::float8, count(*) FILTER (WHERE generation_job_status = 'succeeded') FROM npcs",
    "pgqueuer": "SELECT extract(epoch FROM max(created))::float8, count(*) FROM pgqueuer_log WHERE status = 'successful'",
}  # fmt: skip


async def drain(
    cluster: h.Cluster,
    standin: ps.Process,
    wd: Path,
    contender: str,
    *,
    jobs: int,
    concurrency: int,
    tag: str,
    processes: int = 1,
    analyze: bool = False,
    env: dict[str, str] | None = None,
    pace_ms: float = 0.0,
    timeout: float = 900.0,
) -> dict[str, Any]:
    """One drain; with `pace_ms` (W3) its jobs are enqueued one at a time and its result holds
    each job's latencies from the commit that queued it (`latency_ms`)."""
    storage, result_path = ps.storage_root(wd), wd / f"{tag}.json"
    procs: list[ps.Process] = []
    profiler: ps.Process | None = None
    async with h.database(cluster, f"run_{tag}", jobs) as db:
        conn = db.conn
        if analyze:
            await conn.execute("ANALYZE")
        try:
            procs = await start(contender, db.dsn, conn, standin, wd, tag, storage, concurrency, processes, env)  # fmt: skip
            if env and "BENCH_PYSPY" in env:  # one profiled run (W1 --profile): py-spy attaches
                spy = f"record --rate 250 --gil --nonblocking --format raw --output {env['BENCH_PYSPY']} --pid {procs[0].pid}"  # fmt: skip
                profiler = ps.spawn(f"{tag}-py-spy", [str(Path(ps.PYTHON).parent / "py-spy"), *spy.split()], cwd=wd)  # fmt: skip
                await asyncio.sleep(1.0)
            queries: Any = None
            if contender == "pgqueuer":
                records = await prompt_records(conn)
                plain, queries = await pgqueuer_queries(db.dsn)
            await standin.reset()
            await h.reset_statement_stats(conn)
            with ps.Sampler(cluster, conn.get_server_pid(), procs, standin) as sampler:
                began = time.time()
                if pace_ms:
                    npcs = db.ids if contender == "npcforge" else records
                    acks, job_names = await paced(contender, conn, queries, npcs, pace_ms)
                elif contender == "npcforge":
                    await conn.execute("UPDATE npcs SET generation_job_status = 'queued'")
                elif contender == "pgqueuer":
                    payloads = [f"{npc_id}\n{record}".encode() for npc_id, record in records]
                    await queries.enqueue(["npc_xml"] * jobs, payloads, [0] * jobs)
                else:
                    assert procs[0].popen.stdin is not None
                    procs[0].popen.stdin.write(b"GO\n")
                    procs[0].popen.stdin.flush()
                started = began if pace_ms else time.time()  # W1: the enqueue's commit
                if contender == "pgqueuer":
                    await plain.close()
                done_sql = DONE.get(contender, "")
                deadline = time.monotonic() + timeout
                while not (await conn.fetchval(done_sql, jobs) if done_sql else result_path.exists()):  # fmt: skip
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
            if done_sql:
                stats = await h.statement_stats(conn)
                last, succeeded = await conn.fetchrow(LAST[contender])
                result.update(statements_per_job=stats["calls"] / jobs, statements=stats)
            else:
                body = json.loads(result_path.read_text())
                started, last, succeeded = body["started"], body["last_finish"], jobs - body["failures"]  # fmt: skip
            result.update(last=last, succeeded=succeeded)
            if pace_ms:
                arrivals = {name: at for at, name in await standin.bench_get("/_bench/arrivals")}
                latency = {"upstream": [(arrivals[n] - at) * 1000 for n, at in acks.items()]}
                if contender == "npcforge":
                    claims = await conn.fetch(CLAIMED)
                    latency["claim"] = [(r["t"] - acks[r["name"]]) * 1000 for r in claims]
                result["latency_ms"] = latency
        finally:
            if profiler is not None:
                profiler.popen.send_signal(2)  # SIGINT: py-spy writes its profile and exits
                profiler.popen.wait(60)
            for proc in procs:
                proc.stop()
    if pace_ms and contender == "pgqueuer":  # its body's start of each job, written on exit
        starts = json.loads(result_path.read_text())["starts"]
        result["latency_ms"]["body"] = [(at - acks[job_names[job]]) * 1000 for at, job in starts]
    result["wall_s"] = result["last"] - started
    result["jobs_per_s"] = jobs / result["wall_s"]
    result["files"] = sum(1 for p in (storage / ps.BUCKET).iterdir() if p.suffix == ".xml")
    return result


CLAIMED = "SELECT name, extract(epoch FROM generation_job_claimed_at)::float8 AS t FROM npcs"


async def paced(
    contender: str, conn: Any, queries: Any, npcs: list[Any], interval_ms: float
) -> tuple[dict[str, float], dict[int, str]]:
    """W3's enqueue, after a second for the idle worker to settle: one job every `interval_ms`,
    each by its own autocommit statement (npcforge: an UPDATE of one of the NPC ids `npcs`;
    PGQueuer: one enqueue of one of the (id, record) `npcs`). When each commit was seen, by NPC
    name, and the NPC name of each PGQueuer job id."""
    acks: dict[str, float] = {}
    job_names: dict[int, str] = {}
    one = "UPDATE npcs SET generation_job_status = 'queued' WHERE id = $1 RETURNING name"
    update = await conn.prepare(one) if contender == "npcforge" else None
    await asyncio.sleep(1.0)
    next_at = time.monotonic()
    for npc in npcs:
        if update is not None:
            # Two statements: in `acks[await …] = time.time()` the time is taken first, before
            # the UPDATE is even sent, which counted its round trip against npcforge.
            name = await update.fetchval(npc)
            acks[name] = time.time()
        else:
            name = json.loads(npc[1])["name"]
            job = (await queries.enqueue("npc_xml", f"{npc[0]}\n{npc[1]}".encode()))[0]
            acks[name], job_names[int(job)] = time.time(), name
        next_at += interval_ms / 1000
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return acks, job_names


def variant_envs(specs: list[str]) -> list[dict[str, str]]:
    """`--variant NAME:VAR=VALUE,…`: npcforge's extra environments, the shipped one (none) first;
    `PYTHONPATH=/other/tree/src` runs another source tree."""
    return [{}] + [
        {**dict(p.split("=", 1) for p in pairs.split(",") if p), "BENCH_VARIANT": name}
        for name, _, pairs in (spec.partition(":") for spec in specs)
    ]


async def measure_drains(
    cluster: h.Cluster,
    args: Any,
    plans: list[tuple[dict[str, Any], dict[str, Any]]],
    *,
    delay_ms: float,
    spread_ms: float = 0.0,
    warm_up: bool = True,
    then: Callable[[Path, ps.Process], Awaitable[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Each run, each plan in order (keys for the result, `drain`'s keywords): one drain; then
    `then(workdir, stand-in)`, whose keys join the results' (W1's profile)."""
    results, extra = [], {}
    pgqueuer = "pgqueuer" in str(args.contenders)
    async with h.standin_session(cluster, "drain", delay_ms, spread_ms, pgqueuer) as (wd, standin):
        if warm_up:
            await warm(cluster, standin, args.jobs)
        for run in range(args.runs):
            for index, (keys, plan) in enumerate(plans):
                result = await drain(cluster, standin, wd, jobs=args.jobs, tag=f"r{run}p{index}", **plan)  # fmt: skip
                results.append({**result, **keys, "run": run})
                say(one_line(result))
        if then is not None:
            extra = await then(wd, standin)
    return {"results": results, **extra}


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
        f"{r['peak_rss_mb']} MB, done {r['succeeded']}, files {r['files']}, sockets {r['sockets_max']}"
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
        cells = [summary([fn(r) for r in runs], digits) for _, fn, digits in COLUMNS]
        complete = all(r["files"] == r["jobs"] == r["succeeded"] for r in runs)
        rows.append([name, concurrency, *cells, f"{len(runs)}{'' if complete else ' (incomplete!)'}"])  # fmt: skip
    return table("|".join(["contender", "concurrency", *(c[0] for c in COLUMNS), "runs"]), rows)


def median_of(runs: list[dict[str, Any]], key: Any) -> float:
    return statistics.median(key(r) for r in runs)


def ratios(results: list[dict[str, Any]], key: str, higher_is_better: bool) -> str:
    """npcforge ÷ each baseline at the same concurrency, medians of the runs."""
    found = groups(results)
    lines = ["Ratios of medians (npcforge ÷ baseline):", ""]
    what = "jobs/s" if higher_is_better else "wall time"
    for (name, concurrency), runs in found.items():
        for other in (LABELS["pgqueuer"], LABELS["noqueue"]) if name.startswith("npcforge") else ():
            if theirs := found.get((other, concurrency)):
                mine, base = (median_of(x, lambda r: r[key]) for x in (runs, theirs))
                cpu = [
                    median_of(x, lambda r: r["cpu_ms_per_job"]["worker"]) for x in (runs, theirs)
                ]
                lines.append(
                    f"- concurrency {concurrency}, {name} ÷ {other}: {what} × {mine / base:.2f}, "
                    f"worker CPU per job × {cpu[0] / cpu[1]:.2f}"
                )
    return "\n".join(lines)


def statement_table(results: list[dict[str, Any]]) -> str:
    """The statements of the last npcforge run and of the last PGQueuer run, per job."""
    out = []
    for contender in ("npcforge", "pgqueuer"):
        if runs := [r for r in results if r["contender"] == contender and "statements" in r]:
            last, jobs = runs[-1], runs[-1]["jobs"]
            rows = [[f"{s['calls'] / jobs:.3f}", f"{s['mean_ms']:.3f}", f"`{s['query']}`"]
                    for s in last["statements"]["top"] if s["calls"] / jobs >= 0.005]  # fmt: skip
            out += [
                f"Statements of one {contender} run (concurrency {last['concurrency']}):",
                "",
                table("per job|mean ms|statement", rows),
                "",
            ]
    return "\n".join(out).rstrip()


METHOD = method(__doc__ or "")
