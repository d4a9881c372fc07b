"""W2 slow upstream: 1 000 jobs, a 500 ms stand-in, concurrency 100, one worker process.

    python bench/w2_slow_upstream.py [--runs 3] [--jobs 1000] [--delay-ms 500] [--concurrency 100]

The ideal wall time is jobs / concurrency * delay (5 s). Same contenders and numbers as W1.
"""

from __future__ import annotations

import argparse
from typing import Any

import _drain as d
import _harness as h
from _report import page
from w1_throughput import measure, options


def report(args: argparse.Namespace, data: dict[str, Any]) -> str:
    ideal = args.jobs / args.concurrency[0] * args.delay_ms / 1000
    walls = [
        (name, d.median_of(runs, lambda r: r["wall_s"]))
        for (name, _), runs in d.groups(data["results"]).items()
    ]
    return page(
        data,
        d.results_table(data["results"]),
        f"Wall time against the ideal ({ideal:g} s = jobs ÷ concurrency × delay):",
        "\n".join(
            f"- {name}: {wall:.2f} s = × {wall / ideal:.3f} of ideal" for name, wall in walls
        ),
        d.ratios(data["results"], "wall_s", higher_is_better=False),
        "How it is measured (`bench/_drain.py`):",
        d.METHOD,
    )


if __name__ == "__main__":
    title = "W2 slow upstream (500 ms, concurrency 100)"
    h.main("w2", title, __doc__ or "", measure, report, options(1000, [100], 500.0))
