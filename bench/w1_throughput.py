"""W1 throughput: N NPCs queued by one UPDATE, instant stand-in, one worker process.

    python bench/w1_throughput.py [--runs 3] [--jobs 5000] [--concurrency 20 50] [--profile]

For each run and concurrency: npcforge (the real `python -m npcforge worker`: openrouter provider
pointed at the stand-in, validation, filesystem storage, attempt rows, fenced finalize) without
and with ANALYZE after the bulk insert of the NPC rows; PGQueuer doing the minimal equivalent
body; npcforge's job body with no queue. Jobs/s from the enqueue's commit to the last durable
completion; worker/PostgreSQL/stand-in CPU per job; statements per job; the worker's peak RSS.
`--profile` adds one npcforge run under py-spy and summarises where the worker's time goes.
Results: stdout, bench/results/w1-*.json and the W1 section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import _harness as h
import _throughput as t
from _profile import summarise

CONTENDERS = ("npcforge", "pgqueuer", "noqueue")


async def measure(cluster: h.Cluster, args: argparse.Namespace) -> dict[str, Any]:
    await h.prepare_template(cluster, pgqueuer="pgqueuer" in args.contenders)
    wd = h.workdir("w1")
    standin = h.start_standin(wd, args.delay_ms)
    results: list[dict[str, Any]] = []
    profile_text = None
    try:
        dsn = await h.create_database(cluster, "warm")
        conn = await h.harness_connection(dsn)
        await h.make_npcs(conn, args.jobs)
        await t.warm_standin(standin, await t.prompt_records(conn))
        await conn.close()
        await h.drop_database(cluster, "warm")

        for run in range(args.runs):
            for concurrency in args.concurrency:
                for contender in args.contenders:
                    variants = (
                        [(s, v) for v in args.npcforge_variants for s in args.stats]
                        if contender == "npcforge"
                        else [("none", "default")]
                    )
                    for index, (stats, variant) in enumerate(variants):
                        tag = f"r{run}_c{concurrency}_{contender}_{stats}_{index}"
                        h.say(
                            f"w1: run {run + 1}/{args.runs} {contender} c={concurrency} {stats}"
                            f" {variant}"
                        )
                        if contender == "npcforge":
                            result = await t.run_npcforge(
                                cluster, standin, wd, jobs=args.jobs, concurrency=concurrency,
                                analyze=stats == "analyzed", tag=tag, variant=variant,
                            )  # fmt: skip
                        elif contender == "pgqueuer":
                            result = await t.run_pgqueuer(
                                cluster, standin, wd, jobs=args.jobs, concurrency=concurrency,
                                tag=tag,
                            )  # fmt: skip
                        else:
                            result = await t.run_noqueue(
                                cluster, standin, wd, jobs=args.jobs, concurrency=concurrency,
                                tag=tag,
                            )  # fmt: skip
                        result["run"] = run
                        results.append(result)
                        h.say(f"    {t.one_line(result)}")

        if args.profile:
            path = wd / "w1-profile.raw"
            concurrency = args.concurrency[0]
            h.say(f"w1: profiling npcforge c={concurrency} under py-spy")
            result = await t.run_npcforge(
                cluster, standin, wd, jobs=args.jobs, concurrency=concurrency, analyze=False,
                tag="profile", profile=path,
            )  # fmt: skip
            h.say(f"    {t.one_line(result)} (under py-spy, not counted)")
            if path.exists():
                profile_text = summarise(path, rate=250, jobs=args.jobs)
                h.RESULTS_DIR.mkdir(exist_ok=True)
                (h.RESULTS_DIR / "w1-profile.txt").write_text(profile_text + "\n")
                (h.RESULTS_DIR / "w1-profile.raw").write_bytes(path.read_bytes())
            else:
                h.say("    py-spy wrote no profile (see its log in the work dir)")
    finally:
        standin.stop()
        h.remove_workdir(wd)
    return {"results": results, "profile": profile_text, "workdir": str(wd)}


def report(
    cluster: h.Cluster | None,
    args: argparse.Namespace,
    data: dict[str, Any],
    environment: str | None = None,
) -> str:
    results = data["results"]
    lines = [
        "> The machine is 2 shared cores: compare contenders within one run (ratios), not "
        "absolute numbers across runs.",
        "",
        environment
        or h.environment_block(
            cluster,
            [
                f"Workload: {args.jobs} NPCs (small: no shop, no keywords) queued by one UPDATE "
                f"while the worker is idle; stand-in delay {args.delay_ms:g} ms; "
                f"{args.runs} run(s) per row, median (min–max)",
            ],
        ),
        "",
        t.results_table(results),
        "",
        t.ratios(results, key="jobs_per_s", higher_is_better=True),
        "",
        t.method_notes(),
    ]
    statements = t.statement_breakdown(results)
    if statements:
        lines += ["", statements]
    if data.get("profile"):
        lines += [
            "",
            f"Profile of one npcforge run (concurrency {args.concurrency[0]}, py-spy at 250 Hz, GIL-holding samples only, "
            "non-blocking; `bench/results/w1-profile.txt` has the full summary):",
            "",
            "```",
            "\n".join(data["profile"].splitlines()[:50]),
            "```",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument(
        "--stats", nargs="+", choices=["none", "analyzed"], default=["none", "analyzed"]
    )
    parser.add_argument(
        "--npcforge-variants",
        nargs="+",
        default=["default"],
        help="'default' (`npcforge worker` as shipped) and/or knob sets for "
        "bench/_experiment_worker.py, e.g. pool=20+noreset+uvloop",
    )
    parser.add_argument("--profile", action="store_true", help="one more npcforge run under py-spy")
    t.add_common_options(parser)
    args = parser.parse_args(argv)

    return t.run_script("w1", "W1 throughput (one worker, instant upstream)", args, measure, report)


if __name__ == "__main__":
    sys.exit(main())
