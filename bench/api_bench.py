"""Polling throughput of the HTTP API against a trivial Starlette endpoint, in one run.

    python bench/api_bench.py [--duration 5] [--connections 32] [--rounds 3] [--no-docs]

Each contender is one server process on 127.0.0.1 while a load generator in another process
keeps N keep-alive HTTP/1.1 connections busy: `trivial` (a one-route Starlette app under
uvicorn answering `{"status":"ok"}`), and the shipped `npcforge api` (NPCFORGE_AUTH=jwt with an
HS256 secret, filesystem storage) answering GET /api/npcs/{npcId}/generation-jobs/{jobId} for a
`processing` job (token checked, one status read) and a `succeeded` one (its XML read from
storage and returned). The ratio of each to `trivial` goes to docs/benchmarks.md; target 0.5.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import socket
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import _harness as h
import _processes as ps
from _report import method, percentile, say, table

from apikit import SECRET, queue_job, set_status, token
from clikit import free_port
from npcforge.generation.xmlrules import render_npc_xml
from npcforge.importer import insert_npc, parse_npc

SAMPLE = h.REPO_DIR / "src" / "npcforge" / "data" / "sample_npc.json"


def serve_trivial(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def ping(_: Any) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/ping", ping)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def load(port: int, request: bytes, args: Any, queue: Any) -> None:
    """The load generator (its own process): `--connections` keep-alive connections, each
    sending `request` again as soon as the answer is read; latencies after the warm-up."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        start_at = loop.time() + args.warmup
        stop_at = start_at + args.duration
        latencies: list[float] = []
        errors = 0
        loop.call_at(start_at, queue.put, "measuring")

        async def connection() -> None:
            nonlocal errors
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            while (now := loop.time()) < stop_at:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                sizes = (int(x[15:]) for x in head.split(b"\r\n") if x[:15].lower() == b"content-length:")  # fmt: skip
                await reader.readexactly(next(sizes, 0))
                if loop.time() >= start_at:
                    latencies.append((loop.time() - now) * 1000)
                    errors += head[9:12] != b"200"
            writer.close()

        await asyncio.gather(*(connection() for _ in range(args.connections)))
        queue.put((latencies, errors))

    asyncio.run(run())


async def prepare(conn: Any, storage: Path) -> tuple[uuid.UUID, dict[str, str]]:
    """One owner's `processing` job and `succeeded` one (its XML stored): the path of each."""
    owner, paths = uuid.uuid4(), {"trivial": "/ping"}
    for status in ("processing", "succeeded"):
        npc = parse_npc({**json.loads(SAMPLE.read_text()), "name": f"Bench {status}", "ownerId": str(owner)})  # fmt: skip
        npc_id = await insert_npc(conn, npc)
        xml = render_npc_xml(npc.to_record()).encode() if status == "succeeded" else b""
        if xml:
            (storage / ps.BUCKET / f"{npc_id}.xml").write_bytes(xml)
        job_id = await queue_job(conn, npc_id)
        await set_status(conn, npc_id, status, size=len(xml))
        paths[status] = f"/api/npcs/{npc_id}/generation-jobs/{job_id}"
    return owner, paths


