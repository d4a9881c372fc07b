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
from collections import Counter
from pathlib import Path
from typing import Any

import _harness as h
import aiohttp
import asyncpg
from _baselines import LOAD_ALL

from npcforge.db.npcs import record_from_row
from npcforge.generation.prompt import RECORD_CLOSE, RECORD_OPEN, record_for_prompt

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
    sem = asyncio.Semaphore(32)
    url = standin.url + "/api/v1/chat/completions"
    async with aiohttp.ClientSession() as session:

        async def one(record: str) -> None:
            message = {"role": "user", "content": f"{RECORD_OPEN}\n{record}\n{RECORD_CLOSE}"}
            async with sem, session.post(url, json={"model": "w", "messages": [message]}) as r:
                await r.read()

        await asyncio.gather(*(one(record) for _, record in records))
    await standin.reset()


async def warm(cluster: h.Cluster, standin: h.Process, jobs: int) -> None:
    """Every run's NPCs are "Bench 1".."Bench N": warm the stand-in once for all of them."""
    conn = await h.harness_connection(await h.create_database(cluster, "warm"))
    await h.make_npcs(conn, jobs)
    await warm_standin(standin, await prompt_records(conn))
    await conn.close()
    await h.drop_database(cluster, "warm")


async def start(
    kind: str,
    dsn: str,
    conn: Any,
    standin: h.Process,
    wd: Path,
    tag: str,
    storage: Path,
    concurrency: int,
    processes: int = 1,
    env: dict[str, str] | None = None,
) -> list[h.Process]:
    """`kind`'s processes, started and idle: `npcforge worker`s (connected and LISTENing) or a
    baseline of bench/_baselines.py (READY; its result goes to `wd/tag.json`)."""
    if kind == "npcforge":
        worker_env = {**h.npcforge_env(dsn, standin.url, storage, concurrency), **(env or {})}
        procs = [h.spawn_worker(f"{tag}-{i}", wd, worker_env) for i in range(processes)]
        for application in ("npcforge-listener", "npcforge-worker"):
            await h.wait_for_backends(conn, application, processes)
        await asyncio.sleep(0.5)  # the start-up sweep has run; the workers are idle
        return procs
    options = f"--dsn {dsn} --standin {standin.url} --storage-dir {storage} --concurrency {concurrency}"  # fmt: skip
    argv = [h.PYTHON, str(h.BENCH_DIR / "_baselines.py"), kind, *options.split(), "--result", str(wd / f"{tag}.json")]  # fmt: skip
    proc = h.spawn(tag, argv, cwd=wd, stdout=subprocess.PIPE, stdin=subprocess.PIPE)
    if await proc.read_line() != "READY":
        raise RuntimeError(f"{kind} did not start:\n{proc.log_tail()}")
    return [proc]


async def pgqueuer_queries(dsn: str) -> tuple[Any, Any]:
    """A plain asyncpg connection (without npcforge's codecs) and PGQueuer's Queries on it."""
    from pgqueuer import AsyncpgDriver, Queries

    plain = await asyncpg.connect(h.harness_dsn(dsn))
    return plain, Queries(AsyncpgDriver(plain))


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
    storage, result_path = h.storage_root(wd), wd / f"{tag}.json"
    procs: list[h.Process] = []
    profiler: h.Process | None = None
    try:
        procs = await start(contender, dsn, conn, standin, wd, tag, storage, concurrency, processes, env)  # fmt: skip
        if env and "BENCH_PYSPY" in env:  # one profiled run (W1 --profile): py-spy attaches
            spy = f"record --rate 250 --gil --nonblocking --format raw --output {env['BENCH_PYSPY']} --pid {procs[0].pid}"  # fmt: skip
            profiler = h.spawn(f"{tag}-py-spy", [str(Path(h.PYTHON).parent / "py-spy"), *spy.split()], cwd=wd)  # fmt: skip
            await asyncio.sleep(1.0)
        if contender == "pgqueuer":
            payloads = [f"{i}\n{r}".encode() for i, r in await prompt_records(conn)]
            plain, queries = await pgqueuer_queries(dsn)
        await standin.reset()
        await h.reset_statement_stats(conn)
        with Sampler(cluster, conn, procs, standin) as sampler:
            if contender == "npcforge":
                await conn.execute("UPDATE npcs SET generation_job_status = 'queued'")
            elif contender == "pgqueuer":
                await queries.enqueue(["npc_xml"] * jobs, payloads, [0] * jobs)
            else:
                assert procs[0].popen.stdin is not None
                procs[0].popen.stdin.write(b"GO\n")
                procs[0].popen.stdin.flush()
            started = time.time()
            if contender == "pgqueuer":
                await plain.close()
            done_sql = DONE.get(contender, "")
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
        if done_sql:
            stats = await h.statement_stats(conn)
            last, succeeded = await conn.fetchrow(LAST[contender])
            result.update(statements_per_job=stats["calls"] / jobs, statements=stats)
        else:
            body = json.loads(result_path.read_text())
            started, last, succeeded = body["started"], body["last_finish"], jobs - body["failures"]
        result.update(last=last, succeeded=succeeded)
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
) -> dict[str, Any]:
    """Each run, each plan in order (keys for the result, `drain`'s keywords): one drain; then,
    with `--profile`, one more npcforge run (and PGQueuer run, if it is a contender) under py-spy."""
    results, profile = [], None
    pgqueuer = "pgqueuer" in str(args.contenders)
    async with h.standin_session(cluster, "drain", delay_ms, spread_ms, pgqueuer) as (wd, standin):
        if warm_up:
            await warm(cluster, standin, args.jobs)
        for run in range(args.runs):
            for index, (keys, plan) in enumerate(plans):
                result = await drain(cluster, standin, wd, jobs=args.jobs, tag=f"r{run}p{index}", **plan)  # fmt: skip
                results.append({**result, **keys, "run": run})
                h.say(one_line(result))
        if getattr(args, "profile", False):
            profiled = ["npcforge", *(["pgqueuer"] if pgqueuer else [])]
            profile = await run_profile(cluster, standin, wd, args.jobs, args.concurrency[0], profiled)  # fmt: skip
    return {"results": results, "profile": profile}


