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
from typing import Any

import _drain as d
import _harness as h
from _report import method, page, percentile, say, summary, table

PCTS = (50, 95, 99, 100)
LABELS = {
    "upstream": "commit → request at the stand-in (job start)",
    "claim": "commit → claim statement began",
    "body": "commit → job body's first line",
}


async def measure(cluster: h.Cluster, args: argparse.Namespace) -> dict[str, Any]:
    """Each run: npcforge once per variant (the shipped one first), then PGQueuer; one paced
    drain each (bench/_drain.py), its latencies as percentiles."""
    envs = d.variant_envs(args.variant)
    plans = [
        ({}, {"contender": c, "concurrency": args.concurrency, "env": env, "pace_ms": args.interval_ms})
        for c in args.contenders for env in (envs if c == "npcforge" else [{}])
    ]  # fmt: skip
    data = await d.measure_drains(cluster, args, plans, delay_ms=0)
    results = []
    for r in data["results"]:
        pcts = {k: {str(p): percentile(v, p) for p in PCTS} for k, v in r["latency_ms"].items()}
        name = r["variant"]
        shown = r["contender"] + (f" [{name}]" if name != "default" else "")
        results.append({"contender": r["contender"], "shown": shown, "run": r["run"], **pcts})
        up = pcts["upstream"]
        say(f"    {shown}: commit→stand-in p50 {up['50']:.2f} p99 {up['99']:.2f} ms")
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
                cells = [summary([r[key][str(p)] for r in runs], 2) for p in PCTS]
                rows.append([shown, text, *cells])
    return page(
        data,
        table("contender|interval|p50 ms|p95 ms|p99 ms|max ms", rows),
        "Definitions (`bench/w3_pickup_latency.py`):",
        method(__doc__ or ""),
    )


if __name__ == "__main__":
    title = "W3 pickup latency (idle worker, one job every 20 ms)"
    contenders = ["npcforge", "pgqueuer"]
    options = {"--runs": 3, "--jobs": 300, "--interval-ms": 20.0, "--concurrency": 20,
               "--contenders": {"nargs": "+", "choices": contenders, "default": contenders},
               "--variant": {"nargs": "*", "default": [], "help": "NAME:VAR=VALUE,… (npcforge env)"}}  # fmt: skip
    h.main("w3", title, __doc__ or "", measure, report, options)
