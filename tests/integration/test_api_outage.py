"""The API while PostgreSQL goes away and comes back: 503 with Retry-After, then answers again
without a restart of the API. Runs on its own cluster: the session one is shared."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pgctl
from apikit import api_harness, bearer, owner_of, queue_job, token
from conftest import make_npc
from npcforge.db.connect import connect
from npcforge.db.migrate import migrate


async def seeded(dsn: str) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, uuid.UUID]:
    """A migrated database with a queued job: (npc id, job id, owner, another NPC of the owner)."""
    conn = await connect(dsn)
    try:
        await migrate(conn)
        npc_id = await make_npc(conn, ownerId=str(uuid.uuid4()))
        owner = await owner_of(conn, npc_id)
        job_id = await queue_job(conn, npc_id)
        other = await make_npc(conn, ownerId=str(owner))
    finally:
        await conn.close()
    return npc_id, job_id, owner, other


async def test_polls_and_starts_answer_503_while_postgres_is_down_then_recover(
    own_cluster, storage_dir
):
    dsn = own_cluster.dsn
    npc_id, job_id, owner, other = await seeded(dsn)
    headers = bearer(token(owner))
    poll_url = f"/api/npcs/{npc_id}/generation-jobs/{job_id}"
    async with api_harness(dsn, storage_dir) as api:

        async def poll() -> Any:
            return await api.client.get(poll_url, headers=headers)

        before = await poll()
        await asyncio.to_thread(pgctl.stop_server, own_cluster)
        down = [await poll(), await poll()]
        start = await api.client.post(f"/api/npcs/{other}/generate", headers=headers)
        listing = await api.client.get(f"/api/npcs/{npc_id}/generation-jobs", headers=headers)
        health = await api.client.get("/healthz")
        await asyncio.to_thread(pgctl.start_server, own_cluster)
        # The dead connections are noticed on use and replaced: a few polls at most.
        after = [await poll() for _ in range(4)]
        restarted = await api.client.post(f"/api/npcs/{other}/generate", headers=headers)
        metrics = (await api.client.get("/metrics")).text

    assert before.status_code == 200 and before.json()["status"] == "queued"
    for response in (*down, start, listing):
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "DATABASE_UNAVAILABLE"
        assert int(response.headers["retry-after"]) > 0
        assert response.headers["cache-control"] == "no-store"
    assert health.status_code == 200  # the process itself is fine
    assert after[-1].status_code == 200 and after[-1].json() == before.json()
    assert all(r.status_code in (200, 503) for r in after)
    # The failed start did not use up the user's start allowance, nor start anything.
    assert restarted.status_code == 202, restarted.text
    assert 'status="503"' in metrics and 'status="500"' not in metrics


async def test_the_first_poll_after_a_postgres_restart_answers_200(own_cluster, storage_dir):
    # Polls keep an idle connection between batches; a restart kills it while nobody polls.
    dsn = own_cluster.dsn
    npc_id, job_id, owner, _ = await seeded(dsn)
    headers = bearer(token(owner))
    poll_url = f"/api/npcs/{npc_id}/generation-jobs/{job_id}"
    async with api_harness(dsn, storage_dir) as api:
        before = await api.client.get(poll_url, headers=headers)
        await asyncio.to_thread(pgctl.stop_server, own_cluster)
        await asyncio.to_thread(pgctl.start_server, own_cluster)
        after = [await api.client.get(poll_url, headers=headers) for _ in range(5)]

    assert before.status_code == 200
    # Was [503, 200, 200, 200, 200]: the kept connection was used dead.
    assert [r.status_code for r in after] == [200] * 5, [r.text for r in after]
    assert all(r.json() == before.json() for r in after)
