"""What Supabase's API roles can do to npcforge's tables, through the SQL PostgREST runs
(`SET LOCAL ROLE …; set_config('request.jwt.claims', …)`), on a cluster with Supabase's roles:
on a new project after `npcforge migrate` (fresh) and on the original's project after it
(adopted). Expected visibility is computed from the original's rules, not from our policies.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from conftest import SupabaseTemplates, supabase_database
from npcforge.db.connect import connect
from supabasekit import OriginalData, as_role, seed_role_data
from workerkit import running_worker, wait_status

CHILDREN = ("npc_shop_items", "npc_keywords", "npc_keyword_phrases")
# Sample values by column type, for "set this column" probes.
VALUE_FOR_TYPE = {
    "uuid": "gen_random_uuid()",
    "USER-DEFINED": "'queued'",
    "timestamp with time zone": "now() + interval '1 hour'",
    "jsonb": """'{"code": "AI_TIMEOUT", "message": "forged"}'""",
    "integer": "7",
    "text": "'forged'",
    "boolean": "true",
}


class RoleDb:
    def __init__(self, dsn: str, conn: Any, data: OriginalData) -> None:
        self.dsn = dsn
        self.conn = conn
        self.data = data

    @property
    def dave(self) -> uuid.UUID:
        return self.data.users["dave"]

    def npc(self, key: str) -> uuid.UUID:
        return self.data.npcs[key]

    async def ids(self, sql: str, *args: Any) -> set[uuid.UUID]:
        return {row[0] for row in await self.conn.fetch(sql, *args)}


@pytest.fixture(scope="module", params=["fresh", "adopted"])
async def role_db(
    request: pytest.FixtureRequest, supabase_templates: SupabaseTemplates
) -> AsyncIterator[RoleDb]:
    t = supabase_templates
    name = await supabase_database(t, getattr(t, request.param))
    data = await seed_role_data(t.cluster, name)
    # PostgREST logs in as `authenticator` and switches role per request.
    conn = await asyncpg.connect(t.cluster.dsn(name, "authenticator"))
    try:
        yield RoleDb(t.cluster.dsn(name), conn, data)
    finally:
        await conn.close()
        await t.cluster.drop_database(name)


async def visible(db: RoleDb, table: str, role: str, sub: uuid.UUID | None = None) -> set[Any]:
    async with as_role(db.conn, role, sub):
        return await db.ids(f"SELECT id FROM {table}")


async def expected_for(db: RoleDb, table: str, user: uuid.UUID | None) -> set[Any]:
    """The rows the original's policies show `user` (None: anon), read past RLS as postgres."""
    npc_rule = "(n.deleted_at IS NULL AND n.status = 'published')"
    if user is not None:
        npc_rule = f"(n.owner_id = $1 OR {npc_rule})"
    parent_rule = "p.deleted_at IS NULL AND (p.status = 'published'"
    parent_rule += " OR p.owner_id = $1)" if user is not None else ")"
    queries = {
        "npcs": f"SELECT id FROM npcs n WHERE {npc_rule}",
        "profiles": "SELECT id FROM profiles",
        **{child: f"SELECT c.id FROM {child} c JOIN npcs p ON p.id = c.npc_id "
                  f"WHERE c.deleted_at IS NULL AND {parent_rule}" for child in CHILDREN},
    }  # fmt: skip
    query = queries[table]
    return await past_rls(db, query, *([user] if "$1" in query else []))


async def past_rls(db: RoleDb, sql: str, *args: Any) -> set[Any]:
    """Ids read as `postgres`, which bypasses RLS like the worker does."""
    worker = await connect(db.dsn)
    try:
        return {row[0] for row in await worker.fetch(sql, *args)}
    finally:
        await worker.close()


# --- signed-in users -------------------------------------------------------------------------


async def job_columns(db: RoleDb) -> list[tuple[str, str]]:
    worker = await connect(db.dsn)
    try:
        rows = await worker.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'npcs' AND (column_name LIKE 'generation\\_job\\_%' "
            "OR column_name = 'content_size_bytes')"
        )
    finally:
        await worker.close()
    return [(row["column_name"], row["data_type"]) for row in rows]


