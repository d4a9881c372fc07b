"""W1 throughput: N NPCs queued by one UPDATE, instant stand-in, one worker process.

    python bench/w1_throughput.py [--runs 3] [--jobs 5000] [--concurrency 20 50]
        [--contenders npcforge pgqueuer noqueue] [--stats none analyzed]
        [--variant NAME:VAR=VALUE,...] [--profile]

Per run and concurrency, interleaved: `npcforge worker` as shipped (without and with ANALYZE
after the bulk insert), PGQueuer's minimal body, npcforge's body with no queue. `--variant`
adds npcforge runs with extra environment variables (e.g. `nolog:NPCFORGE_LOG_LEVEL=warning`);
`--profile` one more npcforge run under py-spy (bench/results/w1-profile.txt).
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

import _drain as d
import _harness as h

CONTENDERS = ("npcforge", "pgqueuer", "noqueue")


def variants(args: argparse.Namespace) -> list[tuple[str, dict[str, str]]]:
    out: list[tuple[str, dict[str, str]]] = [("default", {})]
    for spec in args.variant:
        name, _, pairs = spec.partition(":")
        env = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
        out.append((name, {**env, "BENCH_VARIANT": name}))
    return out


async def measure(cluster: h.Cluster, args: argparse.Namespace) -> dict[str, Any]:
    await h.prepare_template(cluster, pgqueuer="pgqueuer" in args.contenders)
    wd = h.workdir("w1")
    standin = h.start_standin(wd, args.delay_ms)
    results: list[dict[str, Any]] = []
    profile = None
    try:
        await d.warm(cluster, standin, args.jobs)
        for run in range(args.runs):
            for concurrency in args.concurrency:
                for contender in args.contenders:
                    plans = [(s, v) for s in args.stats for v in variants(args)]
                    for i, (stats, (_, env)) in enumerate(
                        plans if contender == "npcforge" else plans[:1]
                    ):
                        result = await d.drain(
                            cluster,
                            standin,
                            wd,
                            contender,
                            jobs=args.jobs,
                            concurrency=concurrency,
                            tag=f"r{run}c{concurrency}{contender}{i}",
                            analyze=stats == "analyzed",
                            env=env,
                        )
                        results.append({**result, "run": run})
                        h.say(d.one_line(result))
        if args.profile:
            profile = await run_profile(cluster, standin, wd, args)
    finally:
        standin.stop()
        h.remove_workdir(wd)
    note = (
        f"Workload: {args.jobs} NPCs (no shop, no keywords) queued by one UPDATE while the "
        f"worker is idle; stand-in delay {args.delay_ms:g} ms; {args.runs} run(s) per row, "
        "median (min–max)"
    )
    return {"results": results, "profile": profile, "notes": [note]}


async def run_profile(
    cluster: h.Cluster, standin: h.Process, wd: Any, args: argparse.Namespace
) -> str:
    """One npcforge run under py-spy (250 Hz, GIL samples): self time by function."""
    raw = wd / "profile.txt"
    h.say("w1: one npcforge run under py-spy (not counted)")
    await d.drain(
        cluster,
        standin,
        wd,
        "npcforge",
        jobs=args.jobs,
        concurrency=args.concurrency[0],
        tag="profile",
        env={"BENCH_PYSPY": str(raw)},
    )
    selfs: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines() if raw.exists() else []:
        stack, _, count = line.rpartition(" ")
        frame = stack.split(";")[-1]
        selfs[frame.split(" (")[0] + " (" + frame.rsplit("/", 1)[-1]] += int(count)
        total += int(count)
    lines = [f"{n / total:6.1%}  {frame}" for frame, n in selfs.most_common(40)] if total else []
    text = "\n".join(lines) or "py-spy wrote no profile"
    h.RESULTS_DIR.mkdir(exist_ok=True)
    (h.RESULTS_DIR / "w1-profile.txt").write_text(text + "\n")
    return text


def report(args: argparse.Namespace, data: dict[str, Any]) -> str:
    parts = [
        h.NOTE,
        "",
        data["environment"],
        "",
        d.results_table(data["results"]),
        "",
        d.ratios(data["results"], "jobs_per_s", higher_is_better=True),
        "",
        "How it is measured (`bench/_drain.py`):",
        "",
        d.METHOD,
        "",
        d.statement_table(data["results"]),
    ]
    if data.get("profile"):
        parts += [
            "",
            "Worker profile, self time by function (py-spy, GIL held):",
            "",
            "```",
            "\n".join(data["profile"].splitlines()[:25]),
            "```",
        ]
    return "\n".join(parts)


def parser(doc: str, jobs: int, concurrency: list[int], delay_ms: float) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--jobs", type=int, default=jobs)
    p.add_argument("--concurrency", type=int, nargs="+", default=concurrency)
    p.add_argument("--delay-ms", type=float, default=delay_ms)
    p.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    p.add_argument("--stats", nargs="+", choices=["none", "analyzed"], default=["none"])
    p.add_argument("--variant", nargs="*", default=[], help="NAME:VAR=VALUE,… (npcforge env)")
    p.add_argument("--profile", action="store_true")
    h.common_options(p)
    return p


if __name__ == "__main__":
    args = parser(__doc__ or "", 5000, [20, 50], 0.0).parse_args()
    title = "W1 throughput (one worker, instant upstream)"
    h.run_script("w1", title, args, measure, report)
