"""Bulk enqueue: notifications for a 10 000-row enqueue; the claim's cost with 1 000 000 queued.

    python bench/bulk_enqueue.py [--runs 3] [--rows 10000] [--queued 1000000]

Part 1: one statement enqueues `--rows` jobs while a connection LISTENs: a plain UPDATE, an
INSERT of already-queued rows, `npcforge_enqueue()` over a set, and PGQueuer's batch enqueue;
the statement's time and the notifications that arrived within 1 s.
Part 2: `--queued` rows inserted already queued (autovacuum off on `npcs`), then the worker's
claim (claim_jobs, 20 rows) under EXPLAIN (ANALYZE, BUFFERS) in rolled-back transactions, as a
custom and as a generic plan, before and after ANALYZE; the prepared claim's client round trip;
next_run_after and queue_stats at that depth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import _harness as h
import asyncpg

from npcforge.db.queries import q

CLAIM_ARGS = (20, "bench-worker", 30.0, [])  # no owner is over a daily budget
INSERT_QUEUED = """
INSERT INTO npcs (owner_id, name, walk_interval, health_now, health_max, look_type, look_type_id,
  greet_message, farewell_message, decline_message, no_shop_message, on_close_shop_message,
  generation_job_status)
SELECT $1, $4 || g, 2000, 100, 100, 'monster', 21, 'Hi.', 'Bye.', 'No.', 'No shop.', 'Bye.',
  'queued' FROM generate_series($2::int, $3::int) AS g
