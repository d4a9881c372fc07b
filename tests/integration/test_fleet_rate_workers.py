"""Several `npcforge worker` processes against one database and the OpenRouter stand-in.

The fleet-wide cap holds for all workers together, and a burst of 429s pauses every worker for
the Retry-After period. Each worker sends its own `X-Title` (APP_TITLE), so the stand-in's
request log shows who called when.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from itertools import pairwise
from pathlib import Path
from statistics import median
from typing import Any

from clikit import cli_env
from conftest import make_npcs, wait_for
from standins.openrouter import RecordedRequest, Reply, error_reply, openrouter_standin

WORKERS = 3


@contextlib.asynccontextmanager
async def worker_fleet(
    tmp_path: Path, db_dsn: str, base_url: str, *, concurrency: int, cap: int | None = None
) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    env = {"NPCFORGE_CONCURRENCY": str(concurrency)}
    if cap is not None:
        env["OPENROUTER_REQUESTS_PER_MINUTE"] = str(cap)
    procs: list[asyncio.subprocess.Process] = []
    logs = []
    (tmp_path / "storage" / "npc-xml-files").mkdir(parents=True, exist_ok=True)
    try:
        for index in range(WORKERS):
            log_path = tmp_path / f"worker-{index}.log"
            log_file = log_path.open("wb")
            logs.append((log_path, log_file))
            worker_env = cli_env(
                DATABASE_URL=db_dsn,
                NPCFORGE_PROVIDER="openrouter",
                OPENROUTER_API_KEY="sk-or-v1-fleet-test",
                OPENROUTER_BASE_URL=base_url,
                NPCFORGE_STORAGE="filesystem",
                NPCFORGE_STORAGE_DIR=str(tmp_path / "storage"),
                NPCFORGE_POLL_SECONDS="0.5",
                NPCFORGE_SHUTDOWN_SECONDS="2",
                APP_TITLE=f"worker-{index}",
                **env,
            )
            command = [sys.executable, "-m", "npcforge", "worker"]
            proc = await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.DEVNULL, stderr=log_file, env=worker_env
            )
            procs.append(proc)
        yield procs
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for _, log_file in logs:
            log_file.close()
    for (log_path, _), proc in zip(logs, procs, strict=True):
        assert proc.returncode == 0, log_path.read_text()[-3000:]


async def enqueue_all(conn: Any, count: int) -> list[Any]:
    ids = await make_npcs(conn, count)
    await conn.execute(
        "UPDATE npcs SET generation_job_status = 'queued' WHERE id = ANY($1::uuid[])", ids
    )
    return ids


async def all_succeeded(
    conn: Any, ids: Sequence[Any], procs: Sequence[asyncio.subprocess.Process], timeout: float
) -> None:
    async def done() -> bool:
        assert all(proc.returncode is None for proc in procs), "a worker exited early"
        counts = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE generation_job_status = 'succeeded') AS ok, "
            "count(*) FILTER (WHERE generation_job_status = 'failed') AS failed "
            "FROM npcs WHERE id = ANY($1::uuid[])",
            list(ids),
        )
        assert counts["failed"] == 0
        return counts["ok"] == len(ids)

    await wait_for(done, timeout=timeout, interval=0.1)


def most_in_window(times: Sequence[float], width: float) -> int:
    """The most requests that arrived within any half-open window [t, t + width)."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


def title(request: RecordedRequest) -> str:
    return request.headers.get("X-Title", "")


async def test_cap_holds_for_all_workers_together(conn, db_dsn, tmp_path):
    cap = 120  # per minute: one call every 0.5 s for the whole fleet
    ids = await enqueue_all(conn, 20)
    async with (
        openrouter_standin() as standin,
        worker_fleet(tmp_path, db_dsn, standin.base_url, concurrency=4, cap=cap) as procs,
    ):
        await all_succeeded(conn, ids, procs, timeout=40)
    calls = standin.completions()
    assert len(calls) == len(ids)
    assert {title(call) for call in calls} == {f"worker-{i}" for i in range(WORKERS)}
    times = [call.received_at for call in calls]
    per_second = cap / 60
    # Any 60 s window holds at most the cap, and so does any scaled-down window: the gate spaces
    # calls evenly (slots every 0.5 s). Arrivals lag their slots by a scheduling delay that varies
    # on a loaded machine, so a short window may catch one call more than its share, never two.
    # Without the gate the 12 slots of the fleet would send all 20 calls at once.
    assert most_in_window(times, 60.0) <= cap
    for width in (1.0, 2.0, 5.0, 8.0):
        assert most_in_window(times, width) <= width * per_second + 1, width
    # ... and the fleet uses what the cap allows instead of crawling.
    span = max(times) - min(times)
    assert (len(times) - 1) / span >= 0.85 * per_second


