"""The storage stand-in answers as the real server was seen to answer.

Each case is one row of reference/protocols.md §B.3.1 (supabase/storage v1.70.6, file backend,
behind a /storage/v1 prefix as Kong serves it), asked over real loopback HTTP with httpx or the
real storage3 client. If the stand-in drifts from the real server, tests built on it stop
proving anything; these keep it honest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from storage3 import AsyncStorageClient
from storage3.exceptions import StorageApiError

from standins.supabase_storage import (
    ANON_KEY,
    SERVICE_ROLE_KEY,
    SupabaseStorageStandIn,
    mint_key,
    running_storage_standin,
)

BUCKET = "npc-xml-files"
KEY = "0b7e4c1a-5f0d-4e8b-9c2a-3d6f8e1b2a4c.xml"
XML = b'<?xml version="1.0" encoding="UTF-8"?>\n<npc name="Sam"/>\n'


def auth(key: str) -> dict[str, str]:
    return {"apikey": key, "Authorization": f"Bearer {key}"}


@pytest.fixture
async def standin() -> AsyncIterator[SupabaseStorageStandIn]:
    async with running_storage_standin(buckets=[BUCKET]) as running:
        yield running


@pytest.fixture
async def raw(standin: SupabaseStorageStandIn) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=standin.url + "/storage/v1") as client:
        yield client


def client(standin: SupabaseStorageStandIn, key: str) -> AsyncStorageClient:
    return AsyncStorageClient(standin.url + "/storage/v1/", auth(key))


async def upload(
    standin: SupabaseStorageStandIn, key: str = SERVICE_ROLE_KEY, **options: Any
) -> Any:
    file_options = {"content-type": "application/xml; charset=utf-8", "cache-control": "60"}
    file_options.update(options)
    async with client(standin, key) as storage:
        return await storage.from_(BUCKET).upload(KEY, XML, file_options)  # type: ignore[arg-type]


def assert_error(
    response: httpx.Response, code: str, status: str, message: str | None = None
) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    assert (body["code"], body["statusCode"]) == (code, status), body
    if message is not None:
        assert body["message"] == message


async def test_the_stored_content_type_drops_the_charset(standin: SupabaseStorageStandIn) -> None:
    await upload(standin)
    stored = standin.object(BUCKET, KEY)
    assert stored is not None and stored.content_type == "application/xml"


async def test_download_headers(standin: SupabaseStorageStandIn, raw: httpx.AsyncClient) -> None:
    await upload(standin)
    response = await raw.get(f"/object/{BUCKET}/{KEY}", headers=auth(SERVICE_ROLE_KEY))
    assert response.status_code == 200
    assert response.content == XML
    assert response.headers["cache-control"] == "max-age=60"
    assert response.headers["etag"] and response.headers["last-modified"]
    assert response.headers["content-type"] == "application/xml"


async def test_an_upsert_keeps_the_object_id(standin: SupabaseStorageStandIn) -> None:
    await upload(standin, upsert="true")
    first = standin.object(BUCKET, KEY)
    await upload(standin, upsert="true")
    second = standin.object(BUCKET, KEY)
    assert first is not None and second is not None and first.id == second.id


async def test_ten_concurrent_upserts_of_one_key_all_succeed(
    standin: SupabaseStorageStandIn,
) -> None:
    results = await asyncio.gather(*(upload(standin, upsert="true") for _ in range(10)))
    assert len(results) == 10
    assert standin.object(BUCKET, KEY) is not None


# --- the anon key: row-level security hides, it does not refuse --------------------------------


async def test_anon_key_reading_the_bucket_gets_no_such_bucket(
    standin: SupabaseStorageStandIn, raw: httpx.AsyncClient
) -> None:
    response = await raw.get(f"/bucket/{BUCKET}", headers=auth(ANON_KEY))
    assert_error(response, "NoSuchBucket", "404", "Bucket not found")


async def test_anon_key_downloading_an_existing_object_gets_no_such_key(
    standin: SupabaseStorageStandIn, raw: httpx.AsyncClient
) -> None:
    await upload(standin)
    response = await raw.get(f"/object/{BUCKET}/{KEY}", headers=auth(ANON_KEY))
    assert_error(response, "NoSuchKey", "404")
    async with client(standin, ANON_KEY) as storage:
        with pytest.raises(StorageApiError) as caught:
            await storage.from_(BUCKET).download(KEY)
    assert str(caught.value.status) == "404"


async def test_anon_key_writing_violates_row_level_security(
    standin: SupabaseStorageStandIn,
) -> None:
    rls = "new row violates row-level security policy"
    async with client(standin, ANON_KEY) as storage:
        with pytest.raises(StorageApiError) as upload_error:
            await storage.from_(BUCKET).upload(KEY, XML)
        with pytest.raises(StorageApiError) as bucket_error:
            await storage.create_bucket("another-bucket")
    assert upload_error.value.message == rls
    assert bucket_error.value.message == rls
    assert standin.objects == {} and list(standin.buckets) == [BUCKET]


# --- keys that are not valid -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (mint_key("service_role", expires_in=-3600), '"exp" claim timestamp check failed'),
        (
            mint_key("service_role", secret="some-other-projects-secret-32chars"),
            "signature verification failed",
        ),
        ("not-a-jwt-at-all", "Invalid Compact JWS"),
    ],
    ids=["expired", "bad-signature", "not-a-jwt"],
)
async def test_an_invalid_key_is_access_denied_with_the_servers_reason(
    raw: httpx.AsyncClient, key: str, message: str
) -> None:
    response = await raw.get(f"/bucket/{BUCKET}", headers=auth(key))
    assert_error(response, "AccessDenied", "403", message)


# --- shapes ------------------------------------------------------------------------------------


async def test_an_unknown_route_has_a_numeric_status_and_no_code(
    standin: SupabaseStorageStandIn,
) -> None:
    async with httpx.AsyncClient(base_url=standin.url) as bare:  # the server without /storage/v1
        response = await bare.get(f"/bucket/{BUCKET}", headers=auth(SERVICE_ROLE_KEY))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    assert body["statusCode"] == 404 and "code" not in body
    assert body["message"] == f"Route GET:/bucket/{BUCKET} not found"


async def test_bucket_json_has_no_type_and_json_names_its_charset(
    raw: httpx.AsyncClient,
) -> None:
    response = await raw.get(f"/bucket/{BUCKET}", headers=auth(SERVICE_ROLE_KEY))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    assert "type" not in body
    assert body["id"] == BUCKET and body["public"] is False


async def test_bucket_limits_are_permanent_errors(standin: SupabaseStorageStandIn) -> None:
    standin.add_bucket("small", file_size_limit=1_000_000)
    standin.add_bucket("text-only", allowed_mime_types=["text/plain"])
    async with client(standin, SERVICE_ROLE_KEY) as storage:
        with pytest.raises(StorageApiError) as too_large:
            await storage.from_("small").upload(KEY, b"x" * 2_000_000)
        with pytest.raises(StorageApiError) as wrong_type:
            await storage.from_("text-only").upload(KEY, XML, {"content-type": "application/xml"})
    assert str(too_large.value.status) == "413"
    assert str(wrong_type.value.status) == "415"


async def test_the_gateway_answers_502_while_the_server_is_down(
    standin: SupabaseStorageStandIn, raw: httpx.AsyncClient
) -> None:
    standin.outage = True
    down = await raw.get(f"/bucket/{BUCKET}", headers=auth(SERVICE_ROLE_KEY))
    standin.outage = False
    up = await raw.get(f"/bucket/{BUCKET}", headers=auth(SERVICE_ROLE_KEY))
    assert down.status_code == 502 and "code" not in down.json()
    assert up.status_code == 200
