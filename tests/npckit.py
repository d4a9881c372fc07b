"""Many NPC rows fast, for tests and for bench/: one set-based INSERT of small NPCs."""

from __future__ import annotations

import uuid
from typing import Any


async def make_npcs(conn: Any, count: int, *, prefix: str = "Guard") -> list[uuid.UUID]:
    """`count` small NPCs (no shop, no keywords) of a new owner, named "<prefix> 1".."<prefix> N"."""
    owner = uuid.uuid4()
    await conn.execute(
        "INSERT INTO profiles (id, display_name) VALUES ($1, $2)", owner, f"bulk {owner}"
    )
    rows = await conn.fetch(
        """
        INSERT INTO npcs (owner_id, name, walk_interval, health_now, health_max, look_type,
          look_type_id, greet_message, farewell_message, decline_message, no_shop_message,
          on_close_shop_message)
        SELECT $1, $3 || ' ' || g, 2000, 100, 100, 'monster', 21, 'Halt, |PLAYERNAME|!',
          'Move along.', 'No.', 'No shop.', 'Bye.'
          FROM generate_series(1, $2) AS g
        RETURNING id
        """,
        owner,
        count,
        prefix,
    )
    return [row["id"] for row in rows]
