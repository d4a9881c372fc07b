"""Page times of the web console at 100 000 NPCs and 1 000 000 attempt rows.

    python bench/console_bench.py [--npcs 100000] [--attempts-per-npc 10] [--requests 200]

A throw-away embedded PostgreSQL gets the migrations, then NPCs spread over 1 000 owners (jobs
70 % succeeded, 15 % failed over five error codes, 10 % queued, 5 % processing, changed over the
last two days), ten attempt rows per NPC (model, tokens, cost) and two kept XML files for the
NPCs whose pages are read. Each page is then asked for `--requests` times in a row, after a
warm-up, through the real app (routing, authentication, templates, queries) in this process
over httpx's ASGI transport, as the service role (sees every NPC) and as one user (JWT). The
p50 / p95 / max per page go to stdout and to docs/benchmarks.md, section "Console pages". The
target is a p95 under 50 ms.
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import _harness as h
import httpx
from _report import say, table

from apikit import api_harness, bearer, token
from npckit import make_owners, npcs_sql

OWNERS = 1000
CODES = ["AI_TIMEOUT", "AI_INVALID_XML", "LIMIT_EXCEEDED", "AI_UPSTREAM", "STORAGE_ERROR"]
XML = '<npc name="Guard">\n  <health now="{}" max="100"/>\n</npc>\n'

JOBS = """
UPDATE npcs SET
  generation_job_id = gen_random_uuid(),
  generation_job_status = (CASE WHEN r < 0.70 THEN 'succeeded' WHEN r < 0.85 THEN 'failed'
                                WHEN r < 0.95 THEN 'queued' ELSE 'processing' END)::generation_job_status,
  generation_job_error = CASE WHEN r >= 0.70 AND r < 0.85 THEN jsonb_build_object(
    'code', ($1::text[])[1 + floor(random() * 5)::int], 'message', 'it failed') END,
  generation_job_run_after = now() + interval '1 day',
  generation_job_attempts = 1 + floor(random() * 3)::int,
  content_size_bytes = 2400
  FROM (SELECT id AS rid, random() AS r FROM npcs) AS x
 WHERE npcs.id = x.rid
"""

# The trigger stamps each change with the clock; spread the changes over two days instead.
SPREAD = """
UPDATE npcs SET
  generation_job_started_at = t - interval '10 minutes',
  generation_job_claimed_at = t - interval '9 minutes',
  generation_job_finished_at = CASE WHEN generation_job_status IN ('succeeded', 'failed') THEN t END,
  generation_job_updated_at = t
  FROM (SELECT id AS rid, now() - random() * interval '2 days' AS t FROM npcs) AS x
 WHERE npcs.id = x.rid
"""

ATTEMPTS = """
INSERT INTO npc_generation_attempts (job_id, npc_id, attempt, worker_id, started_at, finished_at,
  outcome, error_code, model, request_id, prompt_tokens, completion_tokens, cost, duration_ms)
SELECT CASE WHEN a = $1 THEN n.generation_job_id ELSE gen_random_uuid() END, n.id, 1, 'bench',
       n.generation_job_updated_at - (a * interval '1 hour') - interval '4 seconds',
       n.generation_job_updated_at - (a * interval '1 hour'),
       CASE WHEN a % 7 = 3 THEN 'failed' ELSE 'succeeded' END,
       CASE WHEN a % 7 = 3 THEN 'AI_TIMEOUT' END,
       'openai/gpt-4o-mini', 'gen-' || md5(n.id::text || a), 900, 700, 0.00054, 4000
  FROM npcs n CROSS JOIN generate_series(1, $1) AS a