"""


async def notified(dsn: str, channel: str, statement: Any) -> tuple[float, int]:
    received: list[str] = []
    listener = await asyncpg.connect(h.harness_dsn(dsn))
    await listener.add_listener(channel, lambda *a: received.append(a[3]))
    started = time.perf_counter()
    await statement()
    elapsed = (time.perf_counter() - started) * 1000
    await asyncio.sleep(1.0)
    await listener.close()
    return elapsed, len(received)


async def part_notifications(cluster: h.Cluster, rows: int, run: int) -> dict[str, Any]:
    from pgqueuer import AsyncpgDriver, Queries
    from pgqueuer.domain.settings import db_settings

    dsn = await h.create_database(cluster, f"bulk_notify_{run}")
    conn = await h.harness_connection(dsn)
    plain = await asyncpg.connect(h.harness_dsn(dsn))
    queries = Queries(AsyncpgDriver(plain))
    await h.make_npcs(conn, rows)
    owner = await conn.fetchval("SELECT id FROM profiles LIMIT 1")
    statements = {
        "UPDATE … SET generation_job_status = 'queued' (all rows)": (
            "npcforge_jobs",
            lambda: conn.execute("UPDATE npcs SET generation_job_status = 'queued'"),
        ),
        "INSERT … generation_job_status = 'queued' (new rows)": (
            "npcforge_jobs",
            lambda: conn.execute(INSERT_QUEUED, owner, 1, rows, "Queued "),
        ),
        "SELECT npcforge_enqueue(id) FROM npcs (set)": (
            "npcforge_jobs",
            lambda: conn.execute(
                "UPDATE npcs SET generation_job_status = 'succeeded' WHERE name LIKE 'Bench %';"
                "SELECT npcforge_enqueue(id) FROM npcs WHERE name LIKE 'Bench %'"
            ),
        ),
        "PGQueuer queries.enqueue(list of rows)": (
            str(db_settings().channel),
            lambda: queries.enqueue(["npc_xml"] * rows, [b"x"] * rows, [0] * rows),
        ),
    }
    out = {
        label: await notified(dsn, channel, run_it)
        for label, (channel, run_it) in statements.items()
    }
    await plain.close()
    await conn.close()
    await h.drop_database(cluster, f"bulk_notify_{run}")
    return out


def shape(node: dict[str, Any], depth: int = 0) -> list[str]:
    text = node["Node Type"]
    text += (
        f" using {node['Index Name']}"
        if node.get("Index Name")
        else (f" on {node['Relation Name']}" if node.get("Relation Name") else "")
    )
    if "Actual Rows" in node:
        text += f" (rows {node['Actual Rows']:g}{', ' + node['Sort Method'] if node.get('Sort Method') else ''})"
    return ["  " * depth + text] + [x for c in node.get("Plans", []) for x in shape(c, depth + 1)]


async def explain(
    conn: Any, sql: str, args: tuple[Any, ...], generic: bool = False
) -> dict[str, Any]:
    """EXPLAIN ANALYZE in a rolled-back transaction (the claim changes rows)."""
    tr = conn.transaction()
    await tr.start()
    try:
        await conn.execute(
            f"SET LOCAL plan_cache_mode = {'force_generic_plan' if generic else 'auto'}"
        )
        plan = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
    finally:
        await tr.rollback()
    top = (json.loads(plan) if isinstance(plan, str) else plan)[0]
    return {
        "planning_ms": top["Planning Time"],
        "execution_ms": top["Execution Time"],
        "shape": shape(top["Plan"]),
    }


async def repeat(
    n: int, conn: Any, sql: str, args: tuple[Any, ...], generic: bool = False
) -> dict[str, Any]:
    runs = [await explain(conn, sql, args, generic) for _ in range(n)]
    return {
        "planning_ms": [r["planning_ms"] for r in runs],
        "execution_ms": [r["execution_ms"] for r in runs],
        "shape": runs[-1]["shape"],
    }


async def part_claim(cluster: h.Cluster, queued: int, repeats: int) -> dict[str, Any]:
    dsn = await h.create_database(cluster, "bulk_claim")
    conn = await h.harness_connection(dsn)
    await conn.execute("ALTER TABLE npcs SET (autovacuum_enabled = false)")
    owner = await conn.fetchval(
        "INSERT INTO profiles (id, display_name) VALUES (gen_random_uuid(), 'bulk') RETURNING id"
    )
    started = time.perf_counter()
    for offset in range(0, queued, 200_000):
        await conn.execute(INSERT_QUEUED, owner, offset + 1, min(offset + 200_000, queued), "Bulk ")
        h.say(f"bulk: inserted {min(offset + 200_000, queued):,} queued rows")
    out: dict[str, Any] = {"queued": queued, "insert_s": time.perf_counter() - started}
    out["table_mb"] = await conn.fetchval("SELECT pg_total_relation_size('npcs') / 1048576.0")
    claim = q("claim_jobs")
    for stats in ("no ANALYZE", "after ANALYZE"):
        if stats == "after ANALYZE":
            await conn.execute("ANALYZE npcs")
        section = {
            "claim_jobs (LIMIT 20), custom plan": await repeat(repeats, conn, claim, CLAIM_ARGS),
            "claim_jobs (LIMIT 20), generic plan": await repeat(
                repeats, conn, claim, CLAIM_ARGS, True
            ),
            "claim_jobs (LIMIT 1), custom plan": await repeat(
                repeats, conn, claim, (1, *CLAIM_ARGS[1:])
            ),
            "next_run_after": await repeat(3, conn, q("next_run_after"), ([],)),
            "queue_stats": await repeat(3, conn, q("queue_stats"), ()),
        }
        prepared, trips = await conn.prepare(claim), []
        for _ in range(repeats * 4):
            tr = conn.transaction()
            await tr.start()
            began = time.perf_counter()
            assert len(await prepared.fetch(*CLAIM_ARGS)) == CLAIM_ARGS[0]
            trips.append((time.perf_counter() - began) * 1000)
            await tr.rollback()  # the claim's rows stay queued
        section["claim_jobs (LIMIT 20), prepared, client round trip (asyncpg)"] = {
            "planning_ms": [],
            "execution_ms": trips,
            "shape": [],
        }
        out[stats] = section
        h.say(
            f"bulk: {stats}: custom {statistics.median(section['claim_jobs (LIMIT 20), custom plan']['execution_ms']):.3f} ms, round trip {statistics.median(trips):.3f} ms"
        )
    await conn.close()
    await h.drop_database(cluster, "bulk_claim")
    return out


async def measure(cluster: h.Cluster, args: argparse.Namespace) -> dict[str, Any]:
    await h.prepare_template(cluster, pgqueuer=True)
    notifications = [await part_notifications(cluster, args.rows, run) for run in range(args.runs)]
    claim = await part_claim(cluster, args.queued, args.repeats)
    notes = [
        f"Part 1: {args.rows:,} rows per statement, {args.runs} run(s), median (min–max)",
        f"Part 2: {claim['queued']:,} queued rows ({claim['table_mb']:.0f} MB with indexes, "
        f"inserted in {claim['insert_s']:.0f} s), autovacuum off on `npcs`; EXPLAIN (ANALYZE, "
        f"BUFFERS) {args.repeats}× each, in rolled-back transactions",
    ]
    return {"notifications": notifications, "claim": claim, "notes": notes}


def report(args: argparse.Namespace, data: dict[str, Any]) -> str:
    notify = [
        [
            label,
            h.summary([run[label][0] for run in data["notifications"]], 1),
            h.summary([run[label][1] for run in data["notifications"]], 0),
        ]
        for label in data["notifications"][0]
    ]
    rows, shapes = [], []
    for stats in ("no ANALYZE", "after ANALYZE"):
        for name, found in data["claim"][stats].items():
            rows.append(
                [
                    name,
                    stats,
                    h.summary(found["planning_ms"], 3) if found["planning_ms"] else "–",
                    h.summary(found["execution_ms"], 3),
                ]
            )
            if "LIMIT 20), " in name and "plan" in name:
                shapes.append(f"{stats}, {name}:\n" + "\n".join("    " + s for s in found["shape"]))
    return "\n".join(
        [
            h.NOTE,
            "",
            data["environment"],
            "",
            h.table("one statement|statement ms|notifications received", notify),
            "",
            h.table("query|statistics|planning ms|execution ms", rows),
            "",
            "Plan shapes (last EXPLAIN of each):",
            "",
            "```",
            "\n".join(shapes),
            "```",
        ]
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--queued", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=5, help="EXPLAIN ANALYZE repetitions")
    h.common_options(p)
    args = p.parse_args()
    h.run_script(
        "bulk",
        "Bulk enqueue: notifications, and the claim at 1 000 000 queued",
        args,
        measure,
        report,
    )
