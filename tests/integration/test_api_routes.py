"""The HTTP API's routes on a real database: ownership, strict input, response shapes, limits."""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest

from apikit import (
    BUCKET,
    add_attempt,
    api_harness,
    bearer,
    jwt_settings,
    owner_of,
    queue_job,
    set_status,
    token,
)
from conftest import make_npc
from npcforge.api.app import create_app
from npcforge.db.connect import create_pool
from npcforge.storage.base import xml_key
from npcforge.storage.filesystem import FilesystemStorage


@pytest.fixture
async def npc(conn: Any) -> tuple[uuid.UUID, uuid.UUID]:
    """An NPC with its own owner; returns (npc id, owner id)."""
    npc_id = await make_npc(conn, ownerId=str(uuid.uuid4()))
    return npc_id, await owner_of(conn, npc_id)


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return error


# --- ownership: foreign, deleted and unknown NPCs look the same --------------------------


async def test_foreign_deleted_and_unknown_npcs_are_not_found(conn, db_dsn, storage_dir, npc):
    _, owner = npc
    foreign = await make_npc(conn, ownerId=str(uuid.uuid4()))
    foreign_job = await queue_job(conn, foreign)
    deleted = await make_npc(conn, ownerId=str(owner))
    deleted_job = await queue_job(conn, deleted)
    await conn.execute("UPDATE npcs SET deleted_at = now() WHERE id = $1", deleted)
    unknown = uuid.uuid4()
    headers = bearer(token(owner))
    bodies = []
    async with api_harness(db_dsn, storage_dir) as api:
        for target, job in (
            (foreign, foreign_job),
            (deleted, deleted_job),
            (unknown, uuid.uuid4()),
        ):
            start = await api.client.post(f"/api/npcs/{target}/generate", headers=headers)
            poll = await api.client.get(
                f"/api/npcs/{target}/generation-jobs/{job}", headers=headers
            )
            listing = await api.client.get(f"/api/npcs/{target}/generation-jobs", headers=headers)
            for response in (start, poll, listing):
                assert_error(response, 404, "NPC_NOT_FOUND")
                bodies.append(response.json())
    # Not a hint of which one exists: every answer is the same document.
    assert all(body == bodies[0] for body in bodies)
    # Nothing was started on the foreign or the deleted NPC.
    rows = await conn.fetch(
        "SELECT generation_job_id FROM npcs WHERE id = ANY($1::uuid[])", [foreign, deleted]
    )
    assert {row["generation_job_id"] for row in rows} == {foreign_job, deleted_job}


async def test_unknown_and_superseded_job_ids(conn, db_dsn, storage_dir, npc):
    npc_id, owner = npc
    headers = bearer(token(owner))
    async with api_harness(db_dsn, storage_dir) as api:
        first = (await api.client.post(f"/api/npcs/{npc_id}/generate", headers=headers)).json()
        forced = await api.client.post(f"/api/npcs/{npc_id}/generate?force=true", headers=headers)
        assert forced.status_code == 202
        old = await api.client.get(
            f"/api/npcs/{npc_id}/generation-jobs/{first['jobId']}", headers=headers
        )
        made_up = await api.client.get(
            f"/api/npcs/{npc_id}/generation-jobs/{uuid.uuid4()}", headers=headers
        )
        current = await api.client.get(
            f"/api/npcs/{npc_id}/generation-jobs/{forced.json()['jobId']}", headers=headers
        )
    assert_error(old, 404, "GENERATION_JOB_NOT_FOUND")
    assert_error(made_up, 404, "GENERATION_JOB_NOT_FOUND")
    assert current.status_code == 200


# --- strict input --------------------------------------------------------------------------

