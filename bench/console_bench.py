"""Page times of the web console at 100 000 NPCs and 1 000 000 attempt rows.

    python bench/console_bench.py [--npcs 100000] [--attempts-per-npc 10] [--requests 200] [--write]

A throw-away embedded PostgreSQL gets the migrations, then NPCs spread over 1 000 owners (jobs
70 % succeeded, 15 % failed over five error codes, 10 % queued, 5 % processing, changed over the
last two days), ten attempt rows per NPC (model, tokens, cost) and two kept XML files for the
NPCs whose pages are read. Each page is then asked for `--requests` times in a row, after a
warm-up, through the real app (routing, authentication, templates, queries) in this process
over httpx's ASGI transport, as the service role (sees every NPC) and as one user (JWT). The
p50 / p95 / max per page go to stdout, and with --write to docs/benchmarks.md, section
"Console pages". The target is a p95 under 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt

from npcforge.api.app import create_app
from npcforge.config import Settings
from npcforge.db.connect import create_pool
from npcforge.db.migrate import migrate
from npcforge.embedded import temporary_postgres
from npcforge.storage.filesystem import FilesystemStorage

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
START, END = "<!-- console-bench:start -->", "<!-- console-bench:end -->"
SECRET = "console-bench-secret-" + "x" * 40
OWNERS = 1000
CODES = ["AI_TIMEOUT", "AI_INVALID_XML", "LIMIT_EXCEEDED", "AI_UPSTREAM", "STORAGE_ERROR"]

SEED = """
WITH owners AS (
  INSERT INTO profiles (id, display_name)
  SELECT gen_random_uuid(), 'owner ' || g FROM generate_series(1, $2) AS g
  RETURNING id
), numbered AS (
  SELECT id, row_number() OVER () AS k FROM owners
)
INSERT INTO npcs (owner_id, name, walk_interval, health_now, health_max, look_type, look_type_id,
  greet_message, farewell_message, decline_message, no_shop_message, on_close_shop_message)
SELECT o.id, 'Guard ' || g, 2000, 100, 100, 'monster', 21, 'Halt, |PLAYERNAME|!', 'Move along.',
       'No.', 'No shop.', 'Bye.'
  FROM generate_series(1, $1) AS g
  JOIN numbered o ON o.k = 1 + g % $2
"""

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


def token(sub: uuid.UUID | None, role: str) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"iat": now, "exp": now + 3600, "aud": "authenticated", "role": role}
    if sub is not None:
        claims["sub"] = str(sub)
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def seed(conn: asyncpg.Connection, npcs: int, per_npc: int) -> None:
    steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("npcs", lambda: conn.execute(SEED, npcs, OWNERS)),
        ("jobs", lambda: conn.execute(JOBS, CODES)),
        ("spread", lambda: conn.execute(SPREAD)),
        ("attempts", lambda: conn.execute(ATTEMPTS, per_npc)),
        ("vacuum", lambda: conn.execute("VACUUM ANALYZE")),
    ]
    for name, step in steps:
        started = time.perf_counter()
        await step()
        print(f"  seeded {name} in {time.perf_counter() - started:.1f} s", flush=True)


async def measure(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], requests: int
) -> list[float]:
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


async def run(args: argparse.Namespace) -> list[tuple[str, str, list[float]]]:
    with temporary_postgres() as pg, tempfile.TemporaryDirectory() as tmp:
        conn = await asyncpg.connect(pg.dsn)
        await migrate(conn)
        print(f"seeding {args.npcs} NPCs, {args.npcs * args.attempts_per_npc} attempts", flush=True)
        await seed(conn, args.npcs, args.attempts_per_npc)
        sample = await conn.fetchrow(
            "SELECT id, owner_id FROM npcs WHERE generation_job_status = 'succeeded' LIMIT 1"
        )
        npc, owner = sample["id"], sample["owner_id"]
        for version in (1, 2):
            await conn.execute(
                "INSERT INTO npc_xml_versions (npc_id, job_id, xml, size_bytes) "
                "VALUES ($1, gen_random_uuid(), $2, 100)",
                npc, f'<npc name="Guard">\n  <health now="{version}" max="100"/>\n</npc>\n',
            )  # fmt: skip
        await conn.close()
        storage = FilesystemStorage(Path(tmp), "npc-xml-files")
        await storage.ensure_bucket()
        await storage.put(
            f"{npc}.xml", b'<npc name="Guard">\n  <health now="2" max="100"/>\n</npc>\n'
        )
        settings = Settings(
            DATABASE_URL=pg.dsn, NPCFORGE_AUTH="jwt", SUPABASE_JWT_SECRET=SECRET,
            SUPABASE_URL=None, NPCFORGE_JWKS_URL=None,
        )  # fmt: skip
        pool = await create_pool(pg.dsn, max_size=4)
        results: list[tuple[str, str, list[float]]] = []
        try:
            app = create_app(settings, storage=storage, pool=pool)
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://bench"
                ) as client:
                    service = {"Authorization": f"Bearer {token(None, 'service_role')}"}
                    user = {"Authorization": f"Bearer {token(owner, 'authenticated')}"}
                    first = await client.get("/console/jobs", headers=service)
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
                            times = await measure(client, url, headers, args.requests)
                            results.append((who, label, times))
                            print(f"  {who:12} {label:26} p50 {statistics.median(times):6.1f} ms"
                                  f"  p95 {p95(times):6.1f} ms  max {max(times):6.1f} ms", flush=True)  # fmt: skip
        finally:
            await pool.close()
        return results


def report(args: argparse.Namespace, results: list[tuple[str, str, list[float]]]) -> str:
    lines = [
        START,
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {platform.machine()}, Python "
        f"{platform.python_version()}, embedded PostgreSQL, shared 2-core machine: "
        f"{args.npcs:,} NPCs over {OWNERS:,} owners, {args.npcs * args.attempts_per_npc:,} attempt "
        f"rows; {args.requests} requests per page after a warm-up, one at a time, in-process "
        "(ASGI transport: routing, JWT check, queries, templates; no socket).",
        "",
        "| who | page | p50 ms | p95 ms | max ms |",
        "|---|---|---:|---:|---:|",
    ]
    for who, label, times in results:
        lines.append(
            f"| {who} | {label} | {statistics.median(times):.1f} | {p95(times):.1f} | "
            f"{max(times):.1f} |"
        )
    lines += ["", "Reproduce: `python bench/console_bench.py --write`.", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--npcs", type=int, default=100_000)
    parser.add_argument("--attempts-per-npc", type=int, default=10)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    text = report(args, results)
    print(text)
    if args.write:
        doc = DOC.read_text("utf-8")
        if START in doc:
            doc = doc[: doc.index(START)] + text + doc[doc.index(END) + len(END) :]
        else:
            doc += "\n## Console pages\n\n" + text + "\n"
        DOC.write_text(doc, "utf-8")


if __name__ == "__main__":
    main()
