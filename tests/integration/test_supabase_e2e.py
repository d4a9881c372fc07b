"""Worker and API end to end on Supabase Storage: real PostgreSQL, the real storage3 client over
loopback HTTP against the stand-in (tests/standins/supabase_storage.py), nothing mocked.

The worker and the API each get their own SupabaseStorage, as two processes would in production.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from conftest import CapturedLogs, make_npc, wait_for
from npcforge.api.app import create_app
from npcforge.api.auth import NoAuth
from npcforge.config import Settings
from npcforge.db.connect import create_pool
from npcforge.storage.supabase import XML_CONTENT_TYPE, SupabaseStorage
from standins.supabase_storage import (
    FOREIGN_SERVICE_KEY,
    SERVICE_ROLE_KEY,
    SupabaseStorageStandIn,
    mint_key,
    running_storage_standin,
)
from workerkit import ScriptedProvider, running_worker, wait_status

BUCKET = "npc-xml-files"


def storage_for(
    standin: SupabaseStorageStandIn, *, key: str = SERVICE_ROLE_KEY, bucket: str = BUCKET
) -> SupabaseStorage:
    return SupabaseStorage(standin.url, key, bucket, timeout_seconds=5)


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
async def standin() -> AsyncIterator[SupabaseStorageStandIn]:
    async with running_storage_standin(buckets=[BUCKET]) as running:
        yield running


@pytest.fixture
async def worker_storage(standin: SupabaseStorageStandIn) -> AsyncIterator[SupabaseStorage]:
    storage = storage_for(standin)
    yield storage
    await storage.close()


@contextlib.asynccontextmanager
async def api_on(db_dsn: str, storage: SupabaseStorage) -> AsyncIterator[httpx.AsyncClient]:
    """The Starlette app on `storage`, driven in-process through ASGI."""
    pool = await create_pool(db_dsn, max_size=4, application_name="npcforge-api-test")
    settings = Settings(DATABASE_URL=db_dsn, NPCFORGE_AUTH="none", NPCFORGE_STORAGE="supabase")
    app = create_app(settings, storage=storage, pool=pool, authenticator=NoAuth())
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://api.test"
            ) as client,
        ):
            yield client
    finally:
        await pool.close()


@pytest.fixture
async def api(db_dsn: str, standin: SupabaseStorageStandIn) -> AsyncIterator[httpx.AsyncClient]:
    """The API with its own SupabaseStorage, as a separate process would have."""
    storage = storage_for(standin)
    try:
        async with api_on(db_dsn, storage) as client:
            yield client
    finally:
        await storage.close()


# --- helpers ----------------------------------------------------------------------------------


async def enqueue(conn: Any, npc_id: uuid.UUID) -> uuid.UUID:
    """Queue a job the way any SQL client can; the trigger assigns the job id."""
    job_id: uuid.UUID = await conn.fetchval(
        "UPDATE npcs SET generation_job_status = 'queued' WHERE id = $1 "
        "RETURNING generation_job_id",
        npc_id,
    )
    return job_id


async def attempts(conn: Any, job_id: uuid.UUID) -> list[tuple[str, str | None]]:
    rows = await conn.fetch(
        "SELECT outcome, error_code FROM npc_generation_attempts WHERE job_id = $1 "
        "ORDER BY attempt, finished_at",
        job_id,
    )
    return [(row["outcome"], row["error_code"]) for row in rows]


def job_url(npc_id: uuid.UUID, job_id: uuid.UUID) -> str:
    return f"/api/npcs/{npc_id}/generation-jobs/{job_id}"


async def poll_until_done(
    api: httpx.AsyncClient, npc_id: uuid.UUID, job_id: uuid.UUID
) -> dict[str, Any]:
    async def finished() -> dict[str, Any] | None:
        response = await api.get(job_url(npc_id, job_id))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert body["jobId"] == str(job_id)
        return body if body["status"] in ("succeeded", "failed") else None

    done: dict[str, Any] = await wait_for(finished, timeout=30, interval=0.1)
    return done


async def poll_once_through(
    db_dsn: str, storage: SupabaseStorage, npc_id: uuid.UUID, job_id: uuid.UUID
) -> httpx.Response:
    """One poll through an API on `storage` (closed afterwards)."""
    try:
        async with api_on(db_dsn, storage) as api:
            return await api.get(job_url(npc_id, job_id))
    finally:
        await storage.close()


async def succeeded_job(
    conn: Any, db_dsn: str, worker_storage: SupabaseStorage
) -> tuple[uuid.UUID, uuid.UUID]:
    npc_id = await make_npc(conn)
    async with running_worker(db_dsn, storage=worker_storage):
        job_id = await enqueue(conn, npc_id)
        await wait_status(conn, npc_id, "succeeded", "failed")
    assert (await attempts(conn, job_id)) == [("succeeded", None)]
    return npc_id, job_id


# --- the happy path ---------------------------------------------------------------------------


async def test_generate_upload_and_poll_returns_the_stored_xml(
    conn: Any,
    db_dsn: str,
    standin: SupabaseStorageStandIn,
    worker_storage: SupabaseStorage,
    api: httpx.AsyncClient,
) -> None:
    npc_id = await make_npc(conn)
    async with running_worker(db_dsn, storage=worker_storage):
        started = await api.post(f"/api/npcs/{npc_id}/generate")
        assert started.status_code == 202, started.text
        job_id = uuid.UUID(started.json()["jobId"])
        body = await poll_until_done(api, npc_id, job_id)

    assert body["status"] == "succeeded", body
    assert body["error"] is None
    stored = standin.object(BUCKET, f"{npc_id}.xml")
    assert stored is not None
    assert stored.content_type == XML_CONTENT_TYPE == "application/xml"
    assert body["xml"].encode("utf-8") == stored.data
    assert body["contentSizeBytes"] == len(stored.data)
    assert stored.data.startswith(b"<?xml") and b"<npc " in stored.data
    row = await conn.fetchrow("SELECT content_size_bytes FROM npcs WHERE id = $1", npc_id)
    assert row["content_size_bytes"] == len(stored.data)
    uploads = [r for r in standin.requests if r.method in ("POST", "PUT") and "/object/" in r.path]
    assert [r.path for r in uploads] == [f"/storage/v1/object/{BUCKET}/{npc_id}.xml"]
    assert uploads[0].headers["x-upsert"] == "true"


# --- faults during upload ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "retry_after"),
    [("internal", None), ("slowdown", "1"), ("gateway", None), ("drop", None)],
    ids=["500", "SlowDown", "gateway-502", "dropped"],
)
async def test_storage_fault_during_upload_is_retried_without_a_new_model_call(
    conn: Any,
    db_dsn: str,
    standin: SupabaseStorageStandIn,
    worker_storage: SupabaseStorage,
    api: httpx.AsyncClient,
    fault: str,
    retry_after: str | None,
) -> None:
    npc_id = await make_npc(conn)
    standin.fail_next(fault, 2, retry_after=retry_after)  # type: ignore[arg-type]
    model = ScriptedProvider()
    async with running_worker(db_dsn, storage=worker_storage, provider=model):
        job_id = await enqueue(conn, npc_id)
        body = await poll_until_done(api, npc_id, job_id)

    assert body["status"] == "succeeded", body
    # The XML was made once; only its upload was tried again, within the same attempt.
    assert model.calls == 1
    assert await attempts(conn, job_id) == [("succeeded", None)]
    uploads = [r for r in standin.requests if r.method in ("POST", "PUT") and "/object/" in r.path]
    assert len(uploads) == 3
    stored = standin.object(BUCKET, f"{npc_id}.xml")
    assert stored is not None and body["xml"].encode("utf-8") == stored.data
    assert standin.pending_faults == 0


async def test_missing_bucket_fails_at_once_with_no_such_bucket(
    conn: Any, db_dsn: str, standin: SupabaseStorageStandIn, api: httpx.AsyncClient
) -> None:
    npc_id = await make_npc(conn)
    storage = storage_for(standin, bucket="bucket-nobody-created")
    try:
        async with running_worker(db_dsn, storage=storage, max_attempts=3):
            job_id = await enqueue(conn, npc_id)
            body = await poll_until_done(api, npc_id, job_id)
    finally:
        await storage.close()

    assert body["status"] == "failed"
    assert body["xml"] is None
    assert body["error"]["code"] == "STORAGE_ERROR"
    row = await conn.fetchrow(
        "SELECT generation_job_error AS error, generation_job_attempts AS attempts "
        "FROM npcs WHERE id = $1",
        npc_id,
    )
    assert row["error"]["code"] == "STORAGE_ERROR"
    assert row["error"]["details"]["storageCode"] == "NoSuchBucket"
    assert row["attempts"] == 1
    assert await attempts(conn, job_id) == [("failed", "STORAGE_ERROR")]
    assert standin.objects == {}


async def test_wrong_service_key_fails_access_denied_and_is_never_echoed(
    conn: Any,
    db_dsn: str,
    standin: SupabaseStorageStandIn,
    api: httpx.AsyncClient,
    logs: CapturedLogs,
) -> None:
    npc_id = await make_npc(conn)
    storage = storage_for(standin, key=FOREIGN_SERVICE_KEY)
    try:
        async with running_worker(db_dsn, storage=storage):
            job_id = await enqueue(conn, npc_id)
            body = await poll_until_done(api, npc_id, job_id)
    finally:
        await storage.close()

    assert body["status"] == "failed"
    assert body["error"]["code"] == "STORAGE_ERROR"
    error = await conn.fetchval("SELECT generation_job_error FROM npcs WHERE id = $1", npc_id)
    assert error["code"] == "STORAGE_ERROR"
    assert error["details"]["storageCode"] == "AccessDenied"
    assert await attempts(conn, job_id) == [("failed", "STORAGE_ERROR")]
    attempt_rows = await conn.fetch(
        "SELECT * FROM npc_generation_attempts WHERE job_id = $1", job_id
    )
    # The storage really was asked with the wrong key (so there was something to leak).
    assert any(r.headers.get("apikey") == FOREIGN_SERVICE_KEY for r in standin.requests)
    places = {
        "job error": json.dumps(error),
        "attempt rows": json.dumps([dict(r) for r in attempt_rows], default=str),
        "API answer": json.dumps(body),
        "logs": logs.text,
    }
    assert logs.lines, "the worker logged nothing to check"
    for place, text in places.items():
        assert FOREIGN_SERVICE_KEY not in text, place
        assert FOREIGN_SERVICE_KEY.rsplit(".", 1)[-1] not in text, (
            place
        )  # not even the signature part


# --- polling after success --------------------------------------------------------------------


async def test_object_deleted_after_success_answers_404_xml_not_found(
    conn: Any,
    db_dsn: str,
    standin: SupabaseStorageStandIn,
    worker_storage: SupabaseStorage,
    api: httpx.AsyncClient,
) -> None:
    npc_id, job_id = await succeeded_job(conn, db_dsn, worker_storage)
    assert (await api.get(job_url(npc_id, job_id))).status_code == 200
    # Someone deletes the file (dashboard, lifecycle script) through the storage API.
    async with httpx.AsyncClient(base_url=standin.url) as raw:
        deleted = await raw.request(
            "DELETE",
            f"/storage/v1/object/{BUCKET}",
            json={"prefixes": [f"{npc_id}.xml"]},
            headers={"Authorization": f"Bearer {SERVICE_ROLE_KEY}", "apiKey": SERVICE_ROLE_KEY},
        )
    assert deleted.status_code == 200, deleted.text
    assert standin.object(BUCKET, f"{npc_id}.xml") is None

    response = await api.get(job_url(npc_id, job_id))
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["code"] == "XML_NOT_FOUND"
    message = error["message"].lower()
    assert "regenerat" in message or "new generation" in message, error["message"]
    assert "no-store" in response.headers["cache-control"]


@pytest.mark.parametrize("fault", ["internal", "slowdown", "drop", "gateway"])
async def test_storage_outage_during_poll_answers_503_with_retry_after(
    conn: Any,
    db_dsn: str,
    standin: SupabaseStorageStandIn,
    worker_storage: SupabaseStorage,
    api: httpx.AsyncClient,
    fault: str,
) -> None:
    npc_id, job_id = await succeeded_job(conn, db_dsn, worker_storage)
    first = await api.get(job_url(npc_id, job_id))  # also warms a keep-alive connection to drop
    assert first.status_code == 200

    standin.fail_next(fault)  # type: ignore[arg-type]
    response = await api.get(job_url(npc_id, job_id))
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "XML_FETCH_FAILED"
    assert float(response.headers["retry-after"]) > 0
    assert "no-store" in response.headers["cache-control"]

    # Storage is back: the same poll answers with the XML again.
    again = await api.get(job_url(npc_id, job_id))
    assert again.status_code == 200
    assert again.json()["xml"] == first.json()["xml"]


async def test_storage_down_during_poll_answers_503_not_500(
    conn: Any, db_dsn: str, worker_storage: SupabaseStorage
) -> None:
    npc_id, job_id = await succeeded_job(conn, db_dsn, worker_storage)
    async with running_storage_standin() as gone:
        url = gone.url  # a port nothing listens on once the block ends
    storage = SupabaseStorage(url, SERVICE_ROLE_KEY, BUCKET, timeout_seconds=2)
    response = await poll_once_through(db_dsn, storage, npc_id, job_id)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "XML_FETCH_FAILED"
    assert "retry-after" in response.headers


@pytest.mark.parametrize(
    ("key", "bucket", "storage_code"),
    [
        # The download route lets a bad key through as no one, to whom a private bucket is
        # invisible: the server answers NoSuchBucket, not AccessDenied.
        (mint_key("service_role", expires_in=-60), BUCKET, "NoSuchBucket"),
        (FOREIGN_SERVICE_KEY, BUCKET, "NoSuchBucket"),
        (SERVICE_ROLE_KEY, "bucket-nobody-created", "NoSuchBucket"),
    ],
    ids=["expired-key", "other-projects-key", "no-bucket"],
)
async def test_storage_refusing_the_read_answers_502_and_is_logged(
    conn: Any,
    db_dsn: str,
    standin: SupabaseStorageStandIn,
    worker_storage: SupabaseStorage,
    logs: CapturedLogs,
    key: str,
    bucket: str,
    storage_code: str,
) -> None:
    # Was: 503 + Retry-After for every storage error, so pollers retried forever, and no log.
    npc_id, job_id = await succeeded_job(conn, db_dsn, worker_storage)
    storage = storage_for(standin, key=key, bucket=bucket)
    response = await poll_once_through(db_dsn, storage, npc_id, job_id)
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "STORAGE_ERROR"
    assert error["details"] == {"storageCode": storage_code}
    assert "retry-after" not in response.headers
    assert "no-store" in response.headers["cache-control"]
    logged = [json.loads(line) for line in logs.lines]
    refusal = next(line for line in logged if line["msg"] == "storage refused to return the XML")
    assert refusal["level"] == "error" and refusal["storage_code"] == storage_code
    assert refusal["npc_id"] == str(npc_id) and refusal["job_id"] == str(job_id)
    assert key not in logs.text and key not in response.text