GOOD = "0b7c6f0e-3f5a-4c59-9d1e-2f1a4b1c2d3e"


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("POST", "/api/npcs/not-a-uuid/generate", "npcId"),
        ("POST", "/api/npcs/0b7c6f0e3f5a4c599d1e2f1a4b1c2d3e/generate", "npcId"),
        ("POST", "/api/npcs/{0b7c6f0e-3f5a-4c59-9d1e-2f1a4b1c2d3e}/generate", "npcId"),
        ("GET", f"/api/npcs/{GOOD}/generation-jobs/123", "jobId"),
        ("GET", "/api/npcs/x/generation-jobs/y", "npcId"),
        ("GET", f"/api/npcs/{GOOD}%0A/generation-jobs", "npcId"),
        ("GET", f"/api/npcs/{GOOD}/generation-jobs/{GOOD}%20", "jobId"),
        ("GET", "/api/npcs/urn:uuid:0b7c6f0e-3f5a-4c59-9d1e-2f1a4b1c2d3e/generation-jobs", "npcId"),
    ],
)
async def test_path_ids_must_be_uuids(db_dsn, storage_dir, npc, method, path, field):
    _, owner = npc
    async with api_harness(db_dsn, storage_dir) as api:
        response = await api.client.request(method, path, headers=bearer(token(owner)))
    error = assert_error(response, 400, "INVALID_PATH_PARAMETERS")
    assert field in error["details"]["fieldErrors"]


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("generate", "force=yes", "force"),
        ("generate", "force=1", "force"),
        ("generate", "force=TRUE", "force"),
        ("generate", "force=", "force"),
        ("generate", "force=true&force=false", "force"),
        ("generate", "debug=1", "debug"),
        ("generation-jobs", "limit=0", "limit"),
        ("generation-jobs", "limit=101", "limit"),
        ("generation-jobs", "limit=ten", "limit"),
        ("generation-jobs", "cursor=%2F%2F", "cursor"),
        ("generation-jobs", "cursor=bm90LWEtY3Vyc29y", "cursor"),
        ("generation-jobs", "cursor=12-0b7c6f0e3f5a4c599d1e2f1a4b1c2d3", "cursor"),
        ("generation-jobs", "page=2", "page"),
        ("generation-jobs/{job}", "_=123", "_"),
    ],
)
async def test_query_parameters_are_strict(conn, db_dsn, storage_dir, npc, path, query, field):
    npc_id, owner = npc
    job_id = await queue_job(conn, npc_id)
    method = "POST" if path == "generate" else "GET"
    url = f"/api/npcs/{npc_id}/{path.format(job=job_id)}?{query}"
    async with api_harness(db_dsn, storage_dir) as api:
        response = await api.client.request(method, url, headers=bearer(token(owner)))
    error = assert_error(response, 400, "INVALID_QUERY_PARAMETERS")
    assert field in error["details"]["fieldErrors"]
    # Nothing was started by a rejected request.
    assert await conn.fetchval("SELECT generation_job_id FROM npcs WHERE id = $1", npc_id) == job_id


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{not json", {"message": "Request body must be valid JSON."}),
        (b"\xff\xfe", {"message": "Request body must be valid JSON."}),
        (b"[]", {"message": "Request body must be a JSON object."}),
        (b"null", {"message": "Request body must be a JSON object."}),
        (b'"text"', {"message": "Request body must be a JSON object."}),
        (b'{"regenerate": true, "extra": 1}', "extra"),
        (b'{"current_xml": "<npc/>"}', "current_xml"),
        (b'{"regenerate": "true"}', "regenerate"),
        (b'{"regenerate": 1}', "regenerate"),
        (b'{"regenerate": null}', "regenerate"),
        (b'{"currentXml": 5}', "currentXml"),
        (json.dumps({"currentXml": "x" * 131_073}).encode(), "currentXml"),
    ],
    ids=[
        "invalid-json", "not-utf8", "array", "null", "string", "unknown-key", "snake-case",
        "bool-as-text", "bool-as-int", "null-regenerate", "xml-not-text", "xml-too-long",
    ],
)  # fmt: skip
async def test_generate_body_is_strict(conn, db_dsn, storage_dir, npc, body, detail):
    npc_id, owner = npc
    headers = {**bearer(token(owner)), "Content-Type": "application/json"}
    async with api_harness(db_dsn, storage_dir) as api:
        response = await api.client.post(
            f"/api/npcs/{npc_id}/generate", content=body, headers=headers
        )
    error = assert_error(response, 400, "INVALID_BODY")
    if isinstance(detail, dict):
        assert error["details"] == detail
    else:
        assert detail in error["details"]["fieldErrors"]
    assert await conn.fetchval("SELECT generation_job_id FROM npcs WHERE id = $1", npc_id) is None


