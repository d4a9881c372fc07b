"""One chaos run's fleet: `npcforge worker` processes under a supervisor as systemd runs them, every
upload they make (inotify), the harness's connection that outlives faults, and the run's audit of
what came out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import math
import os
import signal
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _drain as d
import _harness as h
import _processes as ps

from npcforge.db.connect import DB_UNAVAILABLE


@dataclass
class Slot:
    """One supervised worker: every process it ran, and who ended which (by pid)."""

    name: str
    env: dict[str, str]
    cwd: Path
    restart: bool
    procs: list[ps.Process] = field(default_factory=list)
    ended_by: dict[int, str] = field(default_factory=dict)
    stopping: bool = False
    task: asyncio.Task[None] | None = None

    def spawn(self) -> None:
        self.procs.append(ps.spawn_worker(f"{self.name}-{len(self.procs) + 1}", self.cwd, self.env))

    async def supervise(self) -> None:
        """Started after the first `spawn`: each exit is followed by a new process after systemd's
        RestartSec (0.1 s), unless the slot does not restart or is stopping."""
        while True:
            while self.procs[-1].alive():
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            if self.stopping or not self.restart:
                return
            self.spawn()

    def kill(self) -> int | None:
        proc = self.procs[-1]
        if not proc.alive():
            return None
        self.ended_by[proc.pid] = "sigkill"
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        return proc.pid

    async def stop(self) -> None:
        self.stopping = True
        if self.procs[-1].alive():
            self.ended_by[self.procs[-1].pid] = "sigterm"
            await asyncio.to_thread(self.procs[-1].stop, 30.0)
        if self.task is not None:
            await self.task

    def unexpected(self) -> list[dict[str, Any]]:
        return [
            {"slot": self.name, "pid": p.pid, "exit": code, "log": p.log_tail(15)}
            for p in self.procs
            if (code := p.popen.poll()) is not None
            and (p.pid not in self.ended_by or (self.ended_by[p.pid] == "sigterm" and code != 0))
        ]


class Uploads:
    """inotify IN_MOVED_TO events in the bucket: FilesystemStorage.put renames one file per
    upload, so each event is one completed upload of `{npcId}.xml`."""

    def __init__(self, bucket: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, os.fsencode(bucket), 0x80) < 0:
            raise OSError(ctypes.get_errno(), "inotify failed: uploads cannot be counted")
        self.counts: Counter[str] = Counter()
        self.overflowed = False
        asyncio.get_running_loop().add_reader(self.fd, self.drain)

    def drain(self) -> None:
        """Every queued event; a read returns whole events only (inotify(7))."""
        with contextlib.suppress(BlockingIOError):
            while data := os.read(self.fd, 65536):
                offset = 0
                while offset < len(data):
                    _, mask, _, length = struct.unpack_from("iIII", data, offset)
                    self.overflowed |= bool(mask & 0x4000)
                    name = data[offset + 16 : offset + 16 + length].rstrip(b"\0")
                    if mask & 0x80 and name.endswith(b".xml"):
                        self.counts[os.fsdecode(name)] += 1
                    offset += 16 + length

    async def close(self) -> None:
        await asyncio.sleep(0.2)  # the last renames' events reach the queue
        self.drain()
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


# --- one run --------------------------------------------------------------------------------


@dataclass
class Run:
    cluster: h.Cluster
    standin: ps.Process
    dir: Path
    args: argparse.Namespace
    dsn: str
    conn: Any  # the harness's connection, replaced after a fault closed it (`db`)
    restart: bool
    enqueued: float = 0.0
    slots: list[Slot] = field(default_factory=list)

    async def db(self) -> Any:
        """The harness's connection, reconnected (for up to 60 s) after a fault closed it."""
        deadline = time.monotonic() + 60
        while self.conn.is_closed():
            try:
                self.conn = await h.harness_connection(self.dsn)
            except DB_UNAVAILABLE:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        return self.conn

    async def query(self, sql: str, *args: Any) -> list[Any]:
        while True:
            conn = await self.db()
            try:
                return list(await conn.fetch(sql, *args))
            except DB_UNAVAILABLE:
                conn.terminate()
                await asyncio.sleep(0.2)

    async def value(self, sql: str, *args: Any) -> Any:
        return (await self.query(sql, *args))[0][0]

    async def start(self, jobs: int) -> None:
        """Warm the stand-in for NPCs it has not seen, start the supervised workers, wait until
        they are idle, queue every NPC."""
        if jobs > self.args.warmed:
            await d.warm_standin(self.standin, await d.prompt_records(self.conn))
            self.args.warmed = jobs
        storage = ps.storage_root(self.dir)
        self.uploads = Uploads(storage / ps.BUCKET)
        env = {
            **ps.npcforge_env(self.dsn, self.standin.url, storage, self.args.concurrency),
            "NPCFORGE_LEASE_SECONDS": f"{self.args.lease_seconds:g}",
            "NPCFORGE_POLL_SECONDS": f"{self.args.poll_seconds:g}",
            "NPCFORGE_SHUTDOWN_SECONDS": "10",
        }
        self.slots = [
            Slot(f"worker-{'ab'[i] if i < 2 else i}", env, self.dir, self.restart)
            for i in range(self.args.workers)
        ]
        for slot in self.slots:
            slot.spawn()
            slot.task = asyncio.create_task(slot.supervise())
        await h.wait_for_workers(self.conn, len(self.slots))
        await self.standin.reset()
        await self.conn.execute("UPDATE npcs SET generation_job_status = 'queued'")
        self.enqueued = time.time()

    async def held_by(self, pid: int) -> int:
        return int(
            await self.value(
                "SELECT count(*) FROM npcs WHERE generation_job_status = 'processing' "
                "AND generation_job_lease_owner LIKE '%:' || $1::text || ':%'",
                str(pid),
            )
        )

    async def finished(self, fault: asyncio.Task[None], jobs: int) -> bool:
        deadline = None
        while True:
            if fault.done():
                fault.result()
                deadline = deadline or time.monotonic() + self.args.deadline
                done = await self.value(
                    "SELECT count(*) FROM npcs WHERE generation_job_status IN ('succeeded', 'failed')"
                )
                if done >= jobs:
                    return True
                if time.monotonic() > deadline:
                    return False
            await asyncio.sleep(0.25)

    async def audit(self) -> dict[str, Any]:
        rows = await self.query(AUDIT_ROWS)
        attempts = await self.query(AUDIT_ATTEMPTS)
        arrivals = await self.standin.bench_get("/_bench/arrivals")
        names = {r["name"]: r["id"] for r in rows}
        calls = Counter(names.get(n) for _, n in arrivals)
        statuses = Counter(r["status"] for r in rows)
        won = Counter(a["npc_id"] for a in attempts if a["outcome"] == "succeeded")
        job_ids: dict[Any, set[Any]] = {}
        for a in attempts:
            job_ids.setdefault(a["npc_id"], set()).add(a["job_id"])
        late = missing = 0
        done_at = {}
        for r in rows:
            if r["status"] == "succeeded":
                done_at[r["id"]] = r["committed"] or r["finished"]
                try:
                    st = (self.dir / "storage" / ps.BUCKET / f"{r['id']}.xml").stat()
                except FileNotFoundError:
                    missing += 1
                    continue
                missing += st.st_size != r["size"]
                late += max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 > (r["committed"] or math.inf)
        interrupted = {a["npc_id"] for a in attempts if a["outcome"] != "succeeded"}
        interrupted |= {npc for npc, n in calls.items() if n > 1 and npc}
        lapsed = [(a["worker_id"], a["finished"]) for a in attempts if a["error_code"] == "WORKER_LOST"]  # fmt: skip
        last = max((done_at[n] for n in interrupted if n in done_at), default=None)
        uploads = self.uploads.counts.values()
        # fmt: off
        return {
            "jobs": len(rows), "statuses": dict(statuses), "lapsed": lapsed,
            "lost": len(rows) - statuses.get("succeeded", 0),
            "attempt_outcomes": dict(Counter(a["outcome"] for a in attempts)),
            "succeeded_twice": sum(n > 1 for n in won.values()),
            "two_job_ids": sum(len(ids) > 1 for ids in job_ids.values()),
            "retried": sum(r["attempts"] > 1 for r in rows),
            "generated_twice": sum(n > 1 for npc, n in calls.items() if npc),
            "extra_calls": sum(n - 1 for npc, n in calls.items() if npc and n > 1),
            "uploaded_twice": sum(n > 1 for n in uploads),
            "extra_uploads": sum(n - 1 for n in uploads if n > 1),
            "overflowed": self.uploads.overflowed, "late_writes": late, "missing_files": missing,
            "interrupted": len(interrupted), "last_interrupted_done": last,
            "times": sorted(done_at.values()),
        }
        # fmt: on

    def logged_successes(self) -> int:
        logs = [proc.log_path for slot in self.slots for proc in slot.procs]
        return sum(p.read_text(errors="replace").count('"action":"succeeded"') for p in logs)


AUDIT_ROWS = """
SELECT n.id, n.name, n.generation_job_status::text AS status, n.generation_job_attempts AS attempts,
       n.content_size_bytes AS size,
       extract(epoch FROM pg_xact_commit_timestamp(n.xmin))::float8 AS committed,
       extract(epoch FROM n.generation_job_finished_at)::float8 AS finished
  FROM npcs n
"""
AUDIT_ATTEMPTS = """
SELECT job_id, npc_id, worker_id, outcome, error_code,
       extract(epoch FROM finished_at)::float8 AS finished
  FROM npc_generation_attempts
"""
