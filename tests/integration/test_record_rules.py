"""Record order and what TFS cannot express, on real PostgreSQL and through the worker.

Lists keep the order they were written in, also when a whole list is written in one statement
or transaction (created_at ties there, and ids are random); rows that break TFS's rules are
refused when written, and rows already stored fail their job with RECORD_INVALID naming each row.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from conftest import make_npcs
from npcforge.db.npcs import load_npc
from npcforge.generation.xmlrules import render_npc_xml
from npcforge.importer import insert_npc, parse_npc
from tfsoracle import assert_tfs_reads_as_meant
from workerkit import ScriptedProvider, running_worker, wait_status

CORPUS_DIR = Path(__file__).resolve().parents[1] / "corpus"
# Not in any sorted order, so neither names nor random ids can reproduce it by accident.
WARES = [f"{word} {n}" for n, word in enumerate(
    ["yew", "ash", "oak", "elm", "fir", "box", "bay", "fig", "nut", "rue", "sage", "tea",
     "rye", "hop", "kelp", "moss", "reed", "rush", "vine", "wort", "alder", "birch", "cedar",
     "larch", "maple"]
)]  # fmt: skip


def _parameter(xml: str, key: str) -> str:
    start = xml.index(f'<parameter key="{key}" value="') + len(f'<parameter key="{key}" value="')
    return xml[start : xml.index('"', start)]


async def _shop_npcs(conn: Any, count: int) -> list[uuid.UUID]:
    ids = await make_npcs(conn, count)
    await conn.execute(
        "UPDATE npcs SET shop_enabled = true, keywords_enabled = true WHERE id = ANY($1::uuid[])",
        ids,
    )
    return ids


async def test_items_written_in_one_transaction_keep_their_order_in_the_file(
    conn, db_dsn, storage_dir
):
    first, second = await _shop_npcs(conn, 2)
    async with conn.transaction():
        # One statement for both NPCs, their rows interleaved: created_at is the same for all.
        await conn.execute(
            """
            INSERT INTO npc_shop_items (npc_id, list_type, name, item_id, price)
            SELECT CASE WHEN n % 2 = 0 THEN $1::uuid ELSE $2::uuid END, 'buy', w, 5000 + n, n
              FROM unnest($3::text[]) WITH ORDINALITY AS t(w, n)
             ORDER BY n
            """,
            first, second, WARES,
        )  # fmt: skip
        for npc_id in (first, second):
            for index, word in enumerate(reversed(WARES[:8])):
                keyword_id = await conn.fetchval(
                    "INSERT INTO npc_keywords (npc_id, response) VALUES ($1, $2) RETURNING id",
                    npc_id, f"About {word}.",
                )  # fmt: skip
                await conn.execute(
                    "INSERT INTO npc_keyword_phrases (keyword_id, npc_id, phrase)"
                    " SELECT $1, $2, p FROM unnest($3::text[]) AS p",
                    keyword_id, npc_id, [f"{word} tale", f"q{index}", f"{word} lore"],
                )  # fmt: skip
    async with running_worker(db_dsn, storage_dir):
        await conn.execute("SELECT npcforge_enqueue($1), npcforge_enqueue($2)", first, second)
        await wait_status(conn, first, "succeeded")
        await wait_status(conn, second, "succeeded")
    for npc_id, parity in ((first, 0), (second, 1)):
        xml = (storage_dir / "npc-xml-files" / f"{npc_id}.xml").read_text()
        wares = [w for n, w in enumerate(WARES, start=1) if n % 2 == parity]
        names = [entry.split(",")[0] for entry in _parameter(xml, "shop_buyable").split(";")]
        assert names == wares
        phrases = _parameter(xml, "keywords").split(";")
        assert phrases == [
            p
            for i, w in enumerate(reversed(WARES[:8]))
            for p in (f"{w} tale", f"q{i}", f"{w} lore")
        ]


async def test_a_bulk_replace_from_a_json_array_keeps_the_arrays_order(conn):
    """The system replaced writes whole lists from a JSON array in one INSERT … SELECT."""
    [npc_id] = await _shop_npcs(conn, 1)
    items = [{"name": w, "itemId": 3000 + i, "price": i} for i, w in enumerate(WARES)]
    await conn.execute(
        """
        INSERT INTO npc_shop_items (npc_id, list_type, name, item_id, price)
        SELECT $1, 'sell', e->>'name', (e->>'itemId')::int, (e->>'price')::int
          FROM jsonb_array_elements($2::jsonb) AS e
        """,
        npc_id, items,
    )  # fmt: skip
    npc = await load_npc(conn, npc_id)
    assert npc is not None
    assert [item.name for item in npc.sell_items] == WARES
    assert [item.id for item in npc.sell_items] == [
        row["id"]
        for row in await conn.fetch(
            "SELECT id FROM npc_shop_items WHERE npc_id = $1 ORDER BY position", npc_id
        )
    ]


async def test_the_sample_shape_with_tfs_tricks_becomes_a_file_tfs_reads_as_meant(
    conn, db_dsn, storage_dir, tmp_path
):
    data = json.loads((CORPUS_DIR / "11_sample_plus.json").read_text(encoding="utf-8"))
    npc_id = await insert_npc(conn, parse_npc(data))
    async with running_worker(db_dsn, storage_dir):
        await conn.execute("SELECT npcforge_enqueue($1)", npc_id)
        row = await wait_status(conn, npc_id, "succeeded", "failed")
    assert row["status"] == "succeeded", row["error"]
    xml = (storage_dir / "npc-xml-files" / f"{npc_id}.xml").read_text(encoding="utf-8")
    assert "vial of mana fluid,2006,20,vial of mana fluid,7" in xml
    assert "sudden death rune,2268,325,5" in xml
    assert "tibia" in xml and "anti%-venom" in xml and "100%%" in xml
    assert_tfs_reads_as_meant(xml, data, tmp_path)


async def test_stored_rows_tfs_cannot_express_fail_the_job_as_record_invalid(
    conn, db_dsn, storage_dir
):
    [npc_id] = await _shop_npcs(conn, 1)
    # What the schema allowed before, or another application wrote: a separator in a name (the
    # original system had no such CHECK), a fluid bought without its fluid type, and a phrase
    # stored while the shop was a trade window, which the talk mode now answers itself.
    await conn.execute("ALTER TABLE npc_shop_items DROP CONSTRAINT npc_shop_items_name_list_safe")
    comma = await conn.fetchval(
        "INSERT INTO npc_shop_items (npc_id, list_type, name, item_id, price)"
        " VALUES ($1, 'buy', 'rope, long', 2120, 9) RETURNING id",
        npc_id,
    )
    fluid = await conn.fetchval(
        "INSERT INTO npc_shop_items (npc_id, list_type, name, item_id, price)"
        " VALUES ($1, 'buy', 'bucket', 2005, 4) RETURNING id",
        npc_id,
    )
    keyword = await conn.fetchval(
        "INSERT INTO npc_keywords (npc_id, response) VALUES ($1, 'Buy what?') RETURNING id", npc_id
    )
    phrase = await conn.fetchval(
        "INSERT INTO npc_keyword_phrases (keyword_id, npc_id, phrase) VALUES ($1, $2, 'buy')"
        " RETURNING id",
        keyword, npc_id,
    )  # fmt: skip
    await conn.execute("UPDATE npcs SET shop_mode = 'talk_mode' WHERE id = $1", npc_id)
    provider = ScriptedProvider()
    async with running_worker(db_dsn, storage_dir, provider=provider, max_attempts=3):
        await conn.execute("SELECT npcforge_enqueue($1)", npc_id)
        row = await wait_status(conn, npc_id, "failed", "succeeded")
    assert row["status"] == "failed"
    error = row["error"]
    assert error["code"] == "RECORD_INVALID"
    rows = error["details"]["rows"]
    assert {(r["table"], r["id"], r["column"]) for r in rows} >= {
        ("npc_shop_items", str(comma), "name"),
        ("npc_shop_items", str(fluid), "subtype"),
        ("npc_keyword_phrases", str(phrase), "phrase"),
    }
    named = {r["id"]: r["problem"] for r in rows}
    assert "list separator" in named[str(comma)]
    assert "fluid container" in named[str(fluid)]
    assert 'answers itself ("buy")' in named[str(phrase)]
    assert str(comma) in error["message"] or str(fluid) in error["message"]
    assert row["attempts"] == 1  # permanent: never retried
    assert provider.calls == 0  # no model asked for a file that cannot be right
    attempts = await conn.fetch(
        "SELECT outcome, error_code FROM npc_generation_attempts WHERE npc_id = $1", npc_id
    )
    assert [(a["outcome"], a["error_code"]) for a in attempts] == [("failed", "RECORD_INVALID")]
    assert not (storage_dir / "npc-xml-files" / f"{npc_id}.xml").exists()


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("INSERT INTO npc_shop_items (npc_id, list_type, name, item_id, price, real_name)"
         " VALUES ($1, 'buy', 'helmet', 2498, 9, 'royal, old')", "npc_shop_items_real_name_list_safe"),
        ("INSERT INTO npc_shop_items (npc_id, list_type, name, item_id, price, subtype, charges)"
         " VALUES ($1, 'buy', 'rune', 2268, 9, 2, 3)", "npc_shop_items_one_subtype"),
        ("INSERT INTO npc_keyword_phrases (keyword_id, npc_id, phrase) SELECT id, npc_id, ' Bye '"
         " FROM npc_keywords WHERE npc_id = $1", 'answers itself ("bye")'),
        ("INSERT INTO npc_keyword_phrases (keyword_id, npc_id, phrase) SELECT id, npc_id, 'es'"
         " FROM npc_keywords WHERE npc_id = $1", 'says "yes"'),
    ],
    ids=["separator in a real name", "subtype and charges differ", "a farewell word",
         "inside yes"],
)  # fmt: skip
async def test_new_writes_tfs_cannot_express_are_refused(conn, sql, fragment):
    [npc_id] = await _shop_npcs(conn, 1)
    await conn.execute("INSERT INTO npc_keywords (npc_id, response) VALUES ($1, 'r')", npc_id)
    with pytest.raises(asyncpg.CheckViolationError, match=re.escape(fragment)):
        await conn.execute(sql, npc_id)


async def test_talk_mode_words_are_refused_only_in_a_talk_mode_shop(conn):
    trade, talk = await _shop_npcs(conn, 2)
    await conn.execute("UPDATE npcs SET shop_mode = 'talk_mode' WHERE id = $1", talk)
    for npc_id in (trade, talk):
        await conn.execute("INSERT INTO npc_keywords (npc_id, response) VALUES ($1, 'r')", npc_id)
    insert = (
        "INSERT INTO npc_keyword_phrases (keyword_id, npc_id, phrase)"
        " SELECT id, npc_id, 'sell' FROM npc_keywords WHERE npc_id = $1"
    )
    await conn.execute(insert, trade)
    with pytest.raises(asyncpg.CheckViolationError, match="sell"):
        await conn.execute(insert, talk)


async def test_stored_breaking_rows_do_not_block_a_soft_delete(conn):
    [npc_id] = await _shop_npcs(conn, 1)
    keyword = await conn.fetchval(
        "INSERT INTO npc_keywords (npc_id, response) VALUES ($1, 'r') RETURNING id", npc_id
    )
    await conn.execute(
        "INSERT INTO npc_keyword_phrases (keyword_id, npc_id, phrase) VALUES ($1, $2, 'buy')",
        keyword, npc_id,
    )  # fmt: skip
    await conn.execute("UPDATE npcs SET shop_mode = 'talk_mode' WHERE id = $1", npc_id)
    await conn.execute("UPDATE npcs SET deleted_at = now() WHERE id = $1", npc_id)
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM npc_keyword_phrases WHERE npc_id = $1 AND deleted_at IS NOT NULL",
            npc_id,
        )
        == 1
    )


async def test_the_rendered_record_is_the_view_in_position_order(conn):
    """A list reordered by writing positions is rendered in the new order."""
    [npc_id] = await _shop_npcs(conn, 1)
    for i, word in enumerate(WARES[:4]):
        await conn.execute(
            "INSERT INTO npc_shop_items (npc_id, list_type, name, item_id, price)"
            " VALUES ($1, 'buy', $2, $3, 1)",
            npc_id, word, 4000 + i,
        )  # fmt: skip
    await conn.execute("UPDATE npc_shop_items SET position = -position WHERE npc_id = $1", npc_id)
    npc = await load_npc(conn, npc_id)
    assert npc is not None
    names = [
        entry.split(",")[0] for entry in _parameter(render_npc_xml(npc), "shop_buyable").split(";")
    ]
    assert names == list(reversed(WARES[:4]))
