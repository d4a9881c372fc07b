"""W4 scale: 10 000 jobs, upstream latency drawn from 2-8 s, concurrency 1 000.

    python bench/w4_scale.py [--runs 1] [--jobs 10000] [--contenders npcforge npcforge4 pgqueuer]

npcforge as one `npcforge worker` process at NPCFORGE_CONCURRENCY=1000 and as 4 processes at
250 each; PGQueuer's minimal body at max_concurrent_tasks=1000. Ideal wall time: jobs x mean
latency / concurrency (50 s). Peak RSS, RSS per in-flight job, the most open sockets, errors.
"""

from __future__ import annotations

import argparse
from typing import Any

import _drain as d
import _harness as h

SHAPES = {"npcforge": ("npcforge", 1), "npcforge4": ("npcforge", 4), "pgqueuer": ("pgqueuer", 1)}


async def measure(cluster: h.Cluster, args: argparse.Namespace) -> dict[str, Any]:
    await h.prepare_template(cluster, pgqueuer="pgqueuer" in args.contenders)
    wd = h.workdir("w4")
    standin = h.start_standin(wd, args.min_ms, args.max_ms - args.min_ms)
    results = []
    try:
        # No warm-up: at 2-8 s a request it would take minutes, and upstream time dominates here.
        for run in range(args.runs):
            for name in args.contenders:
                contender, processes = SHAPES[name]
                result = await d.drain(
                    cluster,
                    standin,
                    wd,
                    contender,
                    jobs=args.jobs,
                    tag=f"r{run}{name}",
                    concurrency=args.concurrency // processes,
                    processes=processes,
                )
                results.append({**result, "name": name, "run": run})
                h.say(d.one_line(result) + f", sockets {result['sockets_max']}")
    finally:
        standin.stop()
        h.remove_workdir(wd)
    note = (
        f"Workload: {args.jobs} NPCs queued by one UPDATE (PGQueuer: one batch enqueue); stand-in "
        f"latency uniform in {args.min_ms / 1000:g}-{args.max_ms / 1000:g} s; concurrency "
        f"{args.concurrency} in all; OPENROUTER_MAX_CONNECTIONS = concurrency per process"
    )
    return {"results": results, "notes": [note]}


def report(args: argparse.Namespace, data: dict[str, Any]) -> str:
    ideal = args.jobs * (args.min_ms + args.max_ms) / 2000 / args.concurrency
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
    return f"""{h.NOTE}

{data["environment"]}

{h.table(header, rows)}

Ideal wall time {ideal:g} s (jobs × mean latency ÷ concurrency). RSS per in-flight job = the
processes' summed RSS at its highest ÷ the concurrency. Settings a user needs for this: see
"Running 1 000 jobs at once" in docs/operations.md."""


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=1000)
    p.add_argument("--min-ms", type=float, default=2000)
    p.add_argument("--max-ms", type=float, default=8000)
    p.add_argument("--contenders", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    h.common_options(p)
    args = p.parse_args()
    h.run_script(
        "w4", "W4 scale (10 000 jobs, 2-8 s upstream, concurrency 1 000)", args, measure, report
    )