async def test_a_user_cannot_set_any_job_column_or_the_size_of_their_own_npc(role_db: RoleDb):
    db = role_db
    columns = await job_columns(db)
    assert len(columns) >= 14  # the original's four, the queue's, content_size_bytes
    for column, data_type in columns:
        async with as_role(db.conn, "authenticated", db.dave):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="generation job fields"):
                await db.conn.execute(
                    f"UPDATE npcs SET {column} = {VALUE_FOR_TYPE[data_type]} WHERE id = $1",
                    db.npc("dave_draft"),
                )
    # Inserting a row that is already a job (or claims a file) is a job start too.
    for column, value in (("generation_job_status", "'queued'"), ("content_size_bytes", "10")):
        async with as_role(db.conn, "authenticated", db.dave):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="generation job fields"):
                await db.conn.execute(
                    f"INSERT INTO npcs (owner_id, client_request_id, name, walk_interval, "
                    f"health_now, health_max, look_type, look_type_id, greet_message, "
                    f"farewell_message, decline_message, no_shop_message, on_close_shop_message, "
                    f"{column}) VALUES ($1, gen_random_uuid(), 'Sneaky', 2000, 100, 100, "
                    f"'monster', 21, 'a', 'b', 'c', 'd', 'e', {value})",
                    db.dave,
                )
    # Everything else about their own NPC stays theirs to change.
    async with as_role(db.conn, "authenticated", db.dave):
        done = await db.conn.execute(
            "UPDATE npcs SET name = 'Renamed', greet_message = 'Hi |PLAYERNAME|' WHERE id = $1",
            db.npc("dave_draft"),
        )
        assert done == "UPDATE 1"


async def test_the_job_guard_holds_inside_a_security_definer_function(role_db: RoleDb):
    """The request's JWT role decides, not `current_user` (a SECURITY DEFINER function's owner)."""
    worker = await connect(role_db.dsn)
    try:
        await worker.execute(
            """
            CREATE OR REPLACE FUNCTION public.start_job_for_me(npc uuid) RETURNS void
            LANGUAGE sql SECURITY DEFINER SET search_path = public
            AS $$ UPDATE npcs SET generation_job_status = 'queued' WHERE id = npc $$;
            GRANT EXECUTE ON FUNCTION public.start_job_for_me(uuid) TO authenticated;
            """
        )
    finally:
        await worker.close()
    db = role_db
    async with as_role(db.conn, "authenticated", db.dave):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="generation job fields"):
            await db.conn.execute("SELECT start_job_for_me($1)", db.npc("dave_draft"))


async def test_a_user_cannot_start_a_job_through_postgrest_rpc(role_db: RoleDb):
    db = role_db
    for role, sub in (("authenticated", db.dave), ("anon", None)):
        async with as_role(db.conn, role, sub):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="npcforge_enqueue"):
                await db.conn.execute("SELECT npcforge_enqueue($1)", db.npc("dave_draft"))


async def test_a_user_cannot_hard_delete_anything_only_soft_delete(role_db: RoleDb):
    db = role_db
    npc = db.npc("dave_draft")
    async with as_role(db.conn, "authenticated", db.dave):
        for table in CHILDREN:
            assert await db.conn.execute(f"DELETE FROM {table} WHERE npc_id = $1", npc) == (
                "DELETE 0"
            )
            assert await db.conn.fetchval(f"SELECT count(*) FROM {table} WHERE npc_id = $1", npc)
        assert await db.conn.execute("DELETE FROM npcs WHERE id = $1", npc) == "DELETE 0"
    async with as_role(db.conn, "authenticated", db.dave):
        assert (
            await db.conn.execute("UPDATE npcs SET deleted_at = now() WHERE id = $1", npc)
            == "UPDATE 1"
        )
    # Dave deleted `dave_trashed` that way while the data was set up: its rows are all still
    # there, soft-deleted with it.
    for table in CHILDREN:
        kept = await past_rls(
            db, f"SELECT deleted_at IS NOT NULL FROM {table} WHERE npc_id = $1",
            db.npc("dave_trashed"),
        )  # fmt: skip
        assert kept == {True}, table


async def test_a_user_sees_what_the_original_showed_and_no_more(role_db: RoleDb):
    db = role_db
    for user in db.data.users.values():
        for table in ("npcs", "profiles", *CHILDREN):
            assert await visible(db, table, "authenticated", user) == await expected_for(
                db, table, user
            ), table
    assert db.npc("erin_draft") not in await visible(db, "npcs", "authenticated", db.dave)
    assert db.npc("dave_trashed") in await visible(db, "npcs", "authenticated", db.dave)
    async with as_role(db.conn, "authenticated", db.dave):
        attempts = await db.ids("SELECT npc_id FROM npc_generation_attempts")
    assert attempts == {db.npc(k) for k in ("dave_draft", "dave_public", "dave_trashed")}


