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
from collections import Counter
from pathlib import Path
from typing import Any

import _drain as d
import _harness as h
import _processes as ps
from _report import page, say, table

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
    async def profile(wd: Path, standin: ps.Process) -> dict[str, Any]:
        """With `--profile`: one more npcforge run (and PGQueuer run, if it is a contender)
        under py-spy."""
        if not args.profile:
            return {}
        profiled = [c for c in ("npcforge", "pgqueuer") if c in args.contenders]
        found = await run_profile(cluster, standin, wd, args.jobs, args.concurrency[0], profiled)
        return {"profile": found}

    data = await d.measure_drains(cluster, args, plans(args), delay_ms=args.delay_ms, then=profile)
    note = (
        f"Workload: {args.jobs} NPCs (no shop, no keywords) queued by one UPDATE while the "
        f"worker is idle; stand-in delay {args.delay_ms:g} ms; {args.runs} run(s) per row, "
        "median (min–max)"
    )
    return {**data, "notes": [note]}


def report(args: argparse.Namespace, data: dict[str, Any]) -> str:
    profile = data.get("profile")
    return page(
        data,
        d.results_table(data["results"]),
        d.ratios(data["results"], "jobs_per_s", higher_is_better=True),
        "How it is measured (`bench/_drain.py`):",
        d.METHOD,
        d.statement_table(data["results"]),
        *([profile_text(profile)] if profile else []),
    )  # fmt: skip


# Where a profiled worker's time goes: each sample counts for the part of its innermost frame
# that names one (JSON inside aiohttp counts as JSON, expat inside validation as validation).
# py-spy writes frames as `function (module/path.py:line)`.
PARTS = {
    "XML validation and writing": ("(npcforge/generation/validator", "(npcforge/generation/xmlrules", "(npcforge/generation/recordcheck", "(npcforge/generation/listrules", "(npcforge/generation/tfs", "(npcforge/generation/stored_xml", "(xml/"),
    "prompt": ("(npcforge/generation/prompt",),
    "JSON": ("(json/", "json_bytes (", "json_value ("),
    "logging": ("(logging/", "(npcforge/logs"),
    "metrics": ("(prometheus_client/", "(npcforge/metrics"),
    "file storage": ("(npcforge/storage/", "(tempfile.py", "(pathlib.py", "(<frozen os>", "(shutil.py"),
    "asyncpg (SQL, pool)": ("(asyncpg/",),
    "aiohttp client": ("(aiohttp/", "(yarl/", "(multidict/"),
    "event loop and tasks": ("(asyncio/", "(uvloop/", "(concurrent/", "(threading.py"),
    "pgqueuer": ("(pgqueuer/",),
    "the rest of npcforge / the baseline's body": ("(npcforge/", "(_baselines.py"),
}  # fmt: skip


def part_of(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        for part, markers in PARTS.items():
            if any(marker in frame for marker in markers):
                return part
    return "other"


async def run_profile(
    cluster: h.Cluster, standin: ps.Process, wd: Path, jobs: int, concurrency: int,
    contenders: list[str],
) -> dict[str, Any]:  # fmt: skip
    """Each of `contenders` (npcforge, PGQueuer) one more run under py-spy (250 Hz, samples while
    the GIL is held): ms per job by part (PARTS), next to the run's measured worker CPU, and
    npcforge's self time by function (also in bench/results/w1-profile.txt)."""
    profile: dict[str, Any] = {"concurrency": concurrency, "parts": {}, "cpu": {}}
    for contender in contenders:
        raw = wd / f"profile-{contender}.txt"
        say(f"one {contender} run under py-spy (not counted)")
        env = {"BENCH_PYSPY": str(raw)}
        result = await d.drain(cluster, standin, wd, contender, jobs=jobs, concurrency=concurrency, tag=f"profile{contender}", env=env)  # fmt: skip
        profile["cpu"][contender] = result["cpu_ms_per_job"]
        parts: Counter[str] = Counter()
        selfs: Counter[str] = Counter()
        for line in raw.read_text().splitlines() if raw.exists() else []:
            stack, _, count = line.rpartition(" ")
            parts[part_of(stack)] += int(count)
            frame = stack.split(";")[-1]
            selfs[frame.split(" (")[0] + " (" + frame.rsplit("/", 1)[-1]] += int(count)
        profile["parts"][contender] = {k: n / 250 * 1000 / jobs for k, n in parts.items()}
        if contender == "npcforge":
            total = sum(selfs.values())
            profile["selfs"] = [[frame, n / total] for frame, n in selfs.most_common(40)]
    h.RESULTS_DIR.mkdir(exist_ok=True)
    (h.RESULTS_DIR / "w1-profile.txt").write_text(profile_text(profile) + "\n")
    return profile


def profile_text(profile: dict[str, Any]) -> str:
    """The profile's tables: worker time per job by part, npcforge's self time by function."""
    parts, cpu = profile["parts"], profile["cpu"]
    shown = list(parts)  # npcforge first, then PGQueuer when it ran
    names = sorted(set().union(*parts.values()), key=lambda k: (-parts["npcforge"].get(k, 0.0), k))
    rows = [[k, *(f"{parts[c].get(k, 0.0):.3f}" for c in shown)] for k in names]
    rows.append(["**all samples (GIL held)**", *(f"{sum(parts[c].values()):.3f}" for c in shown)])  # fmt: skip
    for key, what in (("worker", "worker CPU of the profiled run (user + kernel)"), ("worker_sys", "of which kernel")):  # fmt: skip
        rows.append([what, *(f"{cpu[c].get(key, 0.0):.3f}" for c in shown)])
    selfs = "\n".join(f"{share:6.1%}  {frame}" for frame, share in profile.get("selfs", [])[:25])
    return (
        f"Worker profile at concurrency {profile['concurrency']} (py-spy, 250 Hz, samples while "
        "the GIL is held; each sample counted for the innermost frame's part), ms per job:\n\n"
        + table("|".join(["part", *(d.LABELS[c] for c in shown)]), rows)
        + "\n\nnpcforge, self time by function:\n\n```\n" + selfs + "\n```"
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
