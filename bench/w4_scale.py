"""W4 scale: 10 000 jobs, upstream latency drawn from 2-8 s, concurrency 1 000.

    python bench/w4_scale.py [--runs 1] [--jobs 10000] [--contenders npcforge npcforge4 pgqueuer]

npcforge as one `npcforge worker` process at NPCFORGE_CONCURRENCY=1000 and as 4 processes at
250 each; PGQueuer's minimal body at max_concurrent_tasks=1000. Ideal wall time: what a queue
with no cost of its own would take, i.e. the same latencies run on `concurrency` slots, each
slot taking the next job the moment it is free (simulated; 55.0 s at the defaults, where
jobs x mean latency / concurrency = 50 s ignores the last wave's own 2-8 s). Peak RSS, RSS per
in-flight job, the most open sockets, errors.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
from typing import Any

import _drain as d
import _harness as h
from _report import page, table

SHAPES = {"npcforge": ("npcforge", 1), "npcforge4": ("npcforge", 4), "pgqueuer": ("pgqueuer", 1)}


async def measure(cluster: h.Cluster, args: argparse.Namespace) -> dict[str, Any]:
    plans = [
        ({"name": name}, {"contender": kind, "processes": n, "concurrency": args.concurrency // n})
        for name, (kind, n) in ((name, SHAPES[name]) for name in args.contenders)
    ]
    # No warm-up: at 2-8 s a request it would take minutes, and upstream time dominates here.
    spread = args.max_ms - args.min_ms
    data = await d.measure_drains(cluster, args, plans, delay_ms=args.min_ms, spread_ms=spread, warm_up=False)  # fmt: skip
    note = (
        f"Workload: {args.jobs} NPCs queued by one UPDATE (PGQueuer: one batch enqueue); stand-in "
        f"latency uniform in {args.min_ms / 1000:g}-{args.max_ms / 1000:g} s; concurrency "
        f"{args.concurrency} in all; OPENROUTER_MAX_CONNECTIONS = concurrency per process"
    )
    return {"results": data["results"], "notes": [note]}


def ideal_wall(args: argparse.Namespace, draws: int = 20) -> tuple[float, float, float]:
    """Mean, min and max over `draws` seeded draws of the zero-overhead wall time: every job's
    latency uniform in [min, max], `concurrency` slots, a free slot takes the next job at once."""
    walls = []
    for seed in range(draws):
        rng, slots = random.Random(seed), [0.0] * args.concurrency
        for _ in range(args.jobs):
            heapq.heappush(slots, heapq.heappop(slots) + rng.uniform(args.min_ms, args.max_ms))
        walls.append(max(slots) / 1000)
    return statistics.mean(walls), min(walls), max(walls)


def report(args: argparse.Namespace, data: dict[str, Any]) -> str:
    ideal, low, high = ideal_wall(args)
    naive = args.jobs * (args.min_ms + args.max_ms) / 2000 / args.concurrency
    rows = []
    for r in data["results"]:
        per_job_kb = r["rss_max_mb"] * 1024 / args.concurrency
        rows.append(
            [
                d.label(r),
                f"{r['processes']} × {r['concurrency']}",
                f"{r['wall_s']:.1f}",
                f"× {r['wall_s'] / ideal:.3f}",
                f"{r['cpu_ms_per_job']['worker']:.2f}",
                f"{r['cpu_ms_per_job']['postgres']:.2f}",
                f"{r['peak_rss_mb']:.0f}",
                f"{r['rss_max_mb']:.0f}",
                f"{per_job_kb:.0f}",
                r["sockets_max"],
                f"{r['jobs'] - r['succeeded']} / {r['jobs'] - r['files']}",
            ]
        )
    header = (
        "contender|processes × concurrency|wall s|of ideal|worker CPU ms/job|PostgreSQL CPU "
        "ms/job|peak RSS MB (one process)|RSS MB (all, at most)|RSS KB per in-flight job|open "
        "sockets (most)|not succeeded / no file"
    )
    return page(
        data,
        table(header, rows),
        f"""Ideal wall time {ideal:.1f} s ({low:.1f}-{high:.1f} over 20 draws): the same latency
distribution on {args.concurrency} slots with no queue cost, each slot taking the next job the
moment it is free. Jobs × mean latency ÷ concurrency ({naive:g} s) is below any real run: it
leaves out that the last jobs started still take their own {args.min_ms / 1000:g}-{args.max_ms / 1000:g} s. RSS per in-flight job = the
processes' summed RSS at its highest ÷ the concurrency. Settings a user needs for this: see
"Running 1 000 jobs at once" in docs/operations.md.""",
    )


if __name__ == "__main__":
    title = "W4 scale (10 000 jobs, 2-8 s upstream, concurrency 1 000)"
    options = {"--runs": 1, "--jobs": 10_000, "--concurrency": 1000, "--min-ms": 2000.0,
               "--max-ms": 8000.0, "--contenders": {"nargs": "+", "choices": list(SHAPES), "default": list(SHAPES)}}  # fmt: skip
    h.main("w4", title, __doc__ or "", measure, report, options)