async def test_a_user_cannot_change_anything_of_another_user(role_db: RoleDb):
    db = role_db
    erin = db.data.users["erin"]
    async with as_role(db.conn, "authenticated", db.dave):
        for npc in (db.npc("erin_draft"), db.npc("erin_public")):
            assert (
                await db.conn.execute(
                    "UPDATE npcs SET name = 'Mine now', deleted_at = now() WHERE id = $1", npc
                )
                == "UPDATE 0"
            )
            for table in CHILDREN:
                assert (
                    await db.conn.execute(
                        f"UPDATE {table} SET deleted_at = now() WHERE npc_id = $1", npc
                    )
                    == "UPDATE 0"
                )
                assert (
                    await db.conn.execute(f"DELETE FROM {table} WHERE npc_id = $1", npc)
                    == "DELETE 0"
                )
        assert (
            await db.conn.execute("UPDATE profiles SET display_name = 'hacked' WHERE id = $1", erin)
            == "UPDATE 0"
        )
    async with as_role(db.conn, "authenticated", db.dave):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await db.conn.execute(
                "INSERT INTO npc_shop_items (npc_id, list_type, name, item_id, price) "
                "VALUES ($1, 'buy', 'junk', 3003, 1)",
                db.npc("erin_public"),
            )
    async with as_role(db.conn, "authenticated", db.dave):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await db.conn.execute(
                "INSERT INTO npcs (owner_id, client_request_id, name, walk_interval, health_now, "
                "health_max, look_type, look_type_id, greet_message, farewell_message, "
                "decline_message, no_shop_message, on_close_shop_message) VALUES ($1, "
                "gen_random_uuid(), 'Planted', 2000, 100, 100, 'monster', 21, 'a', 'b', 'c', 'd', "
                "'e')",
                erin,
            )


# --- anon ------------------------------------------------------------------------------------


async def test_anon_reads_exactly_what_the_original_let_it_read(role_db: RoleDb):
    db = role_db
    relations = await db.conn.fetch(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
        "AND relkind IN ('r', 'v', 'm', 'p', 'f')"
    )
    readable = {"npcs", "profiles", *CHILDREN}
    for (relation,) in relations:
        if relation in readable:
            assert await visible(db, relation, "anon") == await expected_for(db, relation, None), (
                relation
            )
            continue
        async with as_role(db.conn, "anon"):
            try:
                count = await db.conn.fetchval(f"SELECT count(*) FROM {relation}")
            except asyncpg.InsufficientPrivilegeError:
                continue
        assert count == 0, f"anon reads {count} row(s) of {relation}"
    async with as_role(db.conn, "anon"):
        assert await db.conn.execute("UPDATE npcs SET name = 'x'") == "UPDATE 0"
        assert await db.conn.execute("DELETE FROM npc_shop_items") == "DELETE 0"
    async with as_role(db.conn, "anon"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await db.conn.execute(
                "INSERT INTO npc_shop_items (npc_id, list_type, name, item_id, price) "
                "VALUES ($1, 'buy', 'junk', 3003, 1)",
                db.npc("erin_public"),
            )


# --- the backend -----------------------------------------------------------------------------


async def test_the_service_role_starts_a_job_and_the_worker_runs_it(role_db: RoleDb, storage_dir):
    """The original's API enqueued with the service role; the worker is `postgres`, which on
    Supabase is no superuser (it bypasses RLS)."""
    db = role_db
    npc = db.npc("erin_public")
    job = uuid.uuid4()
    async with as_role(db.conn, "service_role", commit=True):
        assert await db.ids("SELECT id FROM npcs") == await past_rls(db, "SELECT id FROM npcs")
        await db.conn.execute(
            "UPDATE npcs SET generation_job_id = $2, generation_job_status = 'queued', "
            "generation_job_started_at = now(), generation_job_error = NULL WHERE id = $1",
            npc, job,
        )  # fmt: skip
    worker_conn = await connect(db.dsn)
    try:
        assert not await worker_conn.fetchval(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        )
        async with running_worker(db.dsn, storage_dir):
            row = await wait_status(worker_conn, npc, "succeeded")
        assert row["job_id"] == job and row["content_size_bytes"] > 0
    finally:
        await worker_conn.close()