@pytest.mark.parametrize(
    "body",
    [
        None,
        b"",
        b"  \n",
        b"{}",
        b'{"regenerate": true, "currentXml": null}',
        json.dumps({"regenerate": False, "currentXml": "x" * 131_072}).encode(),
    ],
    ids=["none", "empty", "blank", "empty-object", "both-keys", "longest-xml"],
)
async def test_generate_accepts_the_optional_body(conn, db_dsn, storage_dir, npc, body):
    npc_id, owner = npc
    async with api_harness(db_dsn, storage_dir) as api:
        response = await api.client.post(
            f"/api/npcs/{npc_id}/generate", content=body, headers=bearer(token(owner))
        )
    assert response.status_code == 202, response.text


async def test_bodies_over_256_kib_are_413(db_dsn, storage_dir, npc):
    npc_id, owner = npc
    headers = bearer(token(owner))
    big = b'{"currentXml": "' + b"x" * (256 * 1024) + b'"}'

    async def chunks():
        for start in range(0, len(big), 16 * 1024):
            yield big[start : start + 16 * 1024]

    async with api_harness(db_dsn, storage_dir) as api:
        declared = await api.client.post(
            f"/api/npcs/{npc_id}/generate", content=big, headers=headers
        )
        streamed = await api.client.post(
            f"/api/npcs/{npc_id}/generate", content=chunks(), headers=headers
        )
    assert_error(declared, 413, "PAYLOAD_TOO_LARGE")
    assert_error(streamed, 413, "PAYLOAD_TOO_LARGE")


# --- response shapes -------------------------------------------------------------------------


async def test_generate_then_conflict_then_force(db_dsn, storage_dir, npc):
    npc_id, owner = npc
    headers = bearer(token(owner))
    async with api_harness(db_dsn, storage_dir) as api:
        first = await api.client.post(f"/api/npcs/{npc_id}/generate", headers=headers)
        conflict = await api.client.post(
            f"/api/npcs/{npc_id}/generate?force=false", headers=headers
        )
        forced = await api.client.post(f"/api/npcs/{npc_id}/generate?force=true", headers=headers)
    assert first.status_code == 202
    body = first.json()
    assert set(body) == {"jobId", "status", "npcId", "submittedAt"}
    assert body["status"] == "queued" and body["npcId"] == str(npc_id)
    assert datetime.fromisoformat(body["submittedAt"]).tzinfo is not None
    error = assert_error(conflict, 409, "GENERATION_JOB_CONFLICT")
    assert error["details"] == {"status": "queued"}
    assert forced.status_code == 202 and forced.json()["jobId"] != body["jobId"]


async def test_updated_at_is_the_rows_last_change_not_the_poll_time(conn, db_dsn, storage_dir, npc):
    npc_id, owner = npc
    job_id = await queue_job(conn, npc_id)
    await set_status(conn, npc_id, "processing")
    changed = await conn.fetchval(
        "SELECT generation_job_updated_at FROM npcs WHERE id = $1", npc_id
    )
    url = f"/api/npcs/{npc_id}/generation-jobs/{job_id}"
    async with api_harness(db_dsn, storage_dir) as api:
        first = await api.client.get(url, headers=bearer(token(owner)))
        await asyncio.sleep(0.05)
        second = await api.client.get(url, headers=bearer(token(owner)))
    body = first.json()
    assert body["status"] == "processing" and body["xml"] is None and body["error"] is None
    assert datetime.fromisoformat(body["updatedAt"]) == changed
    assert second.json()["updatedAt"] == body["updatedAt"]
    assert body["attempts"] == 1


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ({"code": "AI_TIMEOUT", "message": "the model took too long", "requestId": "r1"},
         {"code": "AI_TIMEOUT", "message": "the model took too long"}),
        ({"code": "AI_INVALID_XML"}, {"code": "AI_INVALID_XML", "message": "AI_INVALID_XML"}),
        ({"message": "no code"}, {"code": "INTERNAL", "message": "The job failed without a recorded reason."}),
        (None, {"code": "INTERNAL", "message": "The job failed without a recorded reason."}),
    ],
    ids=["full", "code-only", "no-code", "no-error"],
)  # fmt: skip
async def test_failed_jobs_always_carry_code_and_message(
    conn, db_dsn, storage_dir, npc, stored, expected
):
    npc_id, owner = npc
    job_id = await queue_job(conn, npc_id)
    # The row still holds the size of an earlier job's file; it is not this job's.
    await set_status(conn, npc_id, "failed", error=stored, size=777)
    async with api_harness(db_dsn, storage_dir) as api:
        response = await api.client.get(
            f"/api/npcs/{npc_id}/generation-jobs/{job_id}", headers=bearer(token(owner))
        )
    body = response.json()
    assert body["status"] == "failed" and body["xml"] is None
    assert body["contentSizeBytes"] is None
    assert body["error"] == expected


