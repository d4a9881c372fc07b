"""The whole path through the HTTP API: POST generate → worker → poll until the XML is there."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import httpx

from conftest import make_npc
from npcforge.api.app import create_app
from npcforge.api.auth import NoAuth
from npcforge.config import Settings
from npcforge.db.connect import create_pool
from npcforge.storage.filesystem import FilesystemStorage
from workerkit import running_worker


@contextlib.asynccontextmanager
async def api_client(db_dsn, storage_dir):
    pool = await create_pool(db_dsn, max_size=4)
    storage = FilesystemStorage(storage_dir, "npc-xml-files")
    app = create_app(
        Settings(NPCFORGE_AUTH="none"), storage=storage, pool=pool, authenticator=NoAuth()
    )
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                yield client
    finally:
        await pool.close()


async def _poll(client, npc_id, job_id, timeout=20.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await client.get(f"/api/npcs/{npc_id}/generation-jobs/{job_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in ("succeeded", "failed"):
            return body
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.05)


async def test_generate_then_poll_returns_the_xml(conn, db_dsn, storage_dir):
    npc_id = await make_npc(conn)
    async with running_worker(db_dsn, storage_dir), api_client(db_dsn, storage_dir) as client:
        accepted = await client.post(
            f"/api/npcs/{npc_id}/generate", json={"regenerate": False, "currentXml": None}
        )
        assert accepted.status_code == 202, accepted.text
        body = accepted.json()
        assert set(body) == {"jobId", "status", "npcId", "submittedAt"}
        assert body["status"] == "queued" and body["npcId"] == str(npc_id)
        done = await _poll(client, npc_id, body["jobId"])
    stored = (storage_dir / "npc-xml-files" / f"{npc_id}.xml").read_text()
    assert done["status"] == "succeeded"
    assert done["xml"] == stored
    assert done["contentSizeBytes"] == len(stored.encode())
    assert done["error"] is None
    assert done["attempts"] == 1
    assert done["jobId"] == body["jobId"]


async def test_force_semantics_through_the_api(conn, db_dsn, storage_dir):
    npc_id = await make_npc(conn)
    async with api_client(db_dsn, storage_dir) as client:  # no worker: jobs stay queued
        first = await client.post(f"/api/npcs/{npc_id}/generate")
        assert first.status_code == 202
        conflict = await client.post(f"/api/npcs/{npc_id}/generate")
        assert conflict.status_code == 409
        assert conflict.json()["error"]["code"] == "GENERATION_JOB_CONFLICT"
        assert conflict.headers["cache-control"] == "no-store"
        forced = await client.post(f"/api/npcs/{npc_id}/generate?force=true")
        assert forced.status_code == 202
        assert forced.json()["jobId"] != first.json()["jobId"]
        superseded = await client.get(f"/api/npcs/{npc_id}/generation-jobs/{first.json()['jobId']}")
        assert superseded.status_code == 404
        current = await client.get(f"/api/npcs/{npc_id}/generation-jobs/{forced.json()['jobId']}")
        assert current.status_code == 200 and current.json()["status"] == "queued"
        assert current.json()["xml"] is None


async def test_unknown_and_malformed_ids(conn, db_dsn, storage_dir):
    async with api_client(db_dsn, storage_dir) as client:
        unknown = await client.post(f"/api/npcs/{uuid.uuid4()}/generate")
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "NPC_NOT_FOUND"
        malformed = await client.post("/api/npcs/not-a-uuid/generate")
        assert malformed.status_code == 400
        assert malformed.json()["error"]["code"] == "INVALID_PATH_PARAMETERS"
        bad_job = await client.get(f"/api/npcs/{uuid.uuid4()}/generation-jobs/xyz")
        assert bad_job.status_code == 400
