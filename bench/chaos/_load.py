"""One chaos run: a fresh database, N NPCs, two supervised workers, one enqueuing UPDATE, a
fault injected while they drain it, and the audit of what came out.

The harness keeps one monitoring connection (as its own role, `bench-harness`), reconnecting
when a fault took it away. Nothing here changes how npcforge runs: the workers are plain
`python -m npcforge worker` processes configured by environment variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _harness as h
import _throughput as t
from _fleet import Fleet, WorkerSlot
from _uploads import UploadWatcher

from npcforge.db.connect import DB_UNAVAILABLE

BUCKET = "npc-xml-files"
PROGRESS_POLL_S = 0.25
RECONNECT_S = 60.0
# Connection trouble the monitor rides out (a restart, a terminated backend, no free slots):
# the same errors the worker itself treats as "the database cannot do this right now".
MONITOR_TROUBLE = DB_UNAVAILABLE


@dataclass(frozen=True)
class LoadSettings:
    jobs: int
    workers: int
    concurrency: int
    delay_ms: float
    lease_seconds: float
    poll_seconds: float
    deadline_s: float

    def worker_env(self, dsn: str, standin_url: str, storage: Path) -> dict[str, str]:
        env = h.npcforge_worker_env(dsn, standin_url, storage, self.concurrency)
        env.update(
            NPCFORGE_LEASE_SECONDS=f"{self.lease_seconds:g}",
            NPCFORGE_POLL_SECONDS=f"{self.poll_seconds:g}",
            NPCFORGE_SHUTDOWN_SECONDS="10",
        )
        return env


class StandInCache:
    """Warms the stand-in once per NPC name ("Bench N" is the same record in every run's
    database), so no run pays for the first rendering of a record and all runs compare."""

    def __init__(self, standin: h.StandInProcess) -> None:
        self.standin = standin
        self.warm: set[str] = set()

    async def cover(self, conn: Any) -> None:
        records = await t.prompt_records(conn)
        fresh = [(i, r) for i, r in records if json.loads(r)["name"] not in self.warm]
        if fresh:
            h.say(f"  warming the stand-in for {len(fresh)} new records")
            await t.warm_standin(self.standin, fresh)
            self.warm.update(json.loads(r)["name"] for _, r in fresh)


@dataclass
class ChaosRun:
    cluster: h.Cluster
    standin: h.StandInProcess
    cache: StandInCache
    workdir: Path
    name: str
    settings: LoadSettings
    restart: bool
    dsn: str = ""
    enqueued: float = 0.0
    fleet: Fleet = field(default_factory=lambda: Fleet([]))
    watcher: UploadWatcher | None = None
    _conn: Any = None

    @property
    def storage(self) -> Path:
        return self.workdir / self.name / "storage"

    # --- set-up and tear-down ------------------------------------------------------------

    async def prepare(self) -> None:
        """Database, NPCs, a warm stand-in, empty storage, workers connected and idle."""
        self.dsn = await h.create_database(self.cluster, self.name)
        conn = await self.db()
        await h.make_npcs(conn, self.settings.jobs)
        await self.cache.cover(conn)
        (self.storage / BUCKET).mkdir(parents=True)
        self.watcher = UploadWatcher(self.storage / BUCKET)
        self.watcher.start()
        env = self.settings.worker_env(self.dsn, self.standin.url, self.storage)
        logs = self.workdir / self.name
        self.fleet = Fleet(
            [
                WorkerSlot(f"worker-{chr(ord('a') + i)}", env, logs, restart=self.restart)
                for i in range(self.settings.workers)
            ]
        )
        self.fleet.start()
        await h.wait_for_backends(conn, "npcforge-listener", self.settings.workers)
        await h.wait_for_backends(conn, "npcforge-worker", self.settings.workers)
        await asyncio.sleep(0.5)  # the start-up sweeps have run; the workers are idle

    async def enqueue(self) -> None:
        await self.standin.reset()
        conn = await self.db()
        await conn.execute("UPDATE npcs SET generation_job_status = 'queued'")
        self.enqueued = time.time()

    async def close(self) -> None:
        await self.fleet.stop()
        if self.watcher is not None:
            await self.watcher.stop()
        if self._conn is not None:
            with contextlib.suppress(*MONITOR_TROUBLE):
                await self._conn.close()
            self._conn = None
        await h.drop_database(self.cluster, self.name)

    # --- the monitoring connection ----------------------------------------------------------

    async def db(self) -> Any:
        """The harness's connection to the run's database, reconnected if a fault closed it."""
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        deadline = time.monotonic() + RECONNECT_S
        while True:
            try:
                self._conn = await h.harness_connection(self.dsn or self.cluster.dsn)
                return self._conn
            except MONITOR_TROUBLE as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the harness could not reconnect to {self.name} within {RECONNECT_S:g} s"
                    ) from exc
                await asyncio.sleep(0.2)

    async def query(self, sql: str, *args: Any) -> list[Any]:
        """fetch() through connection trouble: retried on a fresh connection."""
        while True:
            conn = await self.db()
            try:
                rows: list[Any] = await conn.fetch(sql, *args)
                return rows
            except MONITOR_TROUBLE:
                with contextlib.suppress(Exception):
                    conn.terminate()
                self._conn = None
                await asyncio.sleep(0.2)

    async def value(self, sql: str, *args: Any) -> Any:
        rows = await self.query(sql, *args)
        return rows[0][0] if rows else None

    async def held_by(self, pid: int) -> int:
        """Jobs in `processing` whose lease belongs to the worker process `pid`."""
        return int(
            await self.value(
                "SELECT count(*) FROM npcs WHERE generation_job_status = 'processing' "
                "AND generation_job_lease_owner LIKE '%:' || $1::text || ':%'",
                str(pid),
            )
        )

    # --- waiting ------------------------------------------------------------------------------

    async def wait_finished(self, fault: asyncio.Task[None]) -> bool:
        """Until every job is succeeded or failed and the fault is over, or until deadline_s
        after the fault is over."""
        deadline: float | None = None
        while True:
            if fault.done():
                fault.result()  # a fault that crashed is a harness error: raise it
                if deadline is None:
                    deadline = time.monotonic() + self.settings.deadline_s
                finished = await self.value(
                    "SELECT count(*) FROM npcs "
                    "WHERE generation_job_status IN ('succeeded', 'failed')"
                )
                if finished >= self.settings.jobs:
                    return True
                if time.monotonic() > deadline:
                    return False
            await asyncio.sleep(PROGRESS_POLL_S)

    # --- the audit ------------------------------------------------------------------------------

    async def audit(self) -> dict[str, Any]:
        """Final state of every row, attempts, generations, storage writes; completion times."""
        rows = await self.query(AUDIT_ROWS)
        attempts = await self.query(AUDIT_ATTEMPTS)
        arrivals = await self.standin.arrivals()
        assert self.watcher is not None
        uploads = self.watcher.uploads_per_key()

        statuses = Counter(row["status"] for row in rows)
        by_name = {row["name"]: row["id"] for row in rows}
        generations = Counter(by_name.get(name) for _, name in arrivals)
        unknown_generations = generations.pop(None, 0)

        outcomes = Counter(x["outcome"] for x in attempts)
        succeeded_attempts = Counter(x["npc_id"] for x in attempts if x["outcome"] == "succeeded")
        job_ids: dict[Any, set[Any]] = {}
        for x in attempts:
            job_ids.setdefault(x["npc_id"], set()).add(x["job_id"])
        worker_lost = sum(1 for x in attempts if x["error_code"] == "WORKER_LOST")

        bucket = self.storage / BUCKET
        late_writes: list[dict[str, Any]] = []
        missing_files = size_mismatch = 0
        for row in rows:
            if row["status"] != "succeeded":
                continue
            path = bucket / f"{row['id']}.xml"
            try:
                stat = path.stat()
            except FileNotFoundError:
                missing_files += 1
                continue
            if stat.st_size != row["size"]:
                size_mismatch += 1
            written = max(stat.st_mtime_ns, stat.st_ctime_ns) / 1e9
            if row["committed"] is not None and written > row["committed"]:
                late_writes.append(
                    {"npc_id": str(row["id"]), "after_commit_s": written - row["committed"]}
                )
        leftovers = sorted(p.name for p in bucket.iterdir() if not p.name.endswith(".xml"))

        done_at = {
            row["id"]: row["committed"] if row["committed"] is not None else row["finished"]
            for row in rows
            if row["status"] == "succeeded"
        }
        # Jobs a fault got in the way of: an attempt that did not succeed, or a second call.
        interrupted = {x["npc_id"] for x in attempts if x["outcome"] != "succeeded"}
        interrupted |= {npc for npc, n in generations.items() if n > 1}
        times = sorted(done_at.values())
        examples = []
        for npc in sorted(interrupted, key=str)[:5]:
            name = next(n for n, i in by_name.items() if i == npc)
            examples.append(
                {
                    "npc_id": str(npc),
                    "model_calls_at": [at for at, n in arrivals if n == name],
                    "attempts": [
                        {k: x[k] for k in ("job_id", "attempt", "worker_id", "outcome",
                                           "error_code", "started", "finished")}
                        for x in attempts
                        if x["npc_id"] == npc
                    ],
                    "succeeded_at": done_at.get(npc),
                }
            )  # fmt: skip
        return {
            "jobs": len(rows),
            "statuses": dict(statuses),
            "not_succeeded": [
                {"npc_id": str(r["id"]), "status": r["status"], "error": r["error"]}
                for r in rows
                if r["status"] != "succeeded"
            ][:20],
            "lost": len(rows) - statuses.get("succeeded", 0),
            "attempt_outcomes": dict(outcomes),
            "worker_lost_attempts": worker_lost,
            # (lost worker's id, when the reaper requeued its job) for every lapsed lease.
            "lapsed_leases": [
                (x["worker_id"], x["finished"])
                for x in attempts
                if x["error_code"] == "WORKER_LOST"
            ],
            "jobs_succeeded_twice": sum(1 for n in succeeded_attempts.values() if n > 1),
            "npcs_with_two_job_ids": sum(1 for ids in job_ids.values() if len(ids) > 1),
            "jobs_retried": sum(1 for r in rows if r["attempts"] > 1),
            "generations": sum(generations.values()),
            "jobs_generated_twice": sum(1 for n in generations.values() if n > 1),
            "extra_generations": sum(n - 1 for n in generations.values() if n > 1),
            "generations_unmatched": unknown_generations,
            "uploads": sum(uploads.values()),
            "jobs_uploaded_twice": sum(1 for n in uploads.values() if n > 1),
            "extra_uploads": sum(n - 1 for n in uploads.values() if n > 1),
            "upload_events_overflowed": self.watcher.overflowed,
            "late_writes": len(late_writes),
            "late_write_examples": late_writes[:5],
            "missing_files": missing_files,
            "size_mismatches": size_mismatch,
            "leftover_temp_files": len(leftovers),
            "jobs_interrupted": len(interrupted),
            "interrupted_examples": examples,
            "last_interrupted_done": max(
                (done_at[npc] for npc in interrupted if npc in done_at), default=None
            ),
            "completion_times": times,
        }

    def worker_log_counts(self) -> dict[str, int]:
        """How often the workers logged each action and each error type (all incarnations)."""
        counts: Counter[str] = Counter()
        for incarnation in self.fleet.incarnations():
            with contextlib.suppress(OSError):
                for raw in incarnation.process.log_path.read_text(errors="replace").splitlines():
                    try:
                        line = json.loads(raw)
                    except ValueError:
                        continue
                    if not isinstance(line, dict):
                        continue
                    if "action" in line:
                        counts[f"action:{line['action']}"] += 1
                    if "error" in line:
                        counts[f"error:{line['error']}"] += 1
                    if line.get("level") in ("error", "critical", "ERROR", "CRITICAL"):
                        counts["level:error"] += 1
        return dict(sorted(counts.items()))


AUDIT_ROWS = """
SELECT n.id, n.name, n.generation_job_status::text AS status, n.generation_job_id AS job_id,
       n.generation_job_attempts AS attempts, n.content_size_bytes AS size,
       n.generation_job_error AS error,
       extract(epoch FROM pg_xact_commit_timestamp(n.xmin))::float8 AS committed,
       extract(epoch FROM n.generation_job_finished_at)::float8 AS finished
  FROM npcs n
"""

AUDIT_ATTEMPTS = """
SELECT job_id, npc_id, attempt, worker_id, outcome, error_code,
       extract(epoch FROM started_at)::float8 AS started,
       extract(epoch FROM finished_at)::float8 AS finished
  FROM npc_generation_attempts
"""
