"""W3 pickup latency: one job every 20 ms, 300 jobs, an idle worker.

    python bench/w3_pickup_latency.py [--runs 3] [--jobs 300] [--interval-ms 20]

Each job is enqueued by its own autocommit statement from the harness while the worker waits
on LISTEN. Latency is measured per job from the commit to the job's start:

- commit: the moment the enqueuing statement returned to the harness (`time.time()` after the
  reply). PostgreSQL sends the reply and the NOTIFY after the commit record is flushed and the
  row is visible, so this is the earliest moment a worker could act on it (plus ~0.05 ms of
  socket latency). For reference the table also shows the server's own commit timestamp
  (`track_commit_timestamp`, stamped before the WAL flush, so that column includes the flush).
- start, npcforge: `time.time()` when the job's `JobRunner.run` begins in the worker — its claim
  has committed and returned. The worker is `npcforge worker` as shipped, built by
  bench/_experiment_worker.py with only that one timestamp added. Also shown: the claim
  statement's own start (`generation_job_claimed_at` = `now()` of the one-statement claim
  transaction, server clock), i.e. before the claim's commit flush.
- start, PGQueuer: the first line of the job body (`time.time()` in the worker).
- upstream: for both, when the LLM stand-in read the job's request — the first moment the job's
  work reached the outside world (npcforge has loaded the record and built the prompt by then).

All clocks are the same host's CLOCK_REALTIME. Results: stdout, bench/results/w3-*.json and the
W3 section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _harness as h
import _throughput as t
import asyncpg

CONTENDERS = ("npcforge", "pgqueuer")


def _pcts(values_ms: list[float]) -> dict[str, float]:
    return {
        "p50": h.percentile(values_ms, 50),
        "p95": h.percentile(values_ms, 95),
        "p99": h.percentile(values_ms, 99),
        "max": max(values_ms) if values_ms else float("nan"),
        "n": len(values_ms),
    }


async def _paced(count: int, interval: float, enqueue: Any) -> None:
    next_at = time.monotonic()
    for index in range(count):
        await enqueue(index)
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def run_npcforge(
    cluster: h.Cluster, standin: h.StandInProcess, wd: Path, args: argparse.Namespace, tag: str
) -> dict[str, Any]:
    name = f"run_{tag}"
    dsn = await h.create_database(cluster, name)
    conn = await h.harness_connection(dsn)
    ids = await h.make_npcs(conn, args.jobs)
    names = {r["name"]: r["id"] for r in await conn.fetch("SELECT id, name FROM npcs")}
    storage = h.storage_root(wd)
    starts_path = wd / f"starts-{tag}.json"
    # `npcforge worker` as shipped, plus one time.time() when each job's JobRunner.run begins.
    worker = h.spawn(
        f"npcforge-{tag}",
        [
            h.PYTHON,
            str(h.BENCH_DIR / "_experiment_worker.py"),
            "--record-starts",
            str(starts_path),
        ],
        env=h.npcforge_worker_env(dsn, standin.url, storage, args.concurrency),
        cwd=wd,
    )
    acks: dict[Any, tuple[float, int]] = {}
    try:
        await h.wait_for_backends(conn, "npcforge-listener", 1)
        await h.wait_for_backends(conn, "npcforge-worker", 1)
        await asyncio.sleep(1.0)
        await standin.reset()
        statement = await conn.prepare(
            "UPDATE npcs SET generation_job_status = 'queued' WHERE id = $1 "
            "RETURNING pg_current_xact_id()::text"
        )

        async def enqueue(index: int) -> None:
            xid = await statement.fetchval(ids[index])
            acks[ids[index]] = (time.time(), int(xid) % 2**32)

        await _paced(args.jobs, args.interval_ms / 1000, enqueue)

        async def all_done() -> bool:
            done = await conn.fetchval(
                "SELECT count(*) FROM npcs WHERE generation_job_status = 'succeeded'"
            )
            return bool(done >= args.jobs)

        deadline = time.monotonic() + 120
        while not await all_done():
            if time.monotonic() > deadline or not worker.alive():
                raise RuntimeError(f"npcforge did not finish:\n{worker.log_tail()}")
            await asyncio.sleep(0.1)
        rows = await conn.fetch(
            """
            SELECT n.id, n.generation_job_id::text AS job_id,
                   extract(epoch FROM n.generation_job_claimed_at)::float8 AS claimed,
                   extract(epoch FROM pg_xact_commit_timestamp(x.xid::text::xid))::float8 AS commit_ts
              FROM npcs n JOIN unnest($1::uuid[], $2::bigint[]) AS x(id, xid) ON x.id = n.id
            """,
            list(acks),
            [xid for _, xid in acks.values()],
        )
        arrivals = {names[name]: at for at, name in await standin.arrivals()}
    finally:
        worker.stop()
        await conn.close()
        await h.drop_database(cluster, name)
    job_starts = {job_id: at for at, job_id in json.loads(starts_path.read_text())}
    to_claim, to_start, to_upstream, server_commit_to_start, ack_lag = [], [], [], [], []
    for row in rows:
        ack = acks[row["id"]][0]
        to_claim.append((row["claimed"] - ack) * 1000)
        if row["job_id"] in job_starts:
            to_start.append((job_starts[row["job_id"]] - ack) * 1000)
            server_commit_to_start.append((job_starts[row["job_id"]] - row["commit_ts"]) * 1000)
        ack_lag.append((ack - row["commit_ts"]) * 1000)
        if row["id"] in arrivals:
            to_upstream.append((arrivals[row["id"]] - ack) * 1000)
    return {
        "contender": "npcforge",
        "commit_to_claim_statement": _pcts(to_claim),
        "commit_to_start": _pcts(to_start),
        "commit_to_upstream": _pcts(to_upstream),
        "server_commit_ts_to_start": _pcts(server_commit_to_start),
        "server_commit_ts_to_ack": _pcts(ack_lag),
    }


async def run_pgqueuer(
    cluster: h.Cluster, standin: h.StandInProcess, wd: Path, args: argparse.Namespace, tag: str
) -> dict[str, Any]:
    from pgqueuer import AsyncpgDriver, Queries

    name = f"run_{tag}"
    dsn = await h.create_database(cluster, name)
    setup = await h.harness_connection(dsn)
    await h.make_npcs(setup, args.jobs)
    records = await t.prompt_records(setup)
    await setup.close()
    conn = await asyncpg.connect(h.harness_dsn(dsn), server_settings={"application_name": "bench"})
    storage = h.storage_root(wd)
    result_path = wd / f"pgqueuer-{tag}.json"
    proc = h.spawn(
        f"pgqueuer-{tag}",
        t.contender_argv("pgqueuer", dsn, standin, storage, args.concurrency, result_path),
        cwd=wd,
        stdout=subprocess.PIPE,
    )
    acks: dict[int, tuple[float, int, str]] = {}
    try:
        assert proc.popen.stdout is not None
        line = await asyncio.to_thread(proc.popen.stdout.readline)
        if line.strip() != b"READY":
            raise RuntimeError(f"PGQueuer did not start:\n{proc.log_tail()}")
        await h.wait_for_backends(conn, "pgqueuer-worker", 1)
        await asyncio.sleep(1.0)
        await standin.reset()
        queries = Queries(AsyncpgDriver(conn))

        async def enqueue(index: int) -> None:
            npc_id, record = records[index]
            async with conn.transaction():
                xid = await conn.fetchval("SELECT pg_current_xact_id()::text")
                job_ids = await queries.enqueue("npc_xml", f"{npc_id}\n{record}".encode())
            acks[int(job_ids[0])] = (time.time(), int(xid) % 2**32, json.loads(record)["name"])

        await _paced(args.jobs, args.interval_ms / 1000, enqueue)
        deadline = time.monotonic() + 120
        while await conn.fetchval("SELECT count(*) FROM pgqueuer") > 0:
            if time.monotonic() > deadline or not proc.alive():
                raise RuntimeError(f"PGQueuer did not finish:\n{proc.log_tail()}")
            await asyncio.sleep(0.1)
        commit_ts = {
            r["xid"]: r["ts"]
            for r in await conn.fetch(
                "SELECT x.xid, extract(epoch FROM pg_xact_commit_timestamp(x.xid::text::xid))::float8 AS ts "
                "FROM unnest($1::bigint[]) AS x(xid)",
                [xid for _, xid, _ in acks.values()],
            )
        }
        arrivals = {n: at for at, n in await standin.arrivals()}
    finally:
        proc.stop()
        await conn.close()
        await h.drop_database(cluster, name)
    body = json.loads(result_path.read_text())
    starts = {job_id: at for at, job_id in body["starts"]}
    to_start, to_upstream, server_to_start, ack_lag = [], [], [], []
    for job_id, (ack, xid, npc_name) in acks.items():
        if job_id in starts:
            to_start.append((starts[job_id] - ack) * 1000)
            server_to_start.append((starts[job_id] - commit_ts[xid]) * 1000)
        ack_lag.append((ack - commit_ts[xid]) * 1000)
        if npc_name in arrivals:
            to_upstream.append((arrivals[npc_name] - ack) * 1000)
    return {
        "contender": "pgqueuer",
        "commit_to_start": _pcts(to_start),
        "commit_to_upstream": _pcts(to_upstream),
        "server_commit_ts_to_start": _pcts(server_to_start),
        "server_commit_ts_to_ack": _pcts(ack_lag),
    }


async def measure(cluster: h.Cluster, args: argparse.Namespace) -> dict[str, Any]:
    await h.prepare_template(cluster, pgqueuer="pgqueuer" in args.contenders)
    wd = h.workdir("w3")
    standin = h.start_standin(wd, 0)
    results = []
    try:
        for run in range(args.runs):
            for contender in args.contenders:
                tag = f"r{run}_{contender}"
                h.say(f"w3: run {run + 1}/{args.runs} {contender}")
                runner = run_npcforge if contender == "npcforge" else run_pgqueuer
                result = await runner(cluster, standin, wd, args, tag)
                result["run"] = run
                results.append(result)
                p = result["commit_to_start"]
                h.say(
                    f"    commit→start p50 {p['p50']:.2f} p95 {p['p95']:.2f} p99 {p['p99']:.2f} "
                    f"max {p['max']:.2f} ms (n={p['n']})"
                )
    finally:
        standin.stop()
        h.remove_workdir(wd)
    return {"results": results, "workdir": str(wd)}


def report(cluster: h.Cluster, args: argparse.Namespace, data: dict[str, Any]) -> str:
    rows = []
    labels = {
        "commit_to_claim_statement": "commit → claim statement began (npcforge)",
        "commit_to_start": "commit → job start",
        "commit_to_upstream": "commit → request at the stand-in",
        "server_commit_ts_to_start": "server commit timestamp → job start",
    }
    for contender in args.contenders:
        runs = [r for r in data["results"] if r["contender"] == contender]
        for key, label in labels.items():
            if key not in runs[0]:
                continue
            cells = [h.summary([r[key][p] for r in runs], 2) for p in ("p50", "p95", "p99", "max")]
            rows.append([contender, label, *cells])
    lag = [r["server_commit_ts_to_ack"]["p50"] for r in data["results"]]
    return "\n".join(
        [
            "> The machine is 2 shared cores: compare contenders within one run (ratios), not "
            "absolute numbers across runs.",
            "",
            h.environment_block(
                cluster,
                [
                    f"Workload: {args.jobs} jobs, one every {args.interval_ms:g} ms, each by its "
                    f"own autocommit statement; idle worker (concurrency {args.concurrency}); "
                    f"stand-in delay 0; {args.runs} run(s), median (min–max) of each run's "
                    "percentile, in milliseconds",
                ],
            ),
            "",
            h.table(["contender", "interval", "p50 ms", "p95 ms", "p99 ms", "max ms"], rows),
            "",
            "Definitions (`bench/w3_pickup_latency.py`): commit = the enqueuing statement's reply "
            "reached the harness (PostgreSQL replies and sends the NOTIFY only after the commit "
            "is flushed and visible); npcforge's job start = `JobRunner.run` begins in the worker "
            "(its claim has committed; `time.time()` added by bench/_experiment_worker.py), and "
            "the claim-statement row is `generation_job_claimed_at` = `now()` of the "
            "one-statement claim transaction, before that claim's own commit flush; PGQueuer's "
            "job start = the first line of its job body; the stand-in row is when the job's HTTP "
            "request was read "
            "by the LLM stand-in. The server commit timestamp (`track_commit_timestamp`) is taken "
            "before the WAL flush; the reply reached the harness a median "
            f"{statistics.median(lag):.2f} ms after it.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args(argv)

    with h.bench_cluster({"track_commit_timestamp": "on"}) as cluster:
        data = asyncio.run(measure(cluster, args))
        text = report(cluster, args, data)
    print(text)
    saved = h.save_results("w3", {"args": vars(args), **data})
    h.say(f"results: {saved}")
    if not args.no_docs:
        h.update_docs_section("w3", "W3 pickup latency (idle worker, one job every 20 ms)", text)
        h.say(f"updated {h.DOCS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
