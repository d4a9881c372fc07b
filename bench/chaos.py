"""Chaos under load (issue 8): faults injected while supervised workers drain a W1-style queue.

    python bench/chaos.py [--scenarios kill-one kill-loop …] [--jobs N] [--no-docs]

A fault-free run, one run per scenario, another fault-free run; each on a fresh database of one
embedded PostgreSQL (fsync on, track_commit_timestamp on), one LLM stand-in (50 ms) and two
`python -m npcforge worker` processes restarted like systemd's `Restart=always` (0.1 s).
For each: jobs lost, succeeded twice, written after publish, generated or uploaded twice, every
row's final status, throughput before/during/after against the fault-free rate, recovery time.
Exit status 1 when a run lost a job, published one twice, generated one again without a crash,
logged a success twice or saw a worker die unasked. Results: the chaos section of
docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import math
import sys
from typing import Any

import _harness as h
import _processes as ps
from _faults import BASELINE, SCENARIOS, Scenario, until
from _fleet import Run
from _report import page, say, table

DOCS = h.REPO_DIR / "docs" / "reliability.md"
PRE_S, POST_S = 6.0, 15.0  # load before the fault; sized to last this long after it
PRE_WINDOW_S, AFTER_WINDOW_S, RECOVERY_WINDOW_S, RECOVERED = 4.0, 10.0, 1.0, 0.8


# --- rates ----------------------------------------------------------------------------------


def rate(times: list[float], start: float, end: float) -> float | None:
    if end - start < 1.0:
        return None
    return (bisect.bisect_left(times, end) - bisect.bisect_left(times, start)) / (end - start)


def recovered_after(times: list[float], fault_end: float, before: float | None) -> float | None:
    """Seconds to the first 1 s window at or after the fault's end holding ≥ 80 % of `before`."""
    start = fault_end
    while before and times and start <= times[-1] - RECOVERY_WINDOW_S + 0.05:
        got = bisect.bisect_left(times, start + RECOVERY_WINDOW_S) - bisect.bisect_left(
            times, start
        )
        if got >= RECOVERED * before * RECOVERY_WINDOW_S:
            return start - fault_end
        start += 0.05
    return None


async def run_one(cluster: h.Cluster, standin: ps.Process, args: argparse.Namespace, index: int,
                  name: str, scenario: Scenario, jobs: int) -> dict[str, Any]:  # fmt: skip
    log: dict[str, Any] = {"start": 0.0, "end": 0.0, "kills": [], "facts": {}}
    say(f"{name}: {jobs} jobs")
    with h.workdir(f"chaos-{index}") as wd:
        async with h.database(cluster, f"chaos_{index}", jobs) as db:
            run = Run(cluster, standin, wd, args, db.dsn, db.conn, scenario.restart)
            try:
                await run.start(jobs)
                await until(run.enqueued + PRE_S)
                fault = asyncio.create_task(scenario.inject(run, log))
                finished = await run.finished(fault, jobs)
                await asyncio.sleep(1.0)  # a late upload would land now
                await asyncio.gather(*(slot.stop() for slot in run.slots))
                await run.uploads.close()
                audit = await run.audit()
                logged = run.logged_successes()
                unexpected = [x for slot in run.slots for x in slot.unexpected()]
                processes = sum(len(slot.procs) for slot in run.slots)
            finally:
                for slot in run.slots:
                    slot.stopping = True
                    slot.procs[-1].stop()
                run.conn.terminate()
    times, start, end = audit.pop("times"), log["start"], log["end"]
    takeover = [
        max(t for w, t in audit["lapsed"] if f":{pid}:" in w) - at
        for pid, at in log["kills"]
        if any(f":{pid}:" in w for w, _ in audit["lapsed"])
    ]
    pre = rate(times, max(run.enqueued, start - PRE_WINDOW_S), start)
    last = audit.pop("last_interrupted_done")
    after_end = min(end + AFTER_WINDOW_S, times[-1] if times else end)
    next_done = bisect.bisect_left(times, end)
    # fmt: off
    result = {
        "name": name, "summary": scenario.summary, "crash": scenario.crash, "jobs": jobs,
        "finished": finished, "fault_s": end - start, "facts": log["facts"], "audit": audit,
        "pre": pre, "during": rate(times, start, end), "after": rate(times, end, after_end),
        "overall": rate(times, run.enqueued + 1, times[-1] - 1) if times else None,
        "first_after_s": times[next_done] - end if next_done < len(times) else None,
        "recovered_s": recovered_after(times, end, pre), "takeover_s": max(takeover, default=None),
        "interrupted_done_s": None if last is None else last - end,
        "wall_s": times[-1] - run.enqueued if times else None, "processes": processes,
        "unexpected_exits": unexpected, "logged_successes": logged,
    }
    # fmt: on
    result["problems"] = verdict(result)
    a = result["audit"]
    say(
        f"  {name}: {a['jobs']} jobs, succeeded {a['statuses'].get('succeeded', 0)}, lost "
        f"{a['lost']}, succeeded twice {a['succeeded_twice']}, late writes {a['late_writes']}, "
        f"generated twice {a['generated_twice']}, uploaded twice {a['uploaded_twice']}, pre "
        f"{pre or 0:.0f}/s, after {result['after'] or 0:.0f}/s, recovered "
        f"{result['recovered_s']}, {'; '.join(result['problems']) or 'ok'}"
    )
    return result