async def test_succeeded_job_returns_the_stored_xml(conn, db_dsn, storage_dir, npc):
    npc_id, owner = npc
    job_id = await queue_job(conn, npc_id)
    xml = '<?xml version="1.0"?>\n<npc name="Ünïcode"/>\n'.encode()
    await set_status(conn, npc_id, "succeeded", size=len(xml))
    url = f"/api/npcs/{npc_id}/generation-jobs/{job_id}"
    async with api_harness(db_dsn, storage_dir) as api:
        await api.storage.put(xml_key(npc_id), xml)
        ok = await api.client.get(url, headers=bearer(token(owner)))
        api.storage.path_for(xml_key(npc_id)).unlink()
        missing = await api.client.get(url, headers=bearer(token(owner)))
        shutil.rmtree(api.storage.bucket_dir)
        broken = await api.client.get(url, headers=bearer(token(owner)))
    body = ok.json()
    assert body["status"] == "succeeded"
    assert body["xml"] == xml.decode()
    assert body["contentSizeBytes"] == len(xml)
    assert body["error"] is None
    assert_error(missing, 404, "XML_NOT_FOUND")
    # The bucket is gone: polling again cannot help, so no 503 and no Retry-After.
    assert_error(broken, 502, "STORAGE_ERROR")
    assert broken.json()["error"]["details"] == {"storageCode": "NoSuchBucket"}
    assert "retry-after" not in broken.headers


async def test_each_poll_answers_from_the_rows_and_files_current_state(
    conn, db_dsn, storage_dir, npc
):
    # Answers are kept serialized between polls; none may outlive what it was made from.
    npc_id, owner = npc
    job_id = await queue_job(conn, npc_id)
    first, second = b'<npc name="A"/>\n', b'<npc name="B"/>\n'  # the same size
    await set_status(conn, npc_id, "succeeded", size=len(first))
    url = f"/api/npcs/{npc_id}/generation-jobs/{job_id}"
    headers = bearer(token(owner))
    seen = []
    async with api_harness(db_dsn, storage_dir) as api:

        async def poll() -> dict[str, Any]:
            response = await api.client.get(url, headers=headers)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            seen.append((body["xml"], body["attempts"], body["status"], body["error"]))
            return body

        await api.storage.put(xml_key(npc_id), first)
        await poll()
        await poll()
        await api.storage.put(xml_key(npc_id), second)  # new bytes, same row
        await poll()
        await conn.execute(  # same bytes, new row
            "UPDATE npcs SET generation_job_attempts = 2 WHERE id = $1", npc_id
        )
        await poll()
        await set_status(conn, npc_id, "failed", error={"code": "AI_TIMEOUT", "message": "slow"})
        await poll()
        await set_status(conn, npc_id, "failed", error={"code": "AI_UPSTREAM", "message": "502"})
        await poll()
        url = f"/api/npcs/{npc_id}/generation-jobs/{await queue_job(conn, npc_id)}"  # a new job
        await set_status(conn, npc_id, "failed", error={"code": "AI_UPSTREAM", "message": "502"})
        newest = await poll()
    assert newest["jobId"] in url
    timeout = {"code": "AI_TIMEOUT", "message": "slow"}
    assert seen == [
        (first.decode(), 1, "succeeded", None),
        (first.decode(), 1, "succeeded", None),
        (second.decode(), 1, "succeeded", None),
        (second.decode(), 2, "succeeded", None),
        (None, 2, "failed", timeout),
        (None, 2, "failed", {"code": "AI_UPSTREAM", "message": "502"}),
        (None, 1, "failed", {"code": "AI_UPSTREAM", "message": "502"}),
    ]


