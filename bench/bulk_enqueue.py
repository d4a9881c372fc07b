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

import _drain as d
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
    """The statement's time (ms) and the notifications on `channel` that arrived within 1 s."""
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
    from pgqueuer.domain.settings import db_settings

    dsn = await h.create_database(cluster, f"bulk_notify_{run}")
    conn = await h.harness_connection(dsn)
    plain, queries = await d.pgqueuer_queries(dsn)
    await h.make_npcs(conn, rows)
    owner = await conn.fetchval("SELECT id FROM profiles LIMIT 1")
    reset = "UPDATE npcs SET generation_job_status = 'succeeded' WHERE name LIKE 'Bench %';"
    statements = {  # label: (channel, the statement)
        "UPDATE … SET generation_job_status = 'queued' (all rows)": ("npcforge_jobs", lambda: conn.execute("UPDATE npcs SET generation_job_status = 'queued'")),
        "INSERT … generation_job_status = 'queued' (new rows)": ("npcforge_jobs", lambda: conn.execute(INSERT_QUEUED, owner, 1, rows, "Queued ")),
        "SELECT npcforge_enqueue(id) FROM npcs (set)": ("npcforge_jobs", lambda: conn.execute(reset + "SELECT npcforge_enqueue(id) FROM npcs WHERE name LIKE 'Bench %'")),
        "PGQueuer queries.enqueue(list of rows)": (str(db_settings().channel), lambda: queries.enqueue(["npc_xml"] * rows, [b"x"] * rows, [0] * rows)),
    }  # fmt: skip
    out = {label: await notified(dsn, channel, run_it) for label, (channel, run_it) in statements.items()}  # fmt: skip
    await plain.close()
    await conn.close()
    await h.drop_database(cluster, f"bulk_notify_{run}")
    return out


def shape(node: dict[str, Any], depth: int = 0) -> list[str]:
    name, relation = node.get("Index Name"), node.get("Relation Name")
    text = node["Node Type"] + (f" using {name}" if name else f" on {relation}" if relation else "")
    if "Actual Rows" in node:
        text += f" (rows {node['Actual Rows']:g}{', ' + node['Sort Method'] if node.get('Sort Method') else ''})"  # fmt: skip
    return ["  " * depth + text] + [x for c in node.get("Plans", []) for x in shape(c, depth + 1)]


async def explained(conn: Any, n: int, sql: str, args: tuple[Any, ...], generic: bool = False) -> dict[str, Any]:  # fmt: skip
    """EXPLAIN ANALYZE `n` times, each in a rolled-back transaction (the claim changes rows)."""
    found: dict[str, Any] = {"planning_ms": [], "execution_ms": [], "shape": []}
    for _ in range(n):
        tr = conn.transaction()
        await tr.start()
        try:
            await conn.execute(f"SET LOCAL plan_cache_mode = {'force_generic_plan' if generic else 'auto'}")  # fmt: skip
            plan = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
        finally:
            await tr.rollback()
        top = (json.loads(plan) if isinstance(plan, str) else plan)[0]
        found["planning_ms"].append(top["Planning Time"])
        found["execution_ms"].append(top["Execution Time"])
        found["shape"] = shape(top["Plan"])
    return found


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
    queries = {  # label: (repetitions, statement, arguments, generic plan)
        "claim_jobs (LIMIT 20), custom plan": (repeats, claim, CLAIM_ARGS),
        "claim_jobs (LIMIT 20), generic plan": (repeats, claim, CLAIM_ARGS, True),
        "claim_jobs (LIMIT 1), custom plan": (repeats, claim, (1, *CLAIM_ARGS[1:])),
        "next_run_after": (3, q("next_run_after"), ([],)),
        "queue_stats": (3, q("queue_stats"), ()),
    }
    for stats in ("no ANALYZE", "after ANALYZE"):
        if stats == "after ANALYZE":
            await conn.execute("ANALYZE npcs")
        section = {name: await explained(conn, *how) for name, how in queries.items()}
        prepared, trips = await conn.prepare(claim), []
        for _ in range(repeats * 4):
            tr = conn.transaction()
            await tr.start()
            began = time.perf_counter()
            assert len(await prepared.fetch(*CLAIM_ARGS)) == CLAIM_ARGS[0]
            trips.append((time.perf_counter() - began) * 1000)
            await tr.rollback()  # the claim's rows stay queued
        trip = {"planning_ms": [], "execution_ms": trips, "shape": []}
        section["claim_jobs (LIMIT 20), prepared, client round trip (asyncpg)"] = trip
        out[stats] = section
        custom = statistics.median(section["claim_jobs (LIMIT 20), custom plan"]["execution_ms"])
        h.say(
            f"bulk: {stats}: custom {custom:.3f} ms, round trip {statistics.median(trips):.3f} ms"
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
    runs = data["notifications"]
    notify = [[label, h.summary([r[label][0] for r in runs], 1), h.summary([r[label][1] for r in runs], 0)] for label in runs[0]]  # fmt: skip
    rows, shapes = [], []
    for stats in ("no ANALYZE", "after ANALYZE"):
        for name, found in data["claim"][stats].items():
            planning = h.summary(found["planning_ms"], 3) if found["planning_ms"] else "–"
            rows.append([name, stats, planning, h.summary(found["execution_ms"], 3)])
            if "LIMIT 20), " in name and "plan" in name:
                shapes.append(f"{stats}, {name}:\n" + "\n".join("    " + s for s in found["shape"]))
    return h.page(
        data,
        h.table("one statement|statement ms|notifications received", notify),
        h.table("query|statistics|planning ms|execution ms", rows),
        "Plan shapes (last EXPLAIN of each):",
        "```\n" + "\n".join(shapes) + "\n```",
    )


if __name__ == "__main__":
    title = "Bulk enqueue: notifications, and the claim at 1 000 000 queued"
    options = {"--runs": 3, "--rows": 10_000, "--queued": 1_000_000,
               "--repeats": {"type": int, "default": 5, "help": "EXPLAIN ANALYZE repetitions"}}  # fmt: skip
    h.main("bulk", title, __doc__ or "", measure, report, options)