# Where a profiled worker's time goes: each sample counts for the part of its innermost frame
# that names one (JSON inside aiohttp counts as JSON, expat inside validation as validation).
# py-spy writes frames as `function (module/path.py:line)`.
PARTS = {
    "XML validation and writing": ("(npcforge/generation/validator", "(npcforge/generation/xmlrules", "(npcforge/generation/recordcheck", "(npcforge/generation/listrules", "(npcforge/generation/tfs", "(npcforge/generation/stored_xml", "(xml/"),
    "prompt": ("(npcforge/generation/prompt",),
    "JSON": ("(json/", "json_bytes (", "json_value ("),
    "logging": ("(logging/", "(npcforge/logs"),
    "metrics": ("(prometheus_client/", "(npcforge/metrics"),
    "file storage": ("(npcforge/storage/", "(tempfile.py", "(pathlib.py", "(<frozen os>", "(shutil.py"),
    "asyncpg (SQL, pool)": ("(asyncpg/",),
    "aiohttp client": ("(aiohttp/", "(yarl/", "(multidict/"),
    "event loop and tasks": ("(asyncio/", "(uvloop/", "(concurrent/", "(threading.py"),
    "pgqueuer": ("(pgqueuer/",),
    "the rest of npcforge / the baseline's body": ("(npcforge/", "(_baselines.py"),
}  # fmt: skip


def part_of(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        for part, markers in PARTS.items():
            if any(marker in frame for marker in markers):
                return part
    return "other"


async def run_profile(
    cluster: h.Cluster, standin: h.Process, wd: Path, jobs: int, concurrency: int,
    contenders: list[str],
) -> dict[str, Any]:  # fmt: skip
    """Each of `contenders` (npcforge, PGQueuer) one more run under py-spy (250 Hz, samples while
    the GIL is held): ms per job by part (PARTS), next to the run's measured worker CPU, and
    npcforge's self time by function (also in bench/results/w1-profile.txt)."""
    profile: dict[str, Any] = {"concurrency": concurrency, "parts": {}, "cpu": {}}
    for contender in contenders:
        raw = wd / f"profile-{contender}.txt"
        h.say(f"one {contender} run under py-spy (not counted)")
        env = {"BENCH_PYSPY": str(raw)}
        result = await drain(cluster, standin, wd, contender, jobs=jobs, concurrency=concurrency, tag=f"profile{contender}", env=env)  # fmt: skip
        profile["cpu"][contender] = result["cpu_ms_per_job"]
        parts: Counter[str] = Counter()
        selfs: Counter[str] = Counter()
        for line in raw.read_text().splitlines() if raw.exists() else []:
            stack, _, count = line.rpartition(" ")
            parts[part_of(stack)] += int(count)
            frame = stack.split(";")[-1]
            selfs[frame.split(" (")[0] + " (" + frame.rsplit("/", 1)[-1]] += int(count)
        profile["parts"][contender] = {k: n / 250 * 1000 / jobs for k, n in parts.items()}
        if contender == "npcforge":
            total = sum(selfs.values())
            profile["selfs"] = [[frame, n / total] for frame, n in selfs.most_common(40)]
    h.RESULTS_DIR.mkdir(exist_ok=True)
    (h.RESULTS_DIR / "w1-profile.txt").write_text(profile_text(profile) + "\n")
    return profile


def profile_text(profile: dict[str, Any] | str) -> str:
    """The profile's tables (a results file of the earlier format: its text as it was)."""
    if isinstance(profile, str):
        return (
            "Worker profile, self time by function (py-spy, GIL held):\n\n```\n" + profile + "\n```"
        )
    parts, cpu = profile["parts"], profile["cpu"]
    shown = list(parts)  # npcforge first, then PGQueuer when it ran
    names = sorted(set().union(*parts.values()), key=lambda k: -parts["npcforge"].get(k, 0.0))
    rows = [[k, *(f"{parts[c].get(k, 0.0):.3f}" for c in shown)] for k in names]
    rows.append(["**all samples (GIL held)**", *(f"{sum(parts[c].values()):.3f}" for c in shown)])  # fmt: skip
    for key, what in (("worker", "worker CPU of the profiled run (user + kernel)"), ("worker_sys", "of which kernel")):  # fmt: skip
        rows.append([what, *(f"{cpu[c].get(key, 0.0):.3f}" for c in shown)])
    selfs = "\n".join(f"{share:6.1%}  {frame}" for frame, share in profile.get("selfs", [])[:25])
    return (
        f"Worker profile at concurrency {profile['concurrency']} (py-spy, 250 Hz, samples while "
        "the GIL is held; each sample counted for the innermost frame's part), ms per job:\n\n"
        + h.table("|".join(["part", *(LABELS[c] for c in shown)]), rows)
        + "\n\nnpcforge, self time by function:\n\n```\n" + selfs + "\n```"
    )  # fmt: skip


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
                h.table("per job|mean ms|statement", rows),
                "",
            ]
    return "\n".join(out).rstrip()


METHOD = h.method(__doc__ or "")