# --- abuse limits ----------------------------------------------------------------------------


async def test_job_starts_are_capped_per_user(conn, db_dsn, storage_dir, npc):
    npc_id, owner = npc
    mine = [npc_id] + [await make_npc(conn, ownerId=str(owner)) for _ in range(3)]
    theirs = await make_npc(conn, ownerId=str(uuid.uuid4()))
    their_owner = await owner_of(conn, theirs)
    settings = jwt_settings(NPCFORGE_GENERATE_PER_MINUTE="3")
    headers = bearer(token(owner))
    async with api_harness(db_dsn, storage_dir, settings=settings) as api:

        async def start(npc: uuid.UUID, auth: dict[str, str] = headers) -> Any:
            return await api.client.post(f"/api/npcs/{npc}/generate", headers=auth)

        assert (await start(mine[0])).status_code == 202
        # Refused starts (409, 404) do not use up the allowance.
        for _ in range(5):
            assert (await start(mine[0])).status_code == 409
            assert (await start(theirs)).status_code == 404
        assert (await start(mine[1])).status_code == 202
        assert (await start(mine[2])).status_code == 202
        limited = await start(mine[3])
        # Other users and the service role have their own allowance.
        other = await start(theirs, bearer(token(their_owner)))
        by_service = await start(mine[3], bearer(token(None, aud=None, role="service_role")))
        # Polling is not limited.
        polled = await api.client.get(f"/api/npcs/{mine[0]}/generation-jobs", headers=headers)
        metrics = (await api.client.get("/metrics")).text
    status = await conn.fetchval("SELECT generation_job_status FROM npcs WHERE id = $1", mine[3])
    error = assert_error(limited, 429, "RATE_LIMITED")
    assert error["details"] == {"limit": 3, "windowSeconds": 60}
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert status == "queued"  # started by the service role, not by the refused request
    assert other.status_code == 202
    assert by_service.status_code == 202
    assert polled.status_code == 200
    assert "npcforge_api_rate_limited_total 1.0" in metrics
    assert "npcforge_api_jobs_started_total 5.0" in metrics


async def test_concurrent_starts_do_not_overshoot_the_cap(conn, db_dsn, storage_dir, npc):
    _, owner = npc
    npcs = [await make_npc(conn, ownerId=str(owner)) for _ in range(6)]
    settings = jwt_settings(NPCFORGE_GENERATE_PER_MINUTE="2")
    headers = bearer(token(owner))
    async with api_harness(db_dsn, storage_dir, settings=settings) as api:
        responses = await asyncio.gather(
            *(api.client.post(f"/api/npcs/{n}/generate", headers=headers) for n in npcs)
        )
    codes = sorted(r.status_code for r in responses)
    assert codes == [202, 202, 429, 429, 429, 429]


# --- CORS ------------------------------------------------------------------------------------