def verdict(r: dict[str, Any]) -> list[str]:
    a, succeeded = r["audit"], r["audit"]["statuses"].get("succeeded", 0)
    checks = [
        (a["lost"], f"{a['lost']} job(s) not succeeded: {a['statuses']}"),
        (a["succeeded_twice"], f"{a['succeeded_twice']} job(s) with two `succeeded` attempts"),
        (a["late_writes"], f"{a['late_writes']} file(s) written after their publish commit"),
        (a["missing_files"], f"{a['missing_files']} succeeded job(s) without their file"),
        (a["two_job_ids"], f"{a['two_job_ids']} NPC(s) with attempts under two job ids"),
        (a["overflowed"], "the inotify queue overflowed: upload counts are incomplete"),
        (r["unexpected_exits"], f"{len(r['unexpected_exits'])} worker exit(s) nobody asked for"),
        (not r["crash"] and a["extra_calls"], f"{a['generated_twice']} job(s) generated again although nothing crashed"),
        (r["logged_successes"] > succeeded, f"{r['logged_successes']} `job succeeded` log lines for fewer succeeded jobs"),
    ]  # fmt: skip
    return [text for failed, text in checks if failed]


async def measure(cluster: h.Cluster, args: argparse.Namespace) -> dict[str, Any]:
    args.warmed = 0
    results: list[dict[str, Any]] = []
    plan = [("baseline", BASELINE), *((n, SCENARIOS[n]) for n in args.scenarios), ("baseline-end", BASELINE)]  # fmt: skip
    async with h.standin_session(cluster, "chaos", args.delay_ms) as (_, standin):
        for index, (name, scenario) in enumerate(plan):
            rate_now = results[0]["overall"] if results else None
            planned = math.ceil((rate_now or 0) * (PRE_S + scenario.span_s + POST_S))
            jobs = args.jobs or (max(1000, min(40000, planned)) if rate_now else 6000)
            results.append(await run_one(cluster, standin, args, index, name, scenario, jobs))
    rates = [r["overall"] for r in (results[0], results[-1]) if r["overall"]]
    note = (
        f"Workload: {args.workers} workers × NPCFORGE_CONCURRENCY={args.concurrency}, stand-in "
        f"delay {args.delay_ms:g} ms, NPCFORGE_LEASE_SECONDS={args.lease_seconds:g}, "
        f"NPCFORGE_POLL_SECONDS={args.poll_seconds:g}; jobs per run in the tables"
    )
    return {"results": results, "baseline_rate": sum(rates) / max(len(rates), 1), "notes": [note]}