"""


async def seed(conn: Any, npcs: int, per_npc: int) -> tuple[Any, Any]:
    """The NPCs, jobs and attempts; one succeeded NPC (and its owner) with two kept XML files."""
    owners = await make_owners(conn, OWNERS)
    steps = [("npcs", npcs_sql(), owners, 1, npcs, "Guard"), ("jobs", JOBS, CODES),
             ("spread", SPREAD), ("attempts", ATTEMPTS, per_npc), ("vacuum", "VACUUM ANALYZE")]  # fmt: skip
    for name, sql, *args in steps:
        started = time.perf_counter()
        await conn.execute(sql, *args)
        say(f"  seeded {name} in {time.perf_counter() - started:.1f} s")
    npc, owner = await conn.fetchrow(
        "SELECT id, owner_id FROM npcs WHERE generation_job_status = 'succeeded' LIMIT 1"
    )
    for version in (1, 2):
        await conn.execute(
            "INSERT INTO npc_xml_versions (npc_id, job_id, xml, size_bytes) "
            "VALUES ($1, gen_random_uuid(), $2, 100)", npc, XML.format(version),
        )  # fmt: skip
    return npc, owner


async def timed(client: httpx.AsyncClient, url: str, headers: dict[str, str], requests: int) -> list[float]:  # fmt: skip
    for _ in range(max(10, requests // 10)):  # warm-up: prepared statements, plan caches
        answer = await client.get(url, headers=headers)
        assert answer.status_code == 200, (url, answer.status_code, answer.text[:300])
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        answer = await client.get(url, headers=headers)
        times.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200
    return times


def p95(times: list[float]) -> float:
    return statistics.quantiles(times, n=100)[94]


async def measure(cluster: h.Cluster, args: argparse.Namespace) -> dict[str, Any]:
    await h.prepare_template(cluster)
    results: list[tuple[str, str, list[float]]] = []
    with h.workdir("console") as wd:
        async with h.database(cluster, "console") as db:
            say(f"seeding {args.npcs} NPCs, {args.npcs * args.attempts_per_npc} attempts")
            npc, owner = await seed(db.conn, args.npcs, args.attempts_per_npc)
            async with api_harness(db.dsn, wd) as api:  # the test suite's: the real app in-process
                await api.storage.put(f"{npc}.xml", XML.format(2).encode())
                service, user = bearer(token(None, role="service_role")), bearer(token(owner))
                first = await api.client.get("/console/jobs", headers=service)
                cursor = re.search(r"cursor=([0-9a-f-]+)", first.text)
                assert cursor, "no next page on the jobs list"
                pages = [
                    ("overview", "/console"),
                    ("jobs, first page", "/console/jobs"),
                    ("jobs, page 2 (cursor)", f"/console/jobs?cursor={cursor.group(1)}"),
                    ("jobs, failed AI_TIMEOUT", "/console/jobs?status=failed&code=AI_TIMEOUT"),
                    ("jobs, name prefix", "/console/jobs?name=Guard%2012"),
                    ("NPC page", f"/console/npcs/{npc}"),
                ]
                for who, headers in (("service role", service), ("one user", user)):
                    for label, url in pages:
                        times = await timed(api.client, url, headers, args.requests)
                        results.append((who, label, times))
                        say(f"  {who:12} {label:26} p50 {statistics.median(times):6.1f} ms"
                              f"  p95 {p95(times):6.1f} ms  max {max(times):6.1f} ms")  # fmt: skip
    return {"results": results}


def report(args: argparse.Namespace, data: dict[str, Any]) -> str:
    rows = [
        [who, label, f"{statistics.median(t):.1f}", f"{p95(t):.1f}", f"{max(t):.1f}"]
        for who, label, t in data["results"]
    ]
    return f"""Measured {datetime.now(UTC):%Y-%m-%d} on {platform.machine()}, Python \
{platform.python_version()}, embedded PostgreSQL, shared 2-core machine: {args.npcs:,} NPCs over \
{OWNERS:,} owners, {args.npcs * args.attempts_per_npc:,} attempt rows; {args.requests} requests per \
page after a warm-up, one at a time, in-process (ASGI transport: routing, JWT check, queries, \
templates; no socket).

{table("who|page|p50 ms|p95 ms|max ms", rows).replace("|---|---|---|---|---|", "|---|---|---:|---:|---:|")}

Reproduce: `python bench/console_bench.py`."""


if __name__ == "__main__":
    options = {"--npcs": 100_000, "--attempts-per-npc": 10, "--requests": 200}
    h.main("console", "", __doc__ or "", measure, report, options, marker="console-bench")
