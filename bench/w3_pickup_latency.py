"""W3 pickup latency: one job every 20 ms, 300 jobs, an idle worker.

    python bench/w3_pickup_latency.py [--runs 3] [--jobs 300] [--interval-ms 20]
        [--variant NAME:VAR=VALUE,...]

Each job is enqueued by its own autocommit statement from the harness while the worker waits
on LISTEN; per job, from the commit (the enqueuing statement's reply reached the harness:
PostgreSQL replies and notifies only after the commit is flushed and visible) to:
- the job's request at the LLM stand-in (its `time.time()` on reading the body): the first
  moment the job's work reaches the outside world, for both contenders ("job start");
- npcforge: the claim statement (`generation_job_claimed_at`, `now()` of the one-statement
  claim transaction, before that claim's commit flush);
- PGQueuer: the first line of its job body.
npcforge runs as shipped (`python -m npcforge worker`; `--variant` adds npcforge runs with extra
environment variables, as in W1); every clock is this host's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import _drain as d
import _harness as h

LABELS = {
    "upstream": "commit → request at the stand-in (job start)",
    "claim": "commit → claim statement began",
    "body": "commit → job body's first line",
}


async def run(
    cluster: h.Cluster, standin: h.Process, wd: Path, args: argparse.Namespace, contender: str, tag: str,
    env: dict[str, str],
) -> dict[str, list[float]]:  # fmt: skip
    name = f"run_{tag}"
    dsn = await h.create_database(cluster, name)
    conn = await h.harness_connection(dsn)
    ids = await h.make_npcs(conn, args.jobs)
    records = await d.prompt_records(conn)
    storage = h.storage_root(wd)
    acks: dict[str, float] = {}  # npc name -> commit seen
    job_names: dict[int, str] = {}
    procs = await d.start(
        contender, dsn, conn, standin, wd, tag, storage, args.concurrency, env=env
    )
    if contender == "npcforge":
        statement = await conn.prepare(
            "UPDATE npcs SET generation_job_status = 'queued' WHERE id = $1 RETURNING name"
        )

        async def enqueue(index: int) -> None:
            # Two statements: in `acks[await …] = time.time()` the time is taken first, before
            # the UPDATE is even sent, which counted its round trip against npcforge.
            name = await statement.fetchval(ids[index])
            acks[name] = time.time()

    else:
        plain, queries = await d.pgqueuer_queries(dsn)

        async def enqueue(index: int) -> None:
            npc_id, record = records[index]
            job = (await queries.enqueue("npc_xml", f"{npc_id}\n{record}".encode()))[0]
            name = json.loads(record)["name"]
            acks[name], job_names[int(job)] = time.time(), name

    try:
        await asyncio.sleep(1.0)
        await standin.reset()
        next_at = time.monotonic()
        for index in range(args.jobs):
            await enqueue(index)
            next_at += args.interval_ms / 1000
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        deadline = time.monotonic() + 120
        while len(await standin.bench_get("/_bench/arrivals")) < args.jobs:
            if time.monotonic() > deadline or not procs[0].alive():
                raise RuntimeError(f"{contender} did not finish:\n{procs[0].log_tail()}")
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        arrivals = {n: at for at, n in await standin.bench_get("/_bench/arrivals")}
        out = {"upstream": [(arrivals[n] - ack) * 1000 for n, ack in acks.items()]}
        if contender == "npcforge":
            rows = await conn.fetch(
                "SELECT name, extract(epoch FROM generation_job_claimed_at)::float8 AS t FROM npcs"
            )
            out["claim"] = [(r["t"] - acks[r["name"]]) * 1000 for r in rows]
        else:
            await plain.close()
    finally:
        for proc in procs:
            proc.stop()
        await conn.close()
        await h.drop_database(cluster, name)
    if contender == "pgqueuer":
        starts = json.loads((wd / f"{tag}.json").read_text())["starts"]
        out["body"] = [(at - acks[job_names[job]]) * 1000 for at, job in starts]
    return out


def plans(args: argparse.Namespace) -> list[tuple[str, dict[str, str]]]:
    """npcforge once per variant (the shipped one first), then PGQueuer."""
    envs = d.variant_envs(getattr(args, "variant", []))
    return [(c, env) for c in args.contenders for env in (envs if c == "npcforge" else [{}])]


async def measure(cluster: h.Cluster, args: argparse.Namespace) -> dict[str, Any]:
    results = []
    pgqueuer = "pgqueuer" in args.contenders
    async with h.standin_session(cluster, "w3", 0, 0, pgqueuer) as (wd, standin):
        await d.warm(cluster, standin, args.jobs)
        for index in range(args.runs):
            for i, (contender, env) in enumerate(plans(args)):
                found = await run(cluster, standin, wd, args, contender, f"r{index}p{i}", env)
                pcts = {
                    key: {str(p): h.percentile(v, p) for p in (50, 95, 99, 100)}
                    for key, v in found.items()
                }
                name = env.get("BENCH_VARIANT")
                shown = f"{contender} [{name}]" if name else contender
                results.append({"contender": contender, "shown": shown, "run": index, **pcts})
                up = pcts["upstream"]
                h.say(f"    {shown}: commit→stand-in p50 {up['50']:.2f} p99 {up['99']:.2f} ms")
    note = (
        f"Workload: {args.jobs} jobs, one every {args.interval_ms:g} ms, each by its own "
        f"autocommit statement; idle worker (concurrency {args.concurrency}); stand-in delay 0; "
        f"{args.runs} run(s), median (min–max) of each run's percentile, in milliseconds"
    )
    return {"results": results, "notes": [note]}


def report(args: argparse.Namespace, data: dict[str, Any]) -> str:
    rows = []
    for shown in dict.fromkeys(r.get("shown", r["contender"]) for r in data["results"]):
        runs = [r for r in data["results"] if r.get("shown", r["contender"]) == shown]
        for key, text in LABELS.items():
            if key in runs[0]:
                cells = [h.summary([r[key][str(p)] for r in runs], 2) for p in (50, 95, 99, 100)]
                rows.append([shown, text, *cells])
    return h.page(
        data,
        h.table("contender|interval|p50 ms|p95 ms|p99 ms|max ms", rows),
        "Definitions (`bench/w3_pickup_latency.py`):",
        h.method(__doc__ or ""),
    )


if __name__ == "__main__":
    title = "W3 pickup latency (idle worker, one job every 20 ms)"
    contenders = ["npcforge", "pgqueuer"]
    options = {"--runs": 3, "--jobs": 300, "--interval-ms": 20.0, "--concurrency": 20,
               "--contenders": {"nargs": "+", "choices": contenders, "default": contenders},
               "--variant": {"nargs": "*", "default": [], "help": "NAME:VAR=VALUE,… (npcforge env)"}}  # fmt: skip
    h.main("w3", title, __doc__ or "", measure, report, options)
