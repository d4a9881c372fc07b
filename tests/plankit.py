"""EXPLAIN ANALYZE of statements that change rows, for tests and for bench/."""

from __future__ import annotations

import json
from typing import Any


async def explain(conn: Any, sql: str, *args: Any, generic: bool = False) -> dict[str, Any]:
    """`sql`'s EXPLAIN (ANALYZE, BUFFERS) document in a transaction that is rolled back (ANALYZE
    runs the statement: a claim would claim); `generic` forces the generic plan."""
    tx = conn.transaction()
    await tx.start()
    try:
        if generic:
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        raw = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
    finally:
        await tx.rollback()
    return dict((json.loads(raw) if isinstance(raw, str) else raw)[0])


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan node and every node under it, depth first."""
    return [plan, *(node for child in plan.get("Plans", []) for node in nodes(child))]