def measure_one(cluster: h.Cluster, kind: str, path: str, access: str, env: dict[str, str], wd: Path, args: Any) -> dict[str, Any]:  # fmt: skip
    port = free_port()
    if kind == "trivial":
        server = ps.spawn("trivial", [ps.PYTHON, __file__, "--serve-trivial", str(port)], cwd=wd)
    else:
        argv = [ps.PYTHON, "-m", "npcforge", "api", "--host", "127.0.0.1", "--port", str(port)]
        server = ps.spawn(kind, argv, cwd=wd, env=env)
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if time.monotonic() > deadline or not server.alive():
                raise RuntimeError(f"{kind} did not start:\n{server.log_tail()}")
            time.sleep(0.05)
        auth = f"Authorization: Bearer {access}\r\n" if kind != "trivial" else ""
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}\r\n".encode()
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        client = ctx.Process(target=load, args=(port, request, args, queue))
        client.start()
        assert queue.get(timeout=60) == "measuring"
        before = ps.proc_cpu(server.pid), cluster.cpu_seconds()
        latencies, errors = queue.get(timeout=args.duration + 60)
        server_cpu, pg_cpu = ps.proc_cpu(server.pid) - before[0], cluster.cpu_seconds() - before[1]
        client.join()
    finally:
        server.stop()
    n = max(len(latencies), 1)
    return {
        "kind": kind,
        "rps": len(latencies) / args.duration,
        "errors": errors,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "server_us": server_cpu / n * 1e6,
        "pg_us": pg_cpu / n * 1e6,
    }


async def measure(cluster: h.Cluster, args: argparse.Namespace) -> dict[str, Any]:
    await h.prepare_template(cluster)
    results = []
    with h.workdir("api") as wd:
        async with h.database(cluster, "api") as db:
            storage = ps.storage_root(wd)
            owner, paths = await prepare(db.conn, storage)
            env = {
                "DATABASE_URL": db.dsn,
                "NPCFORGE_AUTH": "jwt",
                "SUPABASE_JWT_SECRET": SECRET,
                "NPCFORGE_STORAGE": "filesystem",
                "NPCFORGE_STORAGE_DIR": str(storage),
                "NPCFORGE_LOG_LEVEL": "warning",
            }
            for index in range(args.rounds):
                for kind, path in paths.items():
                    result = await asyncio.to_thread(measure_one, cluster, kind, path, token(owner), env, wd, args)  # fmt: skip
                    results.append(result)
                    say(
                        f"round {index + 1} {kind:>10}: {result['rps']:8,.0f} req/s, server "
                        f"{result['server_us']:5.0f} µs/req, PostgreSQL {result['pg_us']:5.0f} µs"
                    )
    note = (
        f"Load: {args.connections} keep-alive connections for {args.duration:g} s after a "
        f"{args.warmup:g} s warm-up, {args.rounds} round(s) per contender, medians"
    )
    return {"results": results, "notes": [note]}


def report(args: argparse.Namespace, data: dict[str, Any]) -> str:
    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in data["results"] if r["kind"] == kind)

    rows, lowest = [], 1.0
    for kind in ("trivial", "processing", "succeeded"):
        ratio = med(kind, "rps") / med("trivial", "rps")
        lowest = min(lowest, ratio)
        cpu = med("trivial", "server_us") / (med(kind, "server_us") + med(kind, "pg_us"))
        errors = sum(r["errors"] for r in data["results"] if r["kind"] == kind)
        rows.append([f"`{kind}`", f"{med(kind, 'rps'):,.0f}", f"{med(kind, 'p50'):.1f}",
                     f"{med(kind, 'p99'):.1f}", errors, f"{med(kind, 'server_us'):.0f}",
                     f"{med(kind, 'pg_us'):.0f}", f"**{ratio:.2f}**", f"{cpu:.2f}"])  # fmt: skip
    header = (
        "contender|requests/s|p50 ms|p99 ms|non-200|server CPU µs/req|PostgreSQL CPU µs/req|"
        "ratio to trivial (req/s)|ratio to trivial (CPU)"
    )
    verdict = "meets" if lowest >= 0.5 else "misses"
    return "\n\n".join([
        data["environment"],
        method(__doc__ or ""),
        table(header, rows),
        f"Result: the API {verdict} the target of 0.5 (lowest ratio {lowest:.2f}).",
    ])  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-trivial"]:  # the trivial contender's own process
        serve_trivial(int(sys.argv[2]))
    else:
        options = {"--duration": 5.0, "--warmup": 1.0, "--connections": 32, "--rounds": 3}
        h.main("api", "API polling throughput", __doc__ or "", measure, report, options)