async def test_cors_allow_list(conn, db_dsn, storage_dir, npc):
    npc_id, owner = npc
    job_id = await queue_job(conn, npc_id)
    url = f"/api/npcs/{npc_id}/generation-jobs/{job_id}"
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    settings = jwt_settings(NPCFORGE_CORS_ORIGINS="https://app.example, https://admin.example")
    async with api_harness(db_dsn, storage_dir, settings=settings) as api:
        allowed = await api.client.options(f"/api/npcs/{npc_id}/generate", headers=preflight)
        refused = await api.client.options(
            f"/api/npcs/{npc_id}/generate", headers={**preflight, "Origin": "https://evil.example"}
        )
        simple = await api.client.get(
            url, headers={**bearer(token(owner)), "Origin": "https://admin.example"}
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert allowed.headers["access-control-allow-credentials"] == "true"  # the session cookie
    assert_error(refused, 403, "ORIGIN_NOT_ALLOWED")
    assert "access-control-allow-origin" not in refused.headers
    assert simple.headers["access-control-allow-origin"] == "https://admin.example"
    assert "retry-after" in simple.headers["access-control-expose-headers"].lower()

    async with api_harness(db_dsn, storage_dir) as api:  # NPCFORGE_CORS_ORIGINS empty
        plain = await api.client.get(
            url, headers={**bearer(token(owner)), "Origin": "https://app.example"}
        )
        options = await api.client.options(f"/api/npcs/{npc_id}/generate", headers=preflight)
    assert plain.status_code == 200
    assert "access-control-allow-origin" not in plain.headers
    # No origin is listed: a preflight learns why it is refused (not a bare 405).
    assert_error(options, 403, "ORIGIN_NOT_ALLOWED")
    assert "NPCFORGE_CORS_ORIGINS" in options.json()["error"]["message"]


# --- operations endpoints and the envelope for everything else -------------------------------


async def test_health_ready_metrics_openapi_and_unknown_routes(conn, db_dsn, storage_dir, npc):
    npc_id, owner = npc
    job_id = await queue_job(conn, npc_id)
    await add_attempt(conn, npc_id, job_id, 1, "retry", error_code="AI_TIMEOUT")
    async with api_harness(db_dsn, storage_dir) as api:
        client = api.client
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        await client.get(f"/api/npcs/{npc_id}/generation-jobs/{job_id}")  # 401
        await client.get(
            f"/api/npcs/{npc_id}/generation-jobs/{job_id}", headers=bearer(token(owner))
        )
        document = await client.get("/openapi.json")
        nowhere = await client.get("/api/nowhere")
        wrong_method = await client.put(f"/api/npcs/{npc_id}/generate")
        metrics = await client.get("/metrics")
    assert health.json() == {"status": "ok"}
    assert ready.json() == {"status": "ready"}
    assert document.json() == api.app.state.openapi
    assert document.headers["cache-control"] == "no-store"
    assert_error(nowhere, 404, "NOT_FOUND")
    assert_error(wrong_method, 405, "METHOD_NOT_ALLOWED")
    assert wrong_method.headers["allow"] == "POST"
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    route = "/api/npcs/{npcId}/generation-jobs/{jobId}"
    assert f'npcforge_api_requests_total{{method="GET",route="{route}",status="200"}} 1.0' in text
    assert f'npcforge_api_requests_total{{method="GET",route="{route}",status="401"}} 1.0' in text
    assert 'npcforge_api_auth_failures_total{reason="missing"} 1.0' in text
    assert 'route="unmatched"' in text
    assert str(npc_id) not in text  # ids never become label values


async def test_readyz_is_503_without_a_database(db_dsn, storage_dir):
    async with api_harness(db_dsn, storage_dir) as api:
        await api.app.state.pool.close()
        response = await api.client.get("/readyz")
    assert_error(response, 503, "NOT_READY")
    assert response.headers["retry-after"] == "5"


async def test_a_serving_process_freezes_its_start_up_heap_while_it_serves(
    conn, db_dsn, storage_dir, npc
):
    npc_id, owner = npc
    job_id = await queue_job(conn, npc_id)
    pool = await create_pool(db_dsn, max_size=2)
    storage = FilesystemStorage(storage_dir, BUCKET)
    app = create_app(jwt_settings(), storage=storage, pool=pool, freeze_heap=True)
    assert gc.get_freeze_count() == 0
    try:
        async with app.router.lifespan_context(app):
            frozen = gc.get_freeze_count()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
                poll = await client.get(
                    f"/api/npcs/{npc_id}/generation-jobs/{job_id}", headers=bearer(token(owner))
                )
    finally:
        await pool.close()
    assert poll.status_code == 200 and poll.json()["status"] == "queued"
    assert frozen > 10_000  # the modules and objects built at start-up
    assert gc.get_freeze_count() == 0  # the test process goes on as before
