"""Many NPC rows fast, for tests and for bench/: one set-based INSERT of small NPCs."""

from __future__ import annotations

import uuid
from typing import Any

NPCS = """
INSERT INTO npcs (owner_id, name, walk_interval, health_now, health_max, look_type, look_type_id,
  greet_message, farewell_message, decline_message, no_shop_message, on_close_shop_message{})
SELECT ($1::uuid[])[1 + g % cardinality($1::uuid[])], $4 || ' ' || g, 2000, 100, 100, 'monster',
  21, 'Halt, |PLAYERNAME|!', 'Move along.', 'No.', 'No shop.', 'Bye.'{}
  FROM generate_series($2::int, $3::int) AS g
"""


def npcs_sql(status: bool = False) -> str:
    """The INSERT of small NPCs "<$4> <$2>".."<$4> <$3>" (no shop, no keywords), round robin over
    the owners $1; with `status`, each row is inserted as $5 (a queued row gets its job from the
    trigger, as any insert would)."""
    if status:
        return NPCS.format(", generation_job_status", ", $5::generation_job_status")
    return NPCS.format("", "")


async def make_owners(conn: Any, count: int = 1) -> list[uuid.UUID]:
    rows = await conn.fetch(
        "INSERT INTO profiles (id, display_name) SELECT u, 'bulk ' || u "
        "FROM (SELECT gen_random_uuid() AS u FROM generate_series(1, $1)) AS new RETURNING id",
        count,
    )
    return [row["id"] for row in rows]


async def make_npcs(
    conn: Any, count: int, *, prefix: str = "Guard", owners: int = 1, first: int = 1,
    status: str | None = None,
) -> list[uuid.UUID]:  # fmt: skip
    """`count` small NPCs named "<prefix> <first>".."<prefix> <first + count - 1>" of `owners` new
    owners (`npcs_sql`), inserted as `status` when one is given; their ids in name order."""
    args = [await make_owners(conn, owners), first, first + count - 1, prefix]
    if status:
        args.append(status)
    rows = await conn.fetch(npcs_sql(status=bool(status)) + "RETURNING id", *args)
    return [row["id"] for row in rows]
