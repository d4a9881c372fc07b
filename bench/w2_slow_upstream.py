"""W2 slow upstream: 1 000 jobs, a 500 ms stand-in, concurrency 100, one worker process.

    python bench/w2_slow_upstream.py [--runs 3] [--jobs 1000] [--delay-ms 500] [--concurrency 100]

The ideal wall time is jobs ÷ concurrency * delay (5 s): the queue should add nothing but the
claim and finalize round trips. Same contenders and measurements as W1 (npcforge without and
with ANALYZE, PGQueuer's minimal body, npcforge's body with no queue). Results: stdout,
bench/results/w2-*.json and the W2 section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import _harness as h
import _throughput as t
from w1_throughput import CONTENDERS, measure


def report(
    cluster: h.Cluster | None,
    args: argparse.Namespace,
    data: dict[str, Any],
    environment: str | None = None,
) -> str:
    results = data["results"]
    ideal = args.jobs / args.concurrency[0] * args.delay_ms / 1000
    lines = [
        "> The machine is 2 shared cores: compare contenders within one run (ratios), not "
        "absolute numbers across runs.",
        "",
        environment
        or h.environment_block(
            cluster,
            [
                f"Workload: {args.jobs} NPCs queued by one UPDATE while the worker is idle; "
                f"stand-in delay {args.delay_ms:g} ms; concurrency {args.concurrency[0]}; "
                f"ideal wall {ideal:g} s; {args.runs} run(s) per row, median (min–max)",
            ],
        ),
        "",
        t.results_table(results),
        "",
        "Wall time against the ideal (jobs ÷ concurrency × delay):",
        "",
    ]
    groups: dict[str, list[float]] = {}
    for result in results:
        groups.setdefault(t._label(result), []).append(result["wall_s"])
    for label, walls in groups.items():
        lines.append(
            f"- {label}: {statistics.median(walls):.2f} s = × {statistics.median(walls) / ideal:.3f} of ideal"
        )
    lines += ["", t.ratios(results, key="wall_s", higher_is_better=False), "", t.method_notes()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs=1, default=[100])
    parser.add_argument("--delay-ms", type=float, default=500.0)
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument(
        "--stats", nargs="+", choices=["none", "analyzed"], default=["none", "analyzed"]
    )
    t.add_common_options(parser)
    args = parser.parse_args(argv)
    args.profile = False
    args.npcforge_variants = ["default"]

    return t.run_script("w2", "W2 slow upstream (500 ms, concurrency 100)", args, measure, report)


if __name__ == "__main__":
    sys.exit(main())
