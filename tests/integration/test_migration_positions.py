"""Migration 0005 on a database that holds the original system's schema and data.

The tables there were not created by npcforge's 0001: they lack its CHECKs, carry the original
triggers (one refuses any change to a phrase under a deleted NPC), and hold rows written in
one transaction (equal created_at) and rows TFS cannot express. 0005 must apply there, number
the existing rows in the order they were read in until now without touching them otherwise, and
refuse only new writes that break the rules.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from npcforge.db.connect import connect
from npcforge.db.migrate import load_migrations
from npcforge.db.npcs import load_npc
from npcforge.embedded import EmbeddedPostgres
from npcforge.generation.recordcheck import record_problems

# The original system's tables as far as 0005 touches them (reference/original-design.md §1),
# with the triggers that make a careless migration fail or rewrite rows.
ORIGINAL_SCHEMA = """
CREATE TYPE npc_status AS ENUM ('draft', 'published');
CREATE TYPE npc_look_type AS ENUM ('player', 'monster', 'item');
CREATE TYPE npc_shop_mode AS ENUM ('trade_window', 'talk_mode');
CREATE TYPE npc_shop_item_list_type AS ENUM ('buy', 'sell');
CREATE TYPE generation_job_status AS ENUM ('queued', 'processing', 'succeeded', 'failed');
CREATE TABLE profiles (
  id uuid PRIMARY KEY, display_name text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE npcs (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  owner_id uuid NOT NULL REFERENCES profiles (id),
  client_request_id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
  status npc_status NOT NULL DEFAULT 'draft',
  name text NOT NULL, script text NOT NULL DEFAULT 'default.lua',
  walk_interval integer NOT NULL, floor_change boolean NOT NULL DEFAULT false,
  health_now integer NOT NULL, health_max integer NOT NULL,
  look_type npc_look_type NOT NULL, look_type_id integer, look_item_id integer,
  look_head integer, look_body integer, look_legs integer, look_feet integer,
  look_addons integer, look_mount integer,
  greet_message text NOT NULL, farewell_message text NOT NULL, decline_message text NOT NULL,
  no_shop_message text NOT NULL, on_close_shop_message text NOT NULL,
  focus_enabled boolean NOT NULL DEFAULT false, travel_enabled boolean NOT NULL DEFAULT false,
  voice_enabled boolean NOT NULL DEFAULT false, shop_enabled boolean NOT NULL DEFAULT false,
  keywords_enabled boolean NOT NULL DEFAULT false,
  shop_mode npc_shop_mode NOT NULL DEFAULT 'trade_window',
  content_size_bytes integer NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
  deleted_at timestamptz,
  generation_job_id uuid, generation_job_status generation_job_status,
  generation_job_started_at timestamptz, generation_job_error jsonb);
CREATE TABLE npc_shop_items (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  npc_id uuid NOT NULL REFERENCES npcs (id),
  list_type npc_shop_item_list_type NOT NULL, name text NOT NULL,
  item_id integer NOT NULL, price integer NOT NULL,
  subtype integer NOT NULL DEFAULT 0, charges integer NOT NULL DEFAULT 0,
  real_name text, container_item_id integer,
  created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
  deleted_at timestamptz);
CREATE TABLE npc_keywords (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  npc_id uuid NOT NULL REFERENCES npcs (id),
  response text NOT NULL, sort_index integer NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
  deleted_at timestamptz, UNIQUE (npc_id, id));
CREATE TABLE npc_keyword_phrases (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  keyword_id uuid NOT NULL, npc_id uuid NOT NULL, phrase text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
  deleted_at timestamptz,
  FOREIGN KEY (keyword_id, npc_id) REFERENCES npc_keywords (id, npc_id));

CREATE FUNCTION set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.updated_at := now() + interval '1 day'; RETURN NEW; END $$;
CREATE TRIGGER shop_items_updated BEFORE UPDATE ON npc_shop_items
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER keywords_updated BEFORE UPDATE ON npc_keywords
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER phrases_updated BEFORE UPDATE ON npc_keyword_phrases
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE FUNCTION enforce_keyword_phrase_rules() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM npcs WHERE id = NEW.npc_id AND deleted_at IS NOT NULL) THEN
    RAISE EXCEPTION 'npc % is deleted', NEW.npc_id;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER phrases_rules BEFORE INSERT OR UPDATE ON npc_keyword_phrases
  FOR EACH ROW EXECUTE FUNCTION enforce_keyword_phrase_rules();
