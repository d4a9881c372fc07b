"""The enqueue contract in SQL: trigger, npcforge_enqueue, notifications, CHECKs."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from conftest import make_npc, make_npcs
from npcforge.db.connect import connect


async def test_plain_update_enqueues_with_new_job_id(conn):
    npc_id = await make_npc(conn)
    row = await conn.fetchrow(
        "UPDATE npcs SET generation_job_status = 'queued' WHERE id = $1 RETURNING "
        "generation_job_id, generation_job_started_at, generation_job_run_after, "
        "generation_job_attempts, generation_job_error",
        npc_id,
    )
    assert isinstance(row["generation_job_id"], uuid.UUID)
    assert row["generation_job_started_at"] is not None
    assert row["generation_job_run_after"] == row["generation_job_started_at"]
    assert row["generation_job_attempts"] == 0
    assert row["generation_job_error"] is None


async def test_statement_chosen_job_id_is_kept(conn):
    npc_id = await make_npc(conn)
    chosen = uuid.uuid4()
    got = await conn.fetchval(
        "UPDATE npcs SET generation_job_status = 'queued', generation_job_id = $2 WHERE id = $1 "
        "RETURNING generation_job_id",
        npc_id,
        chosen,
    )
    assert got == chosen


async def test_new_request_after_failure_gets_new_id_and_clears_state(conn):
    npc_id = await make_npc(conn)
    first = await conn.fetchval("SELECT npcforge_enqueue($1)", npc_id)
    await conn.execute(
        "UPDATE npcs SET generation_job_status = 'failed', generation_job_attempts = 3, "
        'generation_job_error = \'{"code": "AI_UPSTREAM", "message": "x"}\' WHERE id = $1',
        npc_id,
    )
    row = await conn.fetchrow(
        "UPDATE npcs SET generation_job_status = 'queued' WHERE id = $1 "
        "RETURNING generation_job_id, generation_job_attempts, generation_job_error",
        npc_id,
    )
    assert row["generation_job_id"] != first
    assert row["generation_job_attempts"] == 0
    assert row["generation_job_error"] is None


async def test_requeue_while_queued_keeps_the_job(conn):
    npc_id = await make_npc(conn)
    first = await conn.fetchval("SELECT npcforge_enqueue($1)", npc_id)
    again = await conn.fetchval(
        "UPDATE npcs SET generation_job_status = 'queued' WHERE id = $1 RETURNING generation_job_id",
        npc_id,
    )
    assert again == first


async def test_worker_hand_back_keeps_id_and_attempts(conn):
    npc_id = await make_npc(conn)
    job = await conn.fetchval("SELECT npcforge_enqueue($1)", npc_id)
    await conn.execute(
        "UPDATE npcs SET generation_job_status = 'processing', generation_job_attempts = 2, "
        "generation_job_lease_token = gen_random_uuid() WHERE id = $1",
        npc_id,
    )
    row = await conn.fetchrow(
        "UPDATE npcs SET generation_job_status = 'queued', "
        "generation_job_run_after = now() + interval '5 minutes' WHERE id = $1 "
        "RETURNING generation_job_id, generation_job_attempts, generation_job_lease_token, "
        "generation_job_run_after > now() + interval '4 minutes' AS delayed",
        npc_id,
    )
    assert row["generation_job_id"] == job
    assert row["generation_job_attempts"] == 2
    assert row["generation_job_lease_token"] is None
    assert row["delayed"]


async def test_enqueue_function_conflict_and_force(conn):
    npc_id = await make_npc(conn)
    first = await conn.fetchval("SELECT npcforge_enqueue($1)", npc_id)
    with pytest.raises(asyncpg.PostgresError, match="GENERATION_JOB_CONFLICT"):
        await conn.fetchval("SELECT npcforge_enqueue($1)", npc_id)
    forced = await conn.fetchval("SELECT npcforge_enqueue($1, true)", npc_id)
    assert forced != first
    with pytest.raises(asyncpg.PostgresError, match="NPC_NOT_FOUND"):
        await conn.fetchval("SELECT npcforge_enqueue($1)", uuid.uuid4())


async def test_bulk_update_sends_one_notification(conn, db_dsn):
    ids = await make_npcs(conn, 1000)
    listener = await connect(db_dsn)
    received: list[str] = []
    await listener.add_listener("npcforge_jobs", lambda *args: received.append(args[3]))
    try:
        status = await conn.execute(
            "UPDATE npcs SET generation_job_status = 'queued' WHERE id = ANY($1::uuid[])", ids
        )
        assert status == "UPDATE 1000"
        await asyncio.sleep(0.5)
        assert len(received) == 1
        distinct = await conn.fetchval(
            "SELECT count(DISTINCT generation_job_id) FROM npcs WHERE id = ANY($1::uuid[])", ids
        )
        assert distinct == 1000
    finally:
        await listener.close()


async def test_statements_that_do_not_enqueue_do_not_notify(conn, db_dsn):
    npc_id = await make_npc(conn)
    listener = await connect(db_dsn)
    received: list[str] = []
    await listener.add_listener("npcforge_jobs", lambda *args: received.append(args[3]))
    try:
        await conn.execute("UPDATE npcs SET name = name || '!' WHERE id = $1", npc_id)
        await asyncio.sleep(0.3)
        assert received == []
    finally:
        await listener.close()


@pytest.mark.parametrize(
    ("table_sql", "bad"),
    [
        ("shop", "potion; of doom"),
        ("shop", "potion, small"),
        ("phrase", "hi;there"),
        ("phrase", "a,b"),
    ],
)
async def test_list_separators_rejected_by_check(conn, table_sql, bad):
    npc_id = await make_npc(conn)
    with pytest.raises(asyncpg.CheckViolationError):
        if table_sql == "shop":
            await conn.execute(
                "INSERT INTO npc_shop_items (npc_id, list_type, name, item_id, price) "
                "VALUES ($1, 'buy', $2, 100, 1)",
                npc_id,
                bad,
            )
        else:
            keyword = await conn.fetchval(
                "SELECT id FROM npc_keywords WHERE npc_id = $1 LIMIT 1", npc_id
            )
            await conn.execute(
                "INSERT INTO npc_keyword_phrases (keyword_id, npc_id, phrase) VALUES ($1, $2, $3)",
                keyword,
                npc_id,
                bad,
            )


async def test_database_caps_active_shop_items_and_keywords_at_255(conn):
    npc_id = await make_npc(conn)  # has 5 shop items and 3 keywords
    await conn.execute(
        "INSERT INTO npc_shop_items (npc_id, list_type, name, item_id, price) "
        "SELECT $1, 'buy', 'item ' || g, 100 + g, 1 FROM generate_series(1, 250) g",
        npc_id,
    )
    with pytest.raises(asyncpg.RaiseError, match=r"maximum active shop item limit \(255\)"):
        await conn.execute(
            "INSERT INTO npc_shop_items (npc_id, list_type, name, item_id, price) "
            "VALUES ($1, 'sell', 'one too many', 1, 1)",
            npc_id,
        )
    await conn.execute(
        "INSERT INTO npc_keywords (npc_id, response, sort_index) "
        "SELECT $1, 'reply ' || g, g FROM generate_series(1, 252) g",
        npc_id,
    )
    with pytest.raises(asyncpg.RaiseError, match=r"maximum active keyword limit \(255\)"):
        await conn.execute(
            "INSERT INTO npc_keywords (npc_id, response) VALUES ($1, 'one too many')", npc_id
        )
    await conn.execute("UPDATE npc_shop_items SET deleted_at = now() WHERE npc_id = $1", npc_id)
    await conn.execute(
        "INSERT INTO npc_shop_items (npc_id, list_type, name, item_id, price) "
        "VALUES ($1, 'sell', 'fits again', 1, 1)",
        npc_id,
    )


async def test_queue_bookkeeping_leaves_the_records_updated_at(conn):
    npc_id = await make_npc(conn)
    before = await conn.fetchval("SELECT updated_at FROM npcs WHERE id = $1", npc_id)
    await conn.execute("SELECT npcforge_enqueue($1)", npc_id)
    await conn.execute(
        "UPDATE npcs SET generation_job_status = 'processing', "
        "generation_job_lease_expires_at = now() + interval '30 seconds' WHERE id = $1",
        npc_id,
    )
    assert await conn.fetchval("SELECT updated_at FROM npcs WHERE id = $1", npc_id) == before
    await conn.execute("UPDATE npcs SET name = name || ' II' WHERE id = $1", npc_id)
    assert await conn.fetchval("SELECT updated_at FROM npcs WHERE id = $1", npc_id) > before
