"""The chaos report: two tables (what came out, how fast it recovered), the facts of each
fault, the method; and the writer for its section of docs/reliability.md."""

from __future__ import annotations

import re
from typing import Any

import _analysis as a
import _harness as h

DOCS_FILE = h.REPO_DIR / "docs" / "reliability.md"
START_MARK = "<!-- chaos:start -->"
END_MARK = "<!-- chaos:end -->"
SECTION_TITLE = "Chaos under load (`bench/chaos`)"
# A new section goes before this heading when the markers are not there yet.
INSERT_BEFORE = "## Known gap"


def _num(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "–" if value is None else f"{value:,.{digits}f}{suffix}"


def _share(value: float | None, baseline: float | None) -> float | None:
    return None if value is None or not baseline else value / baseline


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"× {value:.2f}"


def verdict(result: dict[str, Any]) -> list[str]:
    """What is wrong with a run; empty when every job succeeded exactly once."""
    audit = result["audit"]
    problems = []
    if audit["lost"]:
        problems.append(f"{audit['lost']} job(s) not succeeded: {audit['statuses']}")
    if audit["jobs_succeeded_twice"]:
        problems.append(f"{audit['jobs_succeeded_twice']} job(s) with two `succeeded` attempts")
    if audit["late_writes"]:
        problems.append(f"{audit['late_writes']} file(s) written after their job's publish commit")
    if audit["missing_files"] or audit["size_mismatches"]:
        problems.append(
            f"{audit['missing_files']} succeeded job(s) without a file, "
            f"{audit['size_mismatches']} with a size other than content_size_bytes"
        )
    if audit["npcs_with_two_job_ids"]:
        problems.append(f"{audit['npcs_with_two_job_ids']} NPC(s) with attempts under two job ids")
    if audit["upload_events_overflowed"]:
        problems.append("the inotify queue overflowed: upload counts are incomplete")
    if result["unexpected_exits"]:
        problems.append(f"{len(result['unexpected_exits'])} worker exit(s) nobody asked for")
    if not result["scenario"]["crash"] and audit["extra_generations"]:
        problems.append(
            f"{audit['jobs_generated_twice']} job(s) generated again although nothing crashed"
        )
    reported = result["worker_log_counts"].get("action:succeeded", 0)
    succeeded = audit["statuses"].get("succeeded", 0)
    if reported > succeeded:
        # A SIGKILL after a commit can swallow a log line (fewer), never add one.
        problems.append(
            f"the workers logged {reported} `job succeeded` lines for {succeeded} succeeded "
            "jobs (a success counted twice in logs and metrics)"
        )
    return problems


def _interrupted(result: dict[str, Any]) -> str:
    count = result["audit"]["jobs_interrupted"]
    done = result["interrupted_done_s"]
    if not count or done is None:
        return str(count)
    return f"{count} ({done:.1f})" if done >= 0 else f"{count} (within the window)"


def outcome_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        audit = result["audit"]
        outcomes = audit["attempt_outcomes"]
        other = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()) if k != "succeeded")
        problems = verdict(result)
        rows.append(
            [
                f"`{result['scenario']['name']}`",
                f"{audit['jobs']:,}",
                f"{audit['statuses'].get('succeeded', 0):,}",
                audit["lost"],
                audit["jobs_succeeded_twice"],
                audit["late_writes"],
                f"{audit['jobs_generated_twice']} ({audit['extra_generations']})",
                f"{audit['jobs_uploaded_twice']} ({audit['extra_uploads']})",
                other or "–",
                len(result["unexpected_exits"]),
                "ok" if not problems else "**" + "; ".join(problems) + "**",
            ]
        )
    return h.table(
        [
            "scenario",
            "jobs",
            "succeeded",
            "lost",
            "succeeded twice",
            "written after publish",
            "generated twice (extra calls)",
            "uploaded twice (extra uploads)",
            "other attempt rows",
            "unasked worker exits",
            "verdict",
        ],
        rows,
    )


