"""The original web UI's way in: same-origin requests carrying only the Supabase session cookie
(`sb-<project-ref>-auth-token`, as @supabase/ssr writes it), polled every 2.5 s; an Origin check
on cookie-authenticated writes; CORS with credentials for listed origins."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any
from urllib.parse import quote

import pytest

from apikit import api_harness, bearer, jwt_settings, owner_of, session_cookie
from apikit import token as any_project_token
from conftest import make_npc
from workerkit import running_worker

PROJECT = "https://abcdefghijklmnop.supabase.co"
SAME_ORIGIN = {"Origin": "http://api.test"}  # the client's base URL: the API's own origin


@pytest.fixture
async def npc(conn) -> tuple[uuid.UUID, uuid.UUID]:
    npc_id = await make_npc(conn)
    return npc_id, await owner_of(conn, npc_id)


def token(sub: Any, **claims: Any) -> str:
    """An access token of PROJECT's Supabase Auth (its `iss`), as the UI's session holds it."""
    return any_project_token(sub, iss=f"{PROJECT}/auth/v1", **claims)


def settings(**overrides: Any) -> Any:
    return jwt_settings(SUPABASE_URL=PROJECT, **overrides)


async def test_a_request_with_only_the_supabase_cookie_starts_and_polls_a_job(
    conn, db_dsn, storage_dir, npc
):
    npc_id, owner = npc
    # A session with a big user record is split over several cookies, as the browser holds it.
    cookie = session_cookie(
        token(owner), user={"id": str(owner), "user_metadata": {"bio": "x" * 5000}}
    )
    assert "auth-token.1=" in cookie["Cookie"]
    async with (
        running_worker(db_dsn, storage_dir),
        api_harness(db_dsn, storage_dir, settings=settings()) as api,
    ):
        started = await api.client.post(
            f"/api/npcs/{npc_id}/generate", json={"regenerate": False, "currentXml": None},
            headers={**cookie, **SAME_ORIGIN, "Content-Type": "application/json"},
        )  # fmt: skip
        assert started.status_code == 202, started.text
        job = started.json()["jobId"]
        for _ in range(200):
            # The UI's poller: a plain same-origin GET with the cookie (browsers send no Origin).
            polled = await api.client.get(
                f"/api/npcs/{npc_id}/generation-jobs/{job}", headers=cookie
            )
            assert polled.status_code == 200, polled.text
            if polled.json()["status"] == "succeeded":
                break
            await asyncio.sleep(0.05)
    assert polled.json()["xml"].startswith("<?xml")


async def test_cookie_writes_need_an_allowed_origin(conn, db_dsn, storage_dir, npc):
    npc_id, owner = npc
    cookie = session_cookie(token(owner))
    url = f"/api/npcs/{npc_id}/generate"
    listed = settings(NPCFORGE_CORS_ORIGINS="https://app.example")
    async with api_harness(db_dsn, storage_dir, settings=listed) as api:
        for refused in (
            {"Origin": "https://evil.example"},
            {"Origin": "null"},
            {"Origin": "http://api.test.evil.example"},
            {},  # no Origin, and no Sec-Fetch-Site: same-origin either
            {"Sec-Fetch-Site": "cross-site"},
        ):
            answer = await api.client.post(url, headers={**cookie, **refused})
            assert answer.status_code == 403, (refused, answer.text)
            assert answer.json()["error"]["code"] == "ORIGIN_NOT_ALLOWED"
        assert (
            await conn.fetchval("SELECT generation_job_status FROM npcs WHERE id = $1", npc_id)
            is None
        )  # nothing was started
        # The reverse proxy keeps the API on the page's origin (https outside, http inside).
        same = await api.client.post(url, headers={**cookie, "Origin": "https://api.test"})
        assert same.status_code == 202, same.text
        forced = f"{url}?force=true"
        fetch_metadata = await api.client.post(
            forced, headers={**cookie, "Sec-Fetch-Site": "same-origin"}
        )
        assert fetch_metadata.status_code == 202, fetch_metadata.text
        cross = await api.client.post(forced, headers={**cookie, "Origin": "https://app.example"})
        assert cross.status_code == 202, cross.text
        assert cross.headers["access-control-allow-origin"] == "https://app.example"
        assert cross.headers["access-control-allow-credentials"] == "true"
        # A bearer token is not sent by the browser on its own: no Origin check for it.
        other = await api.client.post(
            forced, headers={**bearer(token(owner)), "Origin": "https://evil.example"}
        )
        assert other.status_code == 202


async def test_bearer_wins_over_the_cookie_and_bad_cookies_are_401(conn, db_dsn, storage_dir, npc):
    npc_id, owner = npc
    stranger = uuid.uuid4()
    poll = f"/api/npcs/{npc_id}/generation-jobs"
    async with api_harness(db_dsn, storage_dir, settings=settings()) as api:
        mine = await api.client.get(
            poll, headers={**bearer(token(owner)), **session_cookie(token(stranger))}
        )
        assert mine.status_code == 200
        theirs = await api.client.get(
            poll, headers={**bearer(token(stranger)), **session_cookie(token(owner))}
        )
        assert theirs.status_code == 404  # the stranger's bearer token decided
        # The same session, written the older way: URI-encoded JSON without `base64-`.
        raw = quote(json.dumps({"access_token": token(owner), "refresh_token": "r"}))
        legacy = await api.client.get(
            poll, headers={"Cookie": f"sb-abcdefghijklmnop-auth-token={raw}"}
        )
        assert legacy.status_code == 200, legacy.text
        for cookie, reason in (
            (session_cookie(token(owner, expires_in=-3600)), "expired"),
            (session_cookie(token(owner, key="w" * 64)), "invalid_signature"),
            ({"Cookie": "sb-abcdefghijklmnop-auth-token=base64-%%%"}, "malformed"),
            ({"Cookie": "sb-abcdefghijklmnop-auth-token=base64-bm90IGpzb24"}, "malformed"),
        ):
            refused = await api.client.get(poll, headers=cookie)
            assert refused.status_code == 401, (reason, refused.text)
            assert refused.json()["error"]["details"]["reason"] == reason
        # Another project's session cookie is not ours.
        foreign = await api.client.get(
            poll, headers=session_cookie(token(owner), ref="otherproject")
        )
        assert foreign.status_code == 401 and "details" not in foreign.json()["error"]
    assert "r3fr35h" not in foreign.text + refused.text


async def test_the_differences_the_old_ui_meets_are_as_documented(conn, db_dsn, storage_dir, npc):
    """docs/api.md, "Differences from the original API": job-not-found code, a soft-deleted own
    NPC, an empty body."""
    npc_id, owner = npc
    cookie = {**session_cookie(token(owner)), **SAME_ORIGIN}
    async with api_harness(db_dsn, storage_dir, settings=settings()) as api:
        empty = await api.client.post(f"/api/npcs/{npc_id}/generate", headers=cookie)
        assert empty.status_code == 202, empty.text  # the original answered 400 INVALID_BODY
        unknown = await api.client.get(
            f"/api/npcs/{npc_id}/generation-jobs/{uuid.uuid4()}", headers=cookie
        )
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "GENERATION_JOB_NOT_FOUND"  # was NPC_NOT_FOUND
        await conn.execute("UPDATE npcs SET deleted_at = now() WHERE id = $1", npc_id)
        deleted = await api.client.post(
            f"/api/npcs/{npc_id}/generate?force=true", headers=cookie,
            json={"regenerate": True, "currentXml": None},
        )  # fmt: skip
        assert deleted.status_code == 404  # the original started a job on it
        assert deleted.json()["error"]["code"] == "NPC_NOT_FOUND"
