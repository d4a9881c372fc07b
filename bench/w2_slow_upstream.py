"""W2 slow upstream: 1 000 jobs, a 500 ms stand-in, concurrency 100, one worker process.

    python bench/w2_slow_upstream.py [--runs 3] [--jobs 1000] [--delay-ms 500] [--concurrency 100]

The ideal wall time is jobs / concurrency * delay (5 s). Same contenders and numbers as W1.
"""

from __future__ import annotations

import argparse
from typing import Any

import _drain as d
import _harness as h
from w1_throughput import measure, parser


def report(args: argparse.Namespace, data: dict[str, Any]) -> str:
    ideal = args.jobs / args.concurrency[0] * args.delay_ms / 1000
    lines = [
        h.NOTE,
        "",
        data["environment"],
        "",
        d.results_table(data["results"]),
        "",
        f"Wall time against the ideal ({ideal:g} s = jobs ÷ concurrency × delay):",
        "",
    ]
    for (name, _), runs in d.groups(data["results"]).items():
        wall = d.median_of(runs, lambda r: r["wall_s"])
        lines.append(f"- {name}: {wall:.2f} s = × {wall / ideal:.3f} of ideal")
    lines += [
        "",
        d.ratios(data["results"], "wall_s", higher_is_better=False),
        "",
        "How it is measured (`bench/_drain.py`):",
        "",
        d.METHOD,
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    args = parser(__doc__ or "", 1000, [100], 500.0).parse_args()
    title = "W2 slow upstream (500 ms, concurrency 100)"
    h.run_script("w2", title, args, measure, report)