def report(args: argparse.Namespace, data: dict[str, Any]) -> str:
    base = data["baseline_rate"]

    def ratio(value: float | None) -> str:
        return "–" if value is None or not base else f"× {value / base:.2f}"

    def num(value: float | None, digits: int = 1) -> str:
        return "–" if value is None else f"{value:,.{digits}f}"

    outcome, recovery, facts = [], [], []
    for r in data["results"]:
        a = r["audit"]
        other = ", ".join(f"{k} {v}" for k, v in a["attempt_outcomes"].items() if k != "succeeded")
        verdict = "**" + "; ".join(r["problems"]) + "**" if r["problems"] else "ok"
        recovered = "not within the load" if r["recovered_s"] is None else num(r["recovered_s"])
        # fmt: off
        outcome.append([f"`{r['name']}`", f"{a['jobs']:,}", a["statuses"].get("succeeded", 0),
                        a["lost"], a["succeeded_twice"], a["late_writes"],
                        f"{a['generated_twice']} ({a['extra_calls']})",
                        f"{a['uploaded_twice']} ({a['extra_uploads']})", other or "–",
                        len(r["unexpected_exits"]), verdict])
        recovery.append([f"`{r['name']}`", num(r["fault_s"]), num(r["pre"], 0), ratio(r["pre"]),
                         ratio(r["during"]), ratio(r["after"]), ratio(r["overall"]),
                         num(r["first_after_s"], 2), recovered, num(r["takeover_s"]),
                         f"{a['interrupted']} ({num(r['interrupted_done_s'])})"])
        # fmt: on
        if not r["name"].startswith("baseline"):
            said = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in r["facts"].items())
            facts.append(
                f"- `{r['name']}`: {r['summary']}. {said}. Jobs retried: {a['retried']}; "
                f"wall {num(r['wall_s'])} s; worker processes run: {r['processes']}."
            )
    outcome_table = table(
        "scenario|jobs|succeeded|lost|succeeded twice|written after publish|generated twice "
        "(extra calls)|uploaded twice (extra uploads)|other attempt rows|unasked worker exits|"
        "verdict",
        outcome,
    )
    recovery_table = table(
        "scenario|fault window s|jobs/s before fault|before|during|after (10 s)|whole drain|first "
        "job done after fault end, s|back to ≥ 80 % of before, s|SIGKILL → its jobs requeued, s "
        "(max)|interrupted jobs (last done, s after fault end)",
        recovery,
    )
    note = (
        "> The machine is 2 shared cores: compare scenarios with the baseline of the same run "
        "(ratios), not absolute rates across runs."
    )
    return page(
        data,
        "What came out (every row must be `succeeded` exactly once):",
        outcome_table,
        f"Throughput and recovery (ratios to the fault-free rate, {base:.0f} jobs/s: the mean of "
        "`baseline` and `baseline-end`):",
        recovery_table,
        "What each fault did:",
        "\n".join(facts),
        METHOD,
        note=note,
    )


METHOD = f"""How it is measured (`bench/chaos.py`):
- Load: a fresh database per run, its NPCs queued by one UPDATE while the workers are idle;
  N is sized from the first fault-free run's rate to last {PRE_S:g} s + the fault + {POST_S:g} s.
  The fault starts {PRE_S:g} s after the enqueue. A worker that exits is started again after
  0.1 s, except in `kill-one`.
- lost: rows not `succeeded` when every job finished or the deadline after the fault passed.
  Succeeded twice: two `succeeded` attempt rows. Written after publish: a file whose
  mtime/ctime is later than the commit of its `succeeded` row (`pg_xact_commit_timestamp`).
- generated twice: the stand-in got more than one call for an NPC (expected after a crash,
  a finding otherwise). Uploaded twice: more than one rename of the key into the bucket
  (inotify). The workers' `succeeded` log lines must not outnumber the succeeded jobs.
- Rates are of `succeeded` commits: before = the {PRE_WINDOW_S:g} s before the fault; during =
  the fault window (– under 1 s); after = {AFTER_WINDOW_S:g} s from its end; whole drain and the
  reference skip the first and last second. Recovered: the first 1 s window after the fault
  holding ≥ {RECOVERED:.0%} of the before rate. SIGKILL → requeued: from a kill to the reaper's
  last WORKER_LOST attempt row for that process."""


def main() -> int:
    def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
        if args.workers < 2 and "kill-one" in args.scenarios:
            parser.error("kill-one needs --workers 2 or more")

    options = {
        "--scenarios": {"nargs": "+", "default": list(SCENARIOS), "choices": list(SCENARIOS)},
        "--jobs": {"type": int, "help": "NPCs per run (default: sized from the baseline)"},
        "--workers": 2,
        "--concurrency": 8,
        "--delay-ms": 50.0,
        "--lease-seconds": 5.0,
        "--poll-seconds": 1.0,
        "--deadline": 120.0,
    }
    settings = {"track_commit_timestamp": "on"}
    data = h.main("chaos", "", __doc__ or "", measure, report, options, check=check, cluster_settings=settings, docs=DOCS)  # fmt: skip
    failed = [r["name"] for r in data["results"] if r["problems"]]
    if failed:
        say(f"problems in: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
