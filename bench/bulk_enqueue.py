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
import statistics
import time
from typing import Any

import _drain as d
import _harness as h
import asyncpg
from _report import page, say, summary, table

from npcforge.db.queries import q
from npckit import make_owners, npcs_sql
from plankit import explain

CLAIM_ARGS = (20, "bench-worker", 30.0, [])  # no owner is over a daily budget


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

    async with h.database(cluster, f"bulk_notify_{run}", rows) as db:
        conn = db.conn
        plain, queries = await d.pgqueuer_queries(db.dsn)
        owners = await make_owners(conn)
        reset = "UPDATE npcs SET generation_job_status = 'succeeded' WHERE name LIKE 'Bench %';"
        statements = {  # label: (channel, the statement)
            "UPDATE … SET generation_job_status = 'queued' (all rows)": ("npcforge_jobs", lambda: conn.execute("UPDATE npcs SET generation_job_status = 'queued'")),
            "INSERT … generation_job_status = 'queued' (new rows)": ("npcforge_jobs", lambda: conn.execute(npcs_sql(status=True), owners, 1, rows, "Queued", "queued")),
            "SELECT npcforge_enqueue(id) FROM npcs (set)": ("npcforge_jobs", lambda: conn.execute(reset + "SELECT npcforge_enqueue(id) FROM npcs WHERE name LIKE 'Bench %'")),
            "PGQueuer queries.enqueue(list of rows)": (str(db_settings().channel), lambda: queries.enqueue(["npc_xml"] * rows, [b"x"] * rows, [0] * rows)),
        }  # fmt: skip
        out = {label: await notified(db.dsn, channel, run_it) for label, (channel, run_it) in statements.items()}  # fmt: skip
        await plain.close()
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
        top = await explain(conn, sql, *args, generic=generic)
        found["planning_ms"].append(top["Planning Time"])
        found["execution_ms"].append(top["Execution Time"])
        found["shape"] = shape(top["Plan"])
    return found


async def part_claim(cluster: h.Cluster, queued: int, repeats: int) -> dict[str, Any]:
    async with h.database(cluster, "bulk_claim") as db:
        conn = db.conn
        await conn.execute("ALTER TABLE npcs SET (autovacuum_enabled = false)")
        owners = await make_owners(conn)
        started = time.perf_counter()
        for offset in range(0, queued, 200_000):
            last = min(offset + 200_000, queued)
            await conn.execute(npcs_sql(status=True), owners, offset + 1, last, "Bulk", "queued")
            say(f"bulk: inserted {last:,} queued rows")
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
            custom = statistics.median(
                section["claim_jobs (LIMIT 20), custom plan"]["execution_ms"]
            )
            say(
                f"bulk: {stats}: custom {custom:.3f} ms, round trip {statistics.median(trips):.3f} ms"
            )
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
    notify = [[label, summary([r[label][0] for r in runs], 1), summary([r[label][1] for r in runs], 0)] for label in runs[0]]  # fmt: skip
    rows, shapes = [], []
    for stats in ("no ANALYZE", "after ANALYZE"):
        for name, found in data["claim"][stats].items():
            planning = summary(found["planning_ms"], 3) if found["planning_ms"] else "–"
            rows.append([name, stats, planning, summary(found["execution_ms"], 3)])
            if "LIMIT 20), " in name and "plan" in name:
                shapes.append(f"{stats}, {name}:\n" + "\n".join("    " + s for s in found["shape"]))
    return page(
        data,
        table("one statement|statement ms|notifications received", notify),
        table("query|statistics|planning ms|execution ms", rows),
        "Plan shapes (last EXPLAIN of each):",
        "```\n" + "\n".join(shapes) + "\n```",
    )


if __name__ == "__main__":
    title = "Bulk enqueue: notifications, and the claim at 1 000 000 queued"
    options = {"--runs": 3, "--rows": 10_000, "--queued": 1_000_000,
               "--repeats": {"type": int, "default": 5, "help": "EXPLAIN ANALYZE repetitions"}}  # fmt: skip
    h.main("bulk", title, __doc__ or "", measure, report, options)
