"""Loading NPC records and creating them from validated input."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

import asyncpg

from npcforge.db.queries import q
from npcforge.npc import Keyword, Look, Messages, NpcRecord, ShopItem


def record_from_row(row: Mapping[str, Any]) -> NpcRecord:
    look = Look(
        type=row["look_type"],
        type_id=row["look_type_id"],
        item_id=row["look_item_id"],
        head=row["look_head"],
        body=row["look_body"],
        legs=row["look_legs"],
        feet=row["look_feet"],
        addons=row["look_addons"],
        mount=row["look_mount"],
    )
    messages = Messages(
        greet=row["greet_message"],
        farewell=row["farewell_message"],
        decline=row["decline_message"],
        no_shop=row["no_shop_message"],
        on_close_shop=row["on_close_shop_message"],
    )
    shop_items = tuple(
        ShopItem(
            list_type=item["list_type"],
            name=item["name"],
            item_id=item["item_id"],
            price=item["price"],
            subtype=item["subtype"],
            charges=item["charges"],
            real_name=item["real_name"],
            container_item_id=item["container_item_id"],
            id=_row_id(item),
        )
        for item in row["shop_items"]
    )
    keywords = tuple(
        Keyword(
            response=kw["response"],
            phrases=tuple(kw["phrases"]),
            id=_row_id(kw),
            phrase_ids=tuple(UUID(phrase_id) for phrase_id in kw.get("phrase_ids", ())),
        )
        for kw in row["keywords"]
    )
    return NpcRecord(
        id=row["id"],
        owner_id=row["owner_id"],
        name=row["name"],
        script=row["script"],
        walk_interval=row["walk_interval"],
        floor_change=row["floor_change"],
        health_now=row["health_now"],
        health_max=row["health_max"],
        look=look,
        messages=messages,
        focus_enabled=row["focus_enabled"],
        travel_enabled=row["travel_enabled"],
        voice_enabled=row["voice_enabled"],
        shop_enabled=row["shop_enabled"],
        shop_mode=row["shop_mode"],
        keywords_enabled=row["keywords_enabled"],
        shop_items=shop_items,
        keywords=keywords,
    )


def _row_id(entry: Mapping[str, Any]) -> UUID | None:
    value = entry.get("id")
    return None if value is None else UUID(value)


async def load_npc(conn: asyncpg.Connection | asyncpg.Pool, npc_id: UUID) -> NpcRecord | None:
    row = await conn.fetchrow(q("load_npc"), npc_id)
    return None if row is None else record_from_row(row)