def recovery_table(results: list[dict[str, Any]], baseline: float) -> str:
    rows = []
    for result in results:
        tp = result["throughput"]
        fault = result["fault"]
        window = fault["end"] - fault["start"]
        no_fault = result["scenario"]["name"].startswith("baseline")
        recovered = tp["recovered_s"]
        rows.append(
            [
                f"`{result['scenario']['name']}`",
                "none" if no_fault else _num(window, 1),
                _num(tp["pre"], 0),
                _ratio(_share(tp["pre"], baseline)),
                _ratio(_share(tp["during"], baseline)),
                _ratio(_share(tp["after"], baseline)),
                _ratio(_share(tp["overall"], baseline)),
                _num(tp["first_after_s"], 2),
                _num(recovered, 1) if recovered is not None else "not within the load",
                _num(result["takeover_s"], 1),
                _interrupted(result),
            ]
        )
    return h.table(
        [
            "scenario",
            "fault window s",
            "jobs/s before fault",
            "before",
            "during",
            "after (10 s)",
            "whole drain",
            "first job done after fault end, s",
            "back to ≥ 80 % of before, s",
            "SIGKILL → its jobs requeued, s (max)",
            "interrupted jobs (last done, s after fault end)",
        ],
        rows,
    )


def facts_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for result in results:
        name = result["scenario"]["name"]
        if name.startswith("baseline"):
            continue
        facts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in result["fault"]["facts"].items())
        audit = result["audit"]
        lines.append(
            f"- `{name}`: {result['scenario']['summary']}. {facts}. Jobs retried (attempt count "
            f"> 1): {audit['jobs_retried']}; WORKER_LOST attempt rows: "
            f"{audit['worker_lost_attempts']}; wall {_num(result['wall_s'])} s; worker processes run: "
            f"{len(result['incarnations'])}; temporary files left in the bucket: "
            f"{audit['leftover_temp_files']}."
        )
    return lines