def storm_responder(standin: Any, *, after: int, retry_after: int, latency: float) -> Any:
    """Correct answers after `latency`, except: once `after` requests arrived and every worker
    was seen, every request in the next 0.3 s gets 429 with Retry-After."""
    state: dict[str, Any] = {"first_429": None, "limited": []}

    async def respond(request: RecordedRequest) -> Reply:
        first = state["first_429"]
        seen = {title(r) for r in standin.completions()}
        storming = first is not None and request.received_at - first < 0.3
        if first is None and len(standin.completions()) > after and len(seen) == WORKERS:
            state["first_429"] = request.received_at
            storming = True
        if storming:
            state["limited"].append(request)
            return error_reply(
                429,
                "Rate limit exceeded: free-models-per-min",
                metadata={"error_type": "rate_limit_exceeded"},
                headers={"Retry-After": str(retry_after)},
            )
        await asyncio.sleep(latency)
        return standin.default_reply(request)

    standin.responder = respond
    return state


async def test_429_burst_pauses_every_worker_for_retry_after(conn, db_dsn, tmp_path):
    pause = 2
    ids = await enqueue_all(conn, 100)
    async with (
        openrouter_standin() as standin,
        worker_fleet(tmp_path, db_dsn, standin.base_url, concurrency=2) as procs,
    ):
        state = storm_responder(standin, after=20, retry_after=pause, latency=0.1)
        await all_succeeded(conn, ids, procs, timeout=40)
    start = state["first_429"]
    assert start is not None
    calls = standin.completions()
    before = [c for c in calls if start - 0.5 <= c.received_at < start]
    assert {title(c) for c in before} == {f"worker-{i}" for i in range(WORKERS)}
    # Once the 429 is answered (and its NOTIFY delivered), no worker calls until Retry-After ran
    # out; 0.25 s covers the calls that were already on the wire.
    during = [c for c in calls if start + 0.25 <= c.received_at < start + pause - 0.05]
    assert during == [], [(title(c), round(c.received_at - start, 3)) for c in during]
    after = [c for c in calls if c.received_at >= start + pause - 0.05]
    assert {title(c) for c in after} == {f"worker-{i}" for i in range(WORKERS)}
    assert min(c.received_at for c in after) - start < pause + 1.0
    # The burst was one episode: every limited call came in before the pause took hold.
    assert all(r.received_at - start < 0.3 for r in state["limited"])


async def test_capped_fleet_pauses_then_resumes_at_a_reduced_rate(conn, db_dsn, tmp_path):
    pause, cap = 2, 600  # 10 calls per second for the fleet; half that after the 429
    ids = await enqueue_all(conn, 40)
    async with (
        openrouter_standin() as standin,
        worker_fleet(tmp_path, db_dsn, standin.base_url, concurrency=3, cap=cap) as procs,
    ):
        state = storm_responder(standin, after=12, retry_after=pause, latency=0.05)
        await all_succeeded(conn, ids, procs, timeout=40)
    start = state["first_429"]
    times = sorted(c.received_at for c in standin.completions())
    assert len(state["limited"]) == 1  # the cap had already spaced the next call past the pause
    assert [t for t in times if start < t < start + pause - 0.05] == []
    earlier = [t for t in times if t <= start]
    later = [t for t in times if t > start + pause - 0.05][:8]
    gaps_before = [b - a for a, b in pairwise(earlier[-8:])]
    gaps_after = [b - a for a, b in pairwise(later)]
    assert median(gaps_before) < 0.12
    assert median(gaps_after) > 0.17  # about 60 / 300 s, growing back by a call/min per success