-- An operator switched this one off on purpose; it must stay off.
CREATE FUNCTION refuse_everything() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'refused'; END $$;
CREATE TRIGGER shop_items_frozen BEFORE INSERT OR UPDATE ON npc_shop_items
  FOR EACH ROW EXECUTE FUNCTION refuse_everything();
ALTER TABLE npc_shop_items DISABLE TRIGGER shop_items_frozen;
"""

STAMP = datetime(2025, 10, 25, 10, 0, tzinfo=UTC)


@pytest.fixture
async def original(pg_cluster: EmbeddedPostgres) -> AsyncIterator[Any]:
    name = f"orig_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_cluster.dsn)
    await admin.execute(f"CREATE DATABASE {name} TEMPLATE template0")
    conn = await connect(pg_cluster.dsn_for(name))
    try:
        await conn.execute(ORIGINAL_SCHEMA)
        yield conn
    finally:
        await conn.close()
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


async def _npc(conn: Any, owner: uuid.UUID, name: str) -> uuid.UUID:
    npc_id: uuid.UUID = await conn.fetchval(
        """
        INSERT INTO npcs (owner_id, name, walk_interval, health_now, health_max, look_type,
          look_type_id, greet_message, farewell_message, decline_message, no_shop_message,
          on_close_shop_message, shop_enabled, keywords_enabled)
        VALUES ($1, $2, 2000, 100, 100, 'monster', 21, 'Hi.', 'Bye.', 'No.', 'None.', 'Done.',
          true, true)
        RETURNING id
        """,
        owner, name,
    )  # fmt: skip
    return npc_id


async def _order(conn: Any, table: str, by: str) -> list[uuid.UUID]:
    return [row["id"] for row in await conn.fetch(f"SELECT id FROM {table} ORDER BY {by}")]


async def test_0005_applies_to_the_original_schema_and_keeps_its_rows(original: Any) -> None:
    conn = original
    owner = uuid.uuid4()
    await conn.execute("INSERT INTO profiles (id, display_name) VALUES ($1, 'old user')", owner)
    shop, gone = await _npc(conn, owner, "Shop"), await _npc(conn, owner, "Gone")
    async with conn.transaction():  # a whole list in one transaction: created_at ties
        await conn.execute(
            "INSERT INTO npc_shop_items (npc_id, list_type, name, item_id, price, created_at)"
            " SELECT $1, 'buy', 'ware ' || g, 3000 + g, g, $2"
            " FROM generate_series(1, 12) AS g",
            shop, STAMP,
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO npc_shop_items (npc_id, list_type, name, item_id, price)"
            " VALUES ($1, 'buy', 'rope, long', 2120, 9)",
            shop,
        )
        for npc_id in (shop, gone):
            keyword = await conn.fetchval(
                "INSERT INTO npc_keywords (npc_id, response) VALUES ($1, 'r') RETURNING id", npc_id
            )
            await conn.execute(
                "INSERT INTO npc_keyword_phrases (keyword_id, npc_id, phrase, created_at)"
                " SELECT $1, $2, 'phrase ' || g, $3 FROM generate_series(1, 6) AS g",
                keyword, npc_id, STAMP,
            )  # fmt: skip
    # A soft-deleted NPC with its phrases (the original cascades this with a trigger of its own).
    await conn.execute("ALTER TABLE npc_keyword_phrases DISABLE TRIGGER phrases_rules")
    await conn.execute("UPDATE npc_keyword_phrases SET deleted_at = now() WHERE npc_id = $1", gone)
    await conn.execute("ALTER TABLE npc_keyword_phrases ENABLE TRIGGER phrases_rules")
    await conn.execute("UPDATE npcs SET deleted_at = now() WHERE id = $1", gone)

    tables = ("npc_shop_items", "npc_keywords", "npc_keyword_phrases")
    before = {t: await _order(conn, t, "created_at, id") for t in tables}
    stamps = {t: await conn.fetch(f"SELECT id, updated_at FROM {t} ORDER BY id") for t in tables}

    [migration] = [m for m in load_migrations() if m.version == "0005"]
    async with conn.transaction():
        await conn.execute(migration.sql)

    for table in tables:
        # Existing rows are numbered in the order they were read in until now ...
        assert await _order(conn, table, "position") == before[table]
        # ... and nothing else about them changed (no row trigger fired).
        assert await conn.fetch(f"SELECT id, updated_at FROM {table} ORDER BY id") == stamps[table]
    states = {
        row["tgname"]: row["tgenabled"].decode()
        for row in await conn.fetch(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal"
        )
    }
    assert states["phrases_rules"] == "O" and states["shop_items_updated"] == "O"
    assert states["shop_items_frozen"] == "D"

    # New rows continue the order, also many in one statement.
    top = await conn.fetchval("SELECT max(position) FROM npc_keyword_phrases")
    keyword = await conn.fetchval("SELECT id FROM npc_keywords WHERE npc_id = $1", shop)
    await conn.execute(
        "INSERT INTO npc_keyword_phrases (keyword_id, npc_id, phrase)"
        " SELECT $1, $2, p FROM unnest($3::text[]) AS p",
        keyword, shop, ["zulu", "alpha", "mike"],
    )  # fmt: skip
    added = await conn.fetch(
        "SELECT phrase, position FROM npc_keyword_phrases WHERE position > $1 ORDER BY position",
        top,
    )
    assert [row["phrase"] for row in added] == ["zulu", "alpha", "mike"]

    # The record as the worker reads it: lists in position order, the stored comma still there
    # (NOT VALID leaves old rows alone) and named as the row a job would fail on ...
    npc = await load_npc(conn, shop)
    assert npc is not None
    # Rows stored before keep the order they were read in (ties broken by id, as before: the
    # order a transaction wrote them in is not recorded anywhere); new ones follow it.
    shown_before = [
        row["name"]
        for row in await conn.fetch(
            "SELECT name FROM npc_shop_items WHERE npc_id = $1 ORDER BY created_at, id", shop
        )
    ]
    assert [item.name for item in npc.buy_items] == shown_before
    phrases_before = [
        row["phrase"]
        for row in await conn.fetch(
            "SELECT phrase FROM npc_keyword_phrases WHERE npc_id = $1 AND position <= $2"
            " ORDER BY created_at, id",
            shop, top,
        )
    ]  # fmt: skip
    assert list(npc.keywords[0].phrases) == [*phrases_before, "zulu", "alpha", "mike"]
    comma = await conn.fetchval("SELECT id FROM npc_shop_items WHERE name = 'rope, long'")
    assert [(p.row_id, p.column) for p in record_problems(npc)] == [(comma, "name")]
    # ... while a new one is refused.
    with pytest.raises(asyncpg.CheckViolationError, match="npc_shop_items_name_list_safe"):
        await conn.execute(
            "INSERT INTO npc_shop_items (npc_id, list_type, name, item_id, price)"
            " VALUES ($1, 'sell', 'salt, coarse', 2120, 1)",
            shop,
        )
    with pytest.raises(asyncpg.CheckViolationError, match="bye"):
        await conn.execute(
            "INSERT INTO npc_keyword_phrases (keyword_id, npc_id, phrase) VALUES ($1, $2, 'bye')",
            keyword, shop,
        )  # fmt: skip
