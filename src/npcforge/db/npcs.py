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


async def first_npc_id(conn: asyncpg.Connection) -> UUID | None:
    """The oldest NPC, if there is one."""
    npc_id: UUID | None = await conn.fetchval(q("first_npc"))
    return npc_id


async def insert_npc(
    conn: asyncpg.Connection, npc: NpcRecord, *, owner_id: UUID, owner_name: str
) -> UUID:
    """Insert the NPC with its shop items and keywords (its owner's profile too, if missing),
    all or nothing; the new id. Rows are inserted in the record's order, which their `position`
    default keeps."""
    look, msgs = npc.look, npc.messages
    async with conn.transaction():
        await conn.execute(q("insert_profile"), owner_id, owner_name)
        npc_id: UUID = await conn.fetchval(
            q("insert_npc"),
            owner_id, npc.name, npc.walk_interval, npc.floor_change, npc.health_now,
            npc.health_max, look.type, look.type_id, look.item_id, look.head, look.body,
            look.legs, look.feet, look.addons, look.mount, msgs.greet, msgs.farewell,
            msgs.decline, msgs.no_shop, msgs.on_close_shop, npc.focus_enabled,
            npc.travel_enabled, npc.voice_enabled, npc.shop_enabled, npc.shop_mode,
            npc.keywords_enabled,
        )  # fmt: skip
        if npc.shop_items:
            await conn.executemany(
                q("insert_shop_item"),
                [
                    (npc_id, i.list_type, i.name, i.item_id, i.price, i.subtype, i.charges,
                     i.real_name, i.container_item_id)
                    for i in npc.shop_items
                ],
            )  # fmt: skip
        for index, keyword in enumerate(npc.keywords):
            keyword_id = await conn.fetchval(q("insert_keyword"), npc_id, keyword.response, index)
            await conn.executemany(
                q("insert_keyword_phrase"),
                [(keyword_id, npc_id, phrase) for phrase in keyword.phrases],
            )
    return npc_id
