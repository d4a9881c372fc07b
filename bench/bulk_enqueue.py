"""Bulk enqueue: notifications for a 10 000-row enqueue; the claim's cost with 1 000 000 queued.

    python bench/bulk_enqueue.py [--runs 3] [--rows 10000] [--queued 1000000]

Part 1 — one statement enqueues `--rows` jobs while a connection LISTENs on `npcforge_jobs`:
a plain UPDATE, an INSERT of already-queued rows, and `npcforge_enqueue()` over a set; for each,
the statement's time and the notifications that arrived (PGQueuer's batch enqueue alongside).

Part 2 — `--queued` rows are inserted already queued (autovacuum off on `npcs`, so no statistics
appear by themselves), then the worker's claim statement (claim_jobs, 20 rows) runs under
EXPLAIN (ANALYZE, BUFFERS) inside a rolled-back transaction: as a custom plan and as the generic
plan asyncpg's prepared statement may settle on, before and after ANALYZE. Also the client-timed
round trip of the real prepared claim, and the other per-poll queries (next_run_after,
queue_stats) at that depth. Results: stdout, bench/results/bulk-*.json and the bulk-enqueue
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import _harness as h
import asyncpg

from npcforge.db.queries import q

CLAIM_ARGS = (20, "bench-worker", 30.0, [])  # no owner is over a daily budget
# The other per-poll queries and their arguments.
POLL_QUERIES: dict[str, tuple[object, ...]] = {"next_run_after": ([],), "queue_stats": ()}


async def _notifications(dsn: str, channel: str, statement: Any) -> tuple[float, int]:
    received: list[str] = []
    listener = await asyncpg.connect(h.harness_dsn(dsn))
    await listener.add_listener(channel, lambda *a: received.append(a[3]))
    try:
        started = time.perf_counter()
        await statement()
        elapsed = (time.perf_counter() - started) * 1000
        await asyncio.sleep(1.0)
    finally:
        await listener.close()
    return elapsed, len(received)


async def part_notifications(cluster: h.Cluster, rows: int, run: int) -> dict[str, Any]:
    name = f"bulk_notify_{run}"
    dsn = await h.create_database(cluster, name)
    conn = await h.harness_connection(dsn)
    out: dict[str, Any] = {}
    try:
        await h.make_npcs(conn, rows)

        async def update() -> None:
            await conn.execute("UPDATE npcs SET generation_job_status = 'queued'")

        out["UPDATE … SET generation_job_status = 'queued' (all rows)"] = await _notifications(
            dsn, "npcforge_jobs", update
        )
        owner = await conn.fetchval("SELECT id FROM profiles LIMIT 1")

        async def insert() -> None:
            await conn.execute(
                """
                INSERT INTO npcs (owner_id, name, walk_interval, health_now, health_max, look_type,
                  look_type_id, greet_message, farewell_message, decline_message,
                  no_shop_message, on_close_shop_message, generation_job_status)
                SELECT $1, 'Queued ' || g, 2000, 100, 100, 'monster', 21, 'Hi.', 'Bye.', 'No.', 'No shop.',
                  'Bye.', 'queued'
                  FROM generate_series(1, $2) AS g
                """,
                owner,
                rows,
            )

        out["INSERT … generation_job_status = 'queued' (new rows)"] = await _notifications(
            dsn, "npcforge_jobs", insert
        )
        await conn.execute(
            "UPDATE npcs SET generation_job_status = 'succeeded' WHERE name LIKE 'Bench %'"
        )

        async def function() -> None:
            await conn.execute("SELECT npcforge_enqueue(id) FROM npcs WHERE name LIKE 'Bench %'")

        out["SELECT npcforge_enqueue(id) FROM npcs (set)"] = await _notifications(
            dsn, "npcforge_jobs", function
        )

        from pgqueuer import AsyncpgDriver, Queries
        from pgqueuer.domain.settings import db_settings

        plain = await asyncpg.connect(h.harness_dsn(dsn))
        try:
            queries = Queries(AsyncpgDriver(plain))

            async def pgqueuer_enqueue() -> None:
                await queries.enqueue(["npc_xml"] * rows, [b"x"] * rows, [0] * rows)

            out["PGQueuer queries.enqueue(list of rows)"] = await _notifications(
                dsn, str(db_settings().channel), pgqueuer_enqueue
            )
        finally:
            await plain.close()
    finally:
        await conn.close()
        await h.drop_database(cluster, name)
    return out


def _explain_ms(plan: Any) -> tuple[float, float]:
    top = plan[0] if isinstance(plan, list) else plan
    return float(top["Planning Time"]), float(top["Execution Time"])


def _plan_shape(node: dict[str, Any], depth: int = 0) -> list[str]:
    label = node["Node Type"]
    if node.get("Index Name"):
        label += f" using {node['Index Name']}"
    elif node.get("Relation Name"):
        label += f" on {node['Relation Name']}"
    if "Actual Rows" in node:
        label += f" (rows {node['Actual Rows']:g}"
        if node.get("Sort Method"):
            label += f", {node['Sort Method']}"
        label += ")"
    lines = ["  " * depth + label]
    for child in node.get("Plans", []):
        lines.extend(_plan_shape(child, depth + 1))
    return lines


async def _explain(conn: Any, sql: str, args: tuple[Any, ...], generic: bool) -> dict[str, Any]:
    """EXPLAIN ANALYZE in a transaction that is rolled back: the claim changes rows."""
    tr = conn.transaction()
    await tr.start()
    try:
        await conn.execute(
            f"SET LOCAL plan_cache_mode = {'force_generic_plan' if generic else 'auto'}"
        )
        plan = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
    finally:
        await tr.rollback()
    import json

    document = json.loads(plan) if isinstance(plan, str) else plan
    planning, execution = _explain_ms(document)
    return {
        "planning_ms": planning,
        "execution_ms": execution,
        "shape": _plan_shape(document[0]["Plan"]),
    }


async def _claim_round_trip(conn: Any, repeats: int) -> list[float]:
    statement = await conn.prepare(q("claim_jobs"))
    times = []
    for _ in range(repeats):
        tr = conn.transaction()
        await tr.start()
        started = time.perf_counter()
        rows = await statement.fetch(*CLAIM_ARGS)
        times.append((time.perf_counter() - started) * 1000)
        await tr.rollback()
        assert len(rows) == CLAIM_ARGS[0]
    return times


async def part_claim(cluster: h.Cluster, queued: int, repeats: int) -> dict[str, Any]:
    name = "bulk_claim"
    dsn = await h.create_database(cluster, name)
    conn = await h.harness_connection(dsn)
    out: dict[str, Any] = {"queued": queued}
    try:
        await conn.execute("ALTER TABLE npcs SET (autovacuum_enabled = false)")
        owner = await conn.fetchval(
            "INSERT INTO profiles (id, display_name) VALUES (gen_random_uuid(), 'bulk') RETURNING id"
        )
        started = time.perf_counter()
        batch = 200_000
        for offset in range(0, queued, batch):
            await conn.execute(
                """
                INSERT INTO npcs (owner_id, name, walk_interval, health_now, health_max, look_type,
                  look_type_id, greet_message, farewell_message, decline_message,
                  no_shop_message, on_close_shop_message, generation_job_status)
                SELECT $1, 'Bulk ' || g, 2000, 100, 100, 'monster', 21, 'Hi.', 'Bye.', 'No.', 'No shop.',
                  'Bye.', 'queued'
                  FROM generate_series($2::int, $3::int) AS g
                """,
                owner,
                offset + 1,
                min(offset + batch, queued),
            )
            h.say(f"bulk: inserted {min(offset + batch, queued):,} queued rows")
        out["insert_s"] = time.perf_counter() - started
        out["table_mb"] = await conn.fetchval("SELECT pg_total_relation_size('npcs') / 1048576.0")
        for stats in ("no ANALYZE", "after ANALYZE"):
            if stats == "after ANALYZE":
                await conn.execute("ANALYZE npcs")
            section: dict[str, Any] = {}
            for generic in (False, True):
                runs = [
                    await _explain(conn, q("claim_jobs"), CLAIM_ARGS, generic)
                    for _ in range(repeats)
                ]
                section["generic" if generic else "custom"] = {
                    "planning_ms": [r["planning_ms"] for r in runs],
                    "execution_ms": [r["execution_ms"] for r in runs],
                    "shape": runs[-1]["shape"],
                }
            one = [
                await _explain(conn, q("claim_jobs"), (1, *CLAIM_ARGS[1:]), False)
                for _ in range(repeats)
            ]
            section["custom_limit_1"] = {
                "planning_ms": [r["planning_ms"] for r in one],
                "execution_ms": [r["execution_ms"] for r in one],
            }
            section["round_trip_ms"] = await _claim_round_trip(conn, repeats * 4)
            for other, args in POLL_QUERIES.items():
                runs = [await _explain(conn, q(other), args, False) for _ in range(3)]
                section[other] = {
                    "execution_ms": [r["execution_ms"] for r in runs],
                    "shape": runs[-1]["shape"],
                }
            out[stats] = section
            h.say(
                f"bulk: claim at {queued:,} queued, {stats}: custom "
                f"{statistics.median(section['custom']['execution_ms']):.3f} ms, generic "
                f"{statistics.median(section['generic']['execution_ms']):.3f} ms, round trip "
                f"{statistics.median(section['round_trip_ms']):.3f} ms"
            )
    finally:
        await conn.close()
        await h.drop_database(cluster, name)
    return out


def report(cluster: h.Cluster, args: argparse.Namespace, data: dict[str, Any]) -> str:
    notify_rows = []
    for label in data["notifications"][0]:
        runs = [run[label] for run in data["notifications"]]
        notify_rows.append(
            [
                label,
                h.summary([r[0] for r in runs], 1),
                h.summary([r[1] for r in runs], 0),
            ]
        )
    claim = data["claim"]
    claim_rows = []
    shapes = []
    for stats in ("no ANALYZE", "after ANALYZE"):
        section = claim[stats]
        for kind in ("custom", "generic"):
            claim_rows.append(
                [
                    f"claim_jobs (LIMIT 20), {kind} plan",
                    stats,
                    h.summary(section[kind]["planning_ms"], 3),
                    h.summary(section[kind]["execution_ms"], 3),
                ]
            )
            shapes.append(
                f"{stats}, {kind} plan:\n" + "\n".join("    " + s for s in section[kind]["shape"])
            )
        if "custom_limit_1" in section:
            claim_rows.append(
                [
                    "claim_jobs (LIMIT 1), custom plan",
                    stats,
                    h.summary(section["custom_limit_1"]["planning_ms"], 3),
                    h.summary(section["custom_limit_1"]["execution_ms"], 3),
                ]
            )
        claim_rows.append(
            [
                "claim_jobs (LIMIT 20), prepared, client round trip (asyncpg)",
                stats,
                "–",
                h.summary(section["round_trip_ms"], 3),
            ]
        )
        for other in POLL_QUERIES:
            claim_rows.append([other, stats, "–", h.summary(section[other]["execution_ms"], 3)])
    return "\n".join(
        [
            "> The machine is 2 shared cores: compare contenders within one run (ratios), not "
            "absolute numbers across runs.",
            "",
            h.environment_block(
                cluster,
                [
                    f"Part 1: {args.rows:,} rows per statement, {args.runs} run(s), median "
                    "(min–max); a LISTEN connection counts what arrives within 1 s of the commit",
                    f"Part 2: {claim['queued']:,} queued rows ({claim['table_mb']:.0f} MB with "
                    f"indexes, inserted in {claim['insert_s']:.0f} s), autovacuum off on `npcs`; "
                    f"EXPLAIN (ANALYZE, BUFFERS) {args.repeats}× each, in rolled-back "
                    "transactions",
                ],
            ),
            "",
            h.table(["one statement", "statement ms", "notifications received"], notify_rows),
            "",
            h.table(["query", "statistics", "planning ms", "execution ms"], claim_rows),
            "",
            "Plan shapes (last EXPLAIN of each):",
            "",
            "```",
            "\n".join(shapes),
            "```",
        ]
    )


async def measure(cluster: h.Cluster, args: argparse.Namespace) -> dict[str, Any]:
    await h.prepare_template(cluster, pgqueuer=True)
    notifications = []
    for run in range(args.runs):
        h.say(f"bulk: notifications, run {run + 1}/{args.runs}")
        notifications.append(await part_notifications(cluster, args.rows, run))
        for label, (ms, count) in notifications[-1].items():
            h.say(f"    {label}: {ms:.1f} ms, {count} notification(s)")
    claim = await part_claim(cluster, args.queued, args.repeats)
    return {"notifications": notifications, "claim": claim}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--queued", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5, help="EXPLAIN ANALYZE repetitions")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args(argv)

    with h.bench_cluster() as cluster:
        data = asyncio.run(measure(cluster, args))
        text = report(cluster, args, data)
    print(text)
    saved = h.save_results("bulk", {"args": vars(args), **data})
    h.say(f"results: {saved}")
    if not args.no_docs:
        h.update_docs_section(
            "bulk", "Bulk enqueue: notifications, and the claim at 1 000 000 queued", text
        )
        h.say(f"updated {h.DOCS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