def method_notes(settings: dict[str, Any]) -> str:
    workers, concurrency = settings["workers"], settings["concurrency"]
    lease, poll = settings["lease_seconds"], settings["poll_seconds"]
    pre, post = settings["pre_s"], settings["post_s"]
    return f"""How it is measured (`bench/chaos/`):
- Load: per run a fresh database with N NPCs, queued by one `UPDATE npcs SET
  generation_job_status = 'queued'` while {workers} `python -m npcforge worker` processes
  (environment as in the benchmarks: `npcforge_worker_env`, openrouter provider at the LLM
  stand-in, filesystem storage) are connected and idle. Stand-in delay {settings["delay_ms"]:g} ms,
  its answers cached in advance. `NPCFORGE_CONCURRENCY={concurrency}` per worker (below the CPU
  limit of this machine, so the harness itself stays responsive), and for quick takeovers a short
  lease: `NPCFORGE_LEASE_SECONDS={lease:g}` (renewed every {lease / 3:.2g} s) and
  `NPCFORGE_POLL_SECONDS={poll:g}` (sweep and reaper interval). The fault starts {pre:g} s after
  the enqueue; N is sized from the first fault-free run's rate to last {pre:g} s + the fault +
  {post:g} s.
- Supervisor: a worker process that exits is started again after 0.1 s (systemd
  `Restart=always`, `RestartSec=100ms`), except in `kill-one`, where nothing is restarted and
  the surviving worker must finish everything. Unasked worker exits: processes that ended
  without a SIGKILL from the harness, or did not exit 0 on the final SIGTERM.
- lost: jobs not `succeeded` when the run ended (all jobs finished, or
  {settings["deadline_s"]:g} s after the fault ended); every row's final status is read.
- succeeded twice: jobs with more than one `succeeded` row in `npc_generation_attempts` (must be
  0). Written after publish: `{{npcId}}.xml` files whose mtime/ctime is later than the commit of
  the transaction that marked the job `succeeded` (`pg_xact_commit_timestamp` of the row; the
  cluster runs with `track_commit_timestamp = on`): an overwrite after publishing (must be 0).
  Every succeeded job's file must also exist with `content_size_bytes` bytes.
- generated twice: NPCs for which the stand-in received more than one chat completion (its
  arrival log, per NPC name); expected after a crash — a SIGKILLed worker's attempt runs again,
  and `stop -m immediate` can lose claims the workers commit asynchronously, so a claimed job
  is queued again — a finding otherwise. The workers' `job succeeded` log lines (all
  processes) must not outnumber the succeeded jobs. Uploaded twice: keys renamed into the bucket more than once (inotify
  `IN_MOVED_TO`, one per `FilesystemStorage.put`): the job's XML written again because the
  transaction around the first upload never committed (its worker was killed, or its connection
  cut, between the upload and the commit); the job still succeeds once.
- other attempt rows: outcomes besides `succeeded` (`retry` with WORKER_LOST: the reaper took a
  lapsed lease back; `discarded`: a result fenced off; `released`: handed back at shutdown).
- Rates: a job's completion time is the commit timestamp of its `succeeded` transaction. The
  reference is the mean of the two fault-free runs (`baseline` first, `baseline-end` last: the
  machine is shared), each measured without its first and last {a.STEADY_SKIP_S:g} s. Before =
  completions in the {a.PRE_WINDOW_S:g} s before the fault ÷ {a.PRE_WINDOW_S:g}; during = in the
  fault window ÷ its length (– when under 1 s); after = in the {a.AFTER_WINDOW_S:g} s from the
  fault's end, cut at the last completion (– when that leaves under 1 s); whole drain = the run measured like the
  reference. Ratios are to the reference.
- first job done after fault end: seconds to the next completion. Back to ≥ 80 %: seconds from
  the fault's end to the start of the first {a.RECOVERY_WINDOW_S:g} s window (slid in
  {a.RECOVERY_STEP_S:g} s steps) holding ≥ {a.RECOVERED_FRACTION:.0%} of the before rate; "not
  within the load" when the queue ran dry first (after `kill-one` one worker has half the slots,
  so it cannot get back to 80 % by design). SIGKILL → its jobs requeued: the longest time from a
  kill until the reaper had put back the last job the killed process held (its WORKER_LOST
  attempt row). Interrupted jobs: jobs with an attempt other than `succeeded` or a second model
  call; in brackets when the last of them succeeded, from the fault's end."""


def report(data: dict[str, Any]) -> str:
    results = data["results"]
    lines = [
        "> The machine is 2 shared cores: compare scenarios with the baseline of the same run "
        "(ratios), not absolute rates across runs.",
        "",
        data["environment"],
        "",
        "What came out (every row must be `succeeded` exactly once):",
        "",
        outcome_table(results),
        "",
        f"Throughput and recovery (ratios to the fault-free rate, {data['baseline_rate']:.0f} "
        "jobs/s: the mean of `baseline` and `baseline-end`):",
        "",
        recovery_table(results, data["baseline_rate"]),
        "",
        "What each fault did:",
        "",
        *facts_lines(results),
        "",
        method_notes(data["settings"]),
    ]
    return "\n".join(lines)


def update_docs(body: str) -> None:
    """Replace what is between the chaos markers; the first time, add the section (heading
    and markers) before INSERT_BEFORE. Text outside the markers is never touched."""
    block = f"{START_MARK}\n{body.strip()}\n{END_MARK}"
    text = DOCS_FILE.read_text()
    pattern = re.compile(re.escape(START_MARK) + r".*?" + re.escape(END_MARK), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        section = f"## {SECTION_TITLE}\n\n{block}\n\n"
        if INSERT_BEFORE in text:
            text = text.replace(INSERT_BEFORE, section + INSERT_BEFORE, 1)
        else:
            text = text.rstrip("\n") + "\n\n" + section
    DOCS_FILE.write_text(text)
