"""GET /api/npcs/{npcId}/generation-jobs: the owner's recent jobs with their attempts."""

from __future__ import annotations

import uuid
from typing import Any

from apikit import add_attempt, api_harness, bearer, owner_of, queue_job, set_status, token
from conftest import make_npc, wait_for
from workerkit import running_worker


async def list_jobs(client: Any, npc_id: uuid.UUID, owner: uuid.UUID, query: str = "") -> Any:
    response = await client.get(
        f"/api/npcs/{npc_id}/generation-jobs{query}", headers=bearer(token(owner))
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.json()


async def test_no_jobs_yet_is_an_empty_page(conn, db_dsn, storage_dir):
    npc_id = await make_npc(conn, ownerId=str(uuid.uuid4()))
    async with api_harness(db_dsn, storage_dir) as api:
        body = await list_jobs(api.client, npc_id, await owner_of(conn, npc_id))
    assert body == {"items": [], "pageInfo": {"nextCursor": None}}


async def test_history_newest_first_with_attempts(conn, db_dsn, storage_dir):
    npc_id = await make_npc(conn, ownerId=str(uuid.uuid4()))
    owner = await owner_of(conn, npc_id)

    # Job 1: a timeout, then success on the second attempt.
    job1 = await queue_job(conn, npc_id)
    await add_attempt(conn, npc_id, job1, 1, "retry", error_code="AI_TIMEOUT", error_message="slow")
    await add_attempt(conn, npc_id, job1, 2, "succeeded")
    await set_status(conn, npc_id, "succeeded")
    # Job 2: failed for good.
    job2 = await queue_job(conn, npc_id)
    await add_attempt(
        conn, npc_id, job2, 1, "failed", error_code="AI_CONFIG", error_message="bad key"
    )
    await set_status(conn, npc_id, "failed", error={"code": "AI_CONFIG", "message": "bad key"})
    # Job 3: superseded by a force while its attempt was running.
    job3 = await queue_job(conn, npc_id)
    await add_attempt(conn, npc_id, job3, 1, "discarded")
    # Job 4: the current one, queued, no attempt yet.
    job4 = await conn.fetchval("SELECT npcforge_enqueue($1, true)", npc_id)
    # Another NPC's attempts never show up.
    other = await make_npc(conn, ownerId=str(owner))
    other_job = await queue_job(conn, other)
    await add_attempt(conn, other, other_job, 1, "succeeded")

    async with api_harness(db_dsn, storage_dir) as api:
        body = await list_jobs(api.client, npc_id, owner)

    items = body["items"]
    assert [item["jobId"] for item in items] == [str(job4), str(job3), str(job2), str(job1)]
    assert [item["status"] for item in items] == ["queued", "superseded", "failed", "succeeded"]
    assert [item["current"] for item in items] == [True, False, False, False]
    assert [len(item["attempts"]) for item in items] == [0, 1, 1, 2]
    assert items[2]["error"] == {"code": "AI_CONFIG", "message": "bad key"}
    assert all(item["error"] is None for item in items if item["status"] != "failed")
    first, second = items[3]["attempts"]
    assert first["attempt"] == 1 and first["outcome"] == "retry"
    assert first["errorCode"] == "AI_TIMEOUT" and first["errorMessage"] == "slow"
    assert second["outcome"] == "succeeded" and second["errorCode"] is None
    assert set(second) == {
        "attempt", "outcome", "startedAt", "finishedAt", "durationMs", "model", "errorCode",
        "errorMessage", "promptTokens", "completionTokens", "cost", "retries",
    }  # fmt: skip
    assert second["model"] == "test/model" and second["cost"] == 0.00012
    assert body["pageInfo"] == {"nextCursor": None}


async def test_pages_follow_the_cursor_without_gaps_or_repeats(conn, db_dsn, storage_dir):
    npc_id = await make_npc(conn, ownerId=str(uuid.uuid4()))
    owner = await owner_of(conn, npc_id)
    jobs = []
    for _ in range(7):
        job = await queue_job(conn, npc_id)
        await add_attempt(conn, npc_id, job, 1, "succeeded")
        await set_status(conn, npc_id, "succeeded")
        jobs.append(str(job))
    seen: list[str] = []
    pages = 0
    async with api_harness(db_dsn, storage_dir) as api:
        query = "?limit=3"
        while True:
            body = await list_jobs(api.client, npc_id, owner, query)
            pages += 1
            assert len(body["items"]) <= 3
            seen += [item["jobId"] for item in body["items"]]
            cursor = body["pageInfo"]["nextCursor"]
            if cursor is None:
                break
            query = f"?limit=3&cursor={cursor}"
        default = await list_jobs(api.client, npc_id, owner)
    assert seen == list(reversed(jobs))
    assert pages == 3
    assert len(default["items"]) == 7  # the default page size is 20


async def test_a_real_worker_run_is_listed(conn, db_dsn, storage_dir):
    npc_id = await make_npc(conn, ownerId=str(uuid.uuid4()))
    owner = await owner_of(conn, npc_id)
    async with running_worker(db_dsn, storage_dir), api_harness(db_dsn, storage_dir) as api:
        started = await api.client.post(
            f"/api/npcs/{npc_id}/generate", headers=bearer(token(owner))
        )
        job_id = started.json()["jobId"]

        async def finished() -> Any:
            body = await list_jobs(api.client, npc_id, owner)
            done = body["items"][0]["status"] == "succeeded" and body["items"][0]["attempts"]
            return body if done else None

        body = await wait_for(finished)
    item = body["items"][0]
    assert item["jobId"] == job_id and item["current"] is True
    assert item["attempts"][0]["outcome"] == "succeeded"
    assert item["attempts"][0]["model"] == "template"
