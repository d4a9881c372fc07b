from conftest import make_npc


async def test_fixture_gives_migrated_db(conn):
    npc_id = await make_npc(conn)
    assert await conn.fetchval("SELECT name FROM npcs WHERE id=$1", npc_id)
