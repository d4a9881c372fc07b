"""W1 throughput: N NPCs queued by one UPDATE, instant stand-in, one worker process.

    python bench/w1_throughput.py [--runs 3] [--jobs 5000] [--concurrency 20 50]
        [--contenders npcforge pgqueuer noqueue] [--stats none analyzed]
        [--variant NAME:VAR=VALUE,...] [--profile]

Per run and concurrency, interleaved: `npcforge worker` as shipped (without and with ANALYZE
after the bulk insert), PGQueuer's minimal body, npcforge's body with no queue. `--variant`
adds npcforge runs with extra environment variables (e.g. `nolog:NPCFORGE_LOG_LEVEL=warning`);
`--profile` one more npcforge and one more PGQueuer run under py-spy: worker time per job by
part (bench/results/w1-profile.txt).
"""

from __future__ import annotations

import argparse
from typing import Any

import _drain as d
import _harness as h

CONTENDERS = ("npcforge", "pgqueuer", "noqueue")


def plans(args: argparse.Namespace) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Per concurrency and contender: npcforge once per statistics choice and variant."""
    envs = d.variant_envs(args.variant)
    npcforge = [{"analyze": s == "analyzed", "env": env} for s in args.stats for env in envs]
    return [
        ({}, {"contender": c, "concurrency": n, **options})
        for n in args.concurrency
        for c in args.contenders
        for options in (npcforge if c == "npcforge" else npcforge[:1])
    ]


async def measure(cluster: h.Cluster, args: argparse.Namespace) -> dict[str, Any]:
    data = await d.measure_drains(cluster, args, plans(args), delay_ms=args.delay_ms)
    note = (
        f"Workload: {args.jobs} NPCs (no shop, no keywords) queued by one UPDATE while the "
        f"worker is idle; stand-in delay {args.delay_ms:g} ms; {args.runs} run(s) per row, "
        "median (min–max)"
    )
    return {**data, "notes": [note]}


def report(args: argparse.Namespace, data: dict[str, Any]) -> str:
    profile = data.get("profile")
    return h.page(
        data,
        d.results_table(data["results"]),
        d.ratios(data["results"], "jobs_per_s", higher_is_better=True),
        "How it is measured (`bench/_drain.py`):",
        d.METHOD,
        d.statement_table(data["results"]),
        *([d.profile_text(profile)] if profile else []),
    )  # fmt: skip


def options(jobs: int, concurrency: list[int], delay_ms: float) -> dict[str, Any]:
    """W1's and W2's command line, with each one's defaults."""
    return {
        "--runs": 3,
        "--jobs": jobs,
        "--concurrency": concurrency,
        "--delay-ms": delay_ms,
        "--contenders": {"nargs": "+", "choices": CONTENDERS, "default": list(CONTENDERS)},
        "--stats": {"nargs": "+", "choices": ["none", "analyzed"], "default": ["none"]},
        "--variant": {"nargs": "*", "default": [], "help": "NAME:VAR=VALUE,… (npcforge env)"},
        "--profile": False,
    }


if __name__ == "__main__":
    title = "W1 throughput (one worker, instant upstream)"
    h.main("w1", title, __doc__ or "", measure, report, options(5000, [20, 50], 0.0))
