"""The Storage contract, run against both backends, plus Supabase-specific failure handling.

The Supabase backend runs the real storage3 client over real loopback HTTP against the stand-in
in tests/standins/supabase_storage.py; nothing in storage3 or httpx is mocked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from storage3.exceptions import StorageApiError

from npcforge.config import ConfigError, Settings
from npcforge.errors import StorageError
from npcforge.storage.base import Storage
from npcforge.storage.factory import build_storage
from npcforge.storage.filesystem import FileIdentity, FilesystemStorage, RecentObjects
from npcforge.storage.supabase import (
    MAX_DOWNLOAD_BYTES,
    XML_CONTENT_TYPE,
    SupabaseStorage,
    classify_storage_failure,
)
from standins.supabase_storage import (
    FOREIGN_SERVICE_KEY,
    SERVICE_ROLE_KEY,
    SupabaseStorageStandIn,
    running_storage_standin,
)

BUCKET = "npc-xml-files"
KEY = "6f1d2c3b-0a9e-4c7d-8b5a-1e2f3a4b5c6d.xml"


def npc_xml(name: str, filler: int = 0) -> bytes:
    padding = f"<!-- {'x' * filler} -->" if filler else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<npc name="{name}" script="default.lua">'
        f'<health now="100" max="100"/>{padding}</npc>\n'
    ).encode()


def details_of(error: StorageError) -> dict[str, object]:
    return dict(error.details or {})


def assert_storage_code(error: StorageError, storage_code: str, status: str) -> None:
    assert details_of(error)["storageCode"] == storage_code
    assert details_of(error)["status"] == status


# --- backends ---------------------------------------------------------------------------------


class Backend:
    """Builds storages of one kind for any bucket name and closes them afterwards."""

    def __init__(self, kind: str, make: Callable[[str], Storage]) -> None:
        self.kind = kind
        self._make = make
        self._made: list[Storage] = []

    def storage(self, bucket: str = BUCKET) -> Storage:
        built = self._make(bucket)
        self._made.append(built)
        return built

    async def close(self) -> None:
        for built in self._made:
            await built.close()


@pytest.fixture
async def standin() -> AsyncIterator[SupabaseStorageStandIn]:
    async with running_storage_standin(buckets=[BUCKET]) as running:
        yield running


@pytest.fixture(params=["filesystem", "supabase"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "filesystem":
        root = tmp_path / "storage"
        made = Backend("filesystem", lambda bucket: FilesystemStorage(root, bucket))
        await made.storage(BUCKET).ensure_bucket()
        yield made
        await made.close()
        return
    async with running_storage_standin(buckets=[BUCKET]) as running:
        made = Backend(
            "supabase",
            lambda bucket: SupabaseStorage(
                running.url, SERVICE_ROLE_KEY, bucket, timeout_seconds=10
            ),
        )
        yield made
        await made.close()


# --- the contract -----------------------------------------------------------------------------


async def test_put_then_get_returns_the_same_bytes(backend: Backend) -> None:
    storage = backend.storage()
    data = npc_xml("Sam")
    await storage.put(KEY, data)
    assert await storage.get(KEY) == data


async def test_overwrite_replaces_the_object(backend: Backend) -> None:
    storage = backend.storage()
    await storage.put(KEY, npc_xml("Old", filler=5000))
    await storage.put(KEY, npc_xml("New"))
    assert await storage.get(KEY) == npc_xml("New")
    # A second client sees the same object.
    assert await backend.storage().get(KEY) == npc_xml("New")


async def test_missing_object_is_none(backend: Backend) -> None:
    assert await backend.storage().get("0b9d7f53-4d0a-4b8e-9a44-1c0e5b8a2f77.xml") is None


@pytest.mark.parametrize(
    "bad_key", ["../x.xml", "a/b.xml", "/abs.xml", "..", ".hidden.xml", "", "x y.xml", "%2e%2e.xml"]
)
async def test_bad_keys_are_refused_permanently(backend: Backend, bad_key: str) -> None:
    storage = backend.storage()
    with pytest.raises(StorageError) as put_error:
        await storage.put(bad_key, npc_xml("Evil"))
    with pytest.raises(StorageError) as get_error:
        await storage.get(bad_key)
    for error in (put_error.value, get_error.value):
        assert error.code == "STORAGE_ERROR"
        assert error.retryable is False
        assert details_of(error)["storageCode"] == "InvalidKey"


async def test_large_object_round_trips_byte_exact(backend: Backend) -> None:
    storage = backend.storage()
    data = npc_xml("Big", filler=250_000)
    assert 250_000 < len(data) < 262_144
    await storage.put(KEY, data)
    assert await storage.get(KEY) == data


async def test_concurrent_puts_of_one_key_leave_one_complete_object(backend: Backend) -> None:
    storage = backend.storage()
    payloads = [npc_xml(f"Writer{n}", filler=20_000 + n * 997) for n in range(16)]
    await asyncio.gather(*(storage.put(KEY, payload) for payload in payloads))
    stored = await storage.get(KEY)
    assert stored in payloads


async def test_ensure_bucket_is_idempotent(backend: Backend) -> None:
    storage = backend.storage("fresh-bucket")
    with pytest.raises(StorageError):
        await storage.check()
    assert await storage.ensure_bucket() is True
    assert await storage.ensure_bucket() is False
    await storage.check()
    await storage.put(KEY, npc_xml("Fresh"))
    assert await storage.get(KEY) == npc_xml("Fresh")


async def test_missing_bucket_is_a_permanent_failure(backend: Backend) -> None:
    storage = backend.storage("no-such-bucket")
    for attempt in (storage.check(), storage.put(KEY, npc_xml("Lost")), storage.get(KEY)):
        with pytest.raises(StorageError) as caught:
            await attempt
        assert caught.value.retryable is False
        assert_storage_code(caught.value, "NoSuchBucket", "404")


# --- filesystem specifics ---------------------------------------------------------------------


async def test_filesystem_layout_leaves_no_temp_files(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path, BUCKET)
    assert await storage.ensure_bucket() is True
    payloads = [npc_xml(f"W{n}", filler=10_000) for n in range(8)]
    await asyncio.gather(*(storage.put(KEY, payload) for payload in payloads))
    assert [p.name for p in (tmp_path / BUCKET).iterdir()] == [KEY]
    assert (tmp_path / BUCKET / KEY).read_bytes() in payloads


def test_filesystem_refuses_a_bucket_that_is_a_path(tmp_path: Path) -> None:
    for bucket in ("..", "a/b", ""):
        with pytest.raises(ConfigError):
            FilesystemStorage(tmp_path, bucket)


# --- supabase specifics -----------------------------------------------------------------------


@pytest.fixture
async def supabase(standin: SupabaseStorageStandIn) -> AsyncIterator[SupabaseStorage]:
    storage = SupabaseStorage(standin.url, SERVICE_ROLE_KEY, BUCKET, timeout_seconds=10)
    yield storage
    await storage.close()


async def test_upload_sends_xml_content_type_upsert_and_both_auth_headers(
    standin: SupabaseStorageStandIn, supabase: SupabaseStorage
) -> None:
    await supabase.put(KEY, npc_xml("Sam"))
    stored = standin.object(BUCKET, KEY)
    assert stored is not None
    assert stored.content_type == XML_CONTENT_TYPE
    assert stored.cache_control == "max-age=60"
    upload = next(r for r in standin.requests if r.method == "POST")
    assert upload.path == f"/storage/v1/object/{BUCKET}/{KEY}"
    assert upload.headers["x-upsert"] == "true"
    assert upload.headers["apikey"] == SERVICE_ROLE_KEY
    assert upload.headers["authorization"] == f"Bearer {SERVICE_ROLE_KEY}"
    # What any other Supabase client downloading the object sees.
    async with httpx.AsyncClient(base_url=standin.url) as raw:
        response = await raw.get(
            f"/storage/v1/object/authenticated/{BUCKET}/{KEY}",
            headers={"Authorization": f"Bearer {SERVICE_ROLE_KEY}"},
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    assert response.content == npc_xml("Sam")


@pytest.mark.parametrize("operation", ["put", "get", "check"])
async def test_internal_error_is_retryable(
    standin: SupabaseStorageStandIn, supabase: SupabaseStorage, operation: str
) -> None:
    standin.fail_next("internal")
    with pytest.raises(StorageError) as caught:
        await _run(supabase, operation)
    assert caught.value.retryable is True
    assert_storage_code(caught.value, "InternalError", "500")
    await _run(supabase, operation)  # the fault was one request; the next one works


async def test_slowdown_is_retryable_and_honours_retry_after(
    standin: SupabaseStorageStandIn, supabase: SupabaseStorage
) -> None:
    standin.fail_next("slowdown", retry_after="7")
    with pytest.raises(StorageError) as caught:
        await supabase.put(KEY, npc_xml("Sam"))
    assert caught.value.retryable is True
    assert caught.value.retry_after == 7.0
    assert_storage_code(caught.value, "SlowDown", "429")

    standin.fail_next("slowdown")
    with pytest.raises(StorageError) as without_header:
        await supabase.get(KEY)
    assert without_header.value.retryable is True
    assert without_header.value.retry_after is None


async def test_missing_bucket_reports_no_such_bucket(standin: SupabaseStorageStandIn) -> None:
    storage = SupabaseStorage(standin.url, SERVICE_ROLE_KEY, "absent-bucket")
    try:
        with pytest.raises(StorageError) as caught:
            await storage.put(KEY, npc_xml("Sam"))
        assert caught.value.retryable is False
        assert caught.value.details == {
            "storageCode": "NoSuchBucket",
            "status": "404",
            "httpStatus": 400,
        }
        with pytest.raises(StorageError) as checked:
            await storage.check()
        assert "ensure-bucket" in checked.value.message
    finally:
        await storage.close()


async def test_wrong_key_is_permanent_access_denied_and_never_echoed(
    standin: SupabaseStorageStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    storage = SupabaseStorage(standin.url, FOREIGN_SERVICE_KEY, BUCKET)
    errors: list[StorageError] = []
    try:
        with pytest.raises(StorageError) as on_put:
            await storage.put(KEY, npc_xml("Sam"))
        errors.append(on_put.value)
        assert on_put.value.retryable is False
        assert_storage_code(on_put.value, "AccessDenied", "403")
        with pytest.raises(StorageError) as on_check:
            await storage.check()
        errors.append(on_check.value)
        assert details_of(on_check.value)["storageCode"] == "AccessDenied"
        # The download route hides private buckets from a bad key (protocols.md §B.2).
        with pytest.raises(StorageError) as on_get:
            await storage.get(KEY)
        errors.append(on_get.value)
        assert on_get.value.retryable is False
        assert details_of(on_get.value)["storageCode"] == "NoSuchBucket"
    finally:
        await storage.close()
    for error in errors:
        rendered = [str(error), repr(error), error.message, json.dumps(error.as_json())]
        for text in rendered:
            assert FOREIGN_SERVICE_KEY not in text
            assert SERVICE_ROLE_KEY not in text
        assert error.__cause__ is None
    assert FOREIGN_SERVICE_KEY not in caplog.text
    assert FOREIGN_SERVICE_KEY not in repr(storage)
    assert standin.object(BUCKET, KEY) is None


async def test_slow_response_beyond_the_timeout_is_retryable(
    standin: SupabaseStorageStandIn,
) -> None:
    storage = SupabaseStorage(standin.url, SERVICE_ROLE_KEY, BUCKET, timeout_seconds=0.5)
    try:
        standin.fail_next("slow", delay=5)
        with pytest.raises(StorageError) as caught:
            await storage.put(KEY, npc_xml("Sam"))
        assert caught.value.retryable is True
        assert details_of(caught.value)["storageCode"] == "Timeout"
        await storage.put(KEY, npc_xml("Sam"))
        assert await storage.get(KEY) == npc_xml("Sam")
    finally:
        await storage.close()


async def test_slow_response_within_the_timeout_succeeds(
    standin: SupabaseStorageStandIn, supabase: SupabaseStorage
) -> None:
    standin.fail_next("slow", delay=0.2)
    await supabase.put(KEY, npc_xml("Patient"))
    assert await supabase.get(KEY) == npc_xml("Patient")


@pytest.mark.parametrize("operation", ["put", "get", "check"])
async def test_dropped_connection_is_retryable(
    standin: SupabaseStorageStandIn, supabase: SupabaseStorage, operation: str
) -> None:
    await supabase.put(KEY, npc_xml("Before"))  # a warm keep-alive connection gets dropped
    standin.fail_next("drop")
    with pytest.raises(StorageError) as caught:
        await _run(supabase, operation)
    assert caught.value.retryable is True
    assert details_of(caught.value)["storageCode"] == "ConnectionError"
    await _run(supabase, operation)


async def test_unreachable_server_is_retryable() -> None:
    async with running_storage_standin() as gone:
        url = gone.url
    storage = SupabaseStorage(url, SERVICE_ROLE_KEY, BUCKET, timeout_seconds=2)
    try:
        with pytest.raises(StorageError) as caught:
            await storage.check()
        assert caught.value.retryable is True
        assert details_of(caught.value)["storageCode"] == "ConnectionError"
    finally:
        await storage.close()


async def test_entity_too_large_and_bad_mime_type_are_permanent(
    standin: SupabaseStorageStandIn, supabase: SupabaseStorage
) -> None:
    standin.add_bucket(BUCKET, file_size_limit=1000)
    with pytest.raises(StorageError) as too_large:
        await supabase.put(KEY, npc_xml("Big", filler=2000))
    assert too_large.value.retryable is False
    assert_storage_code(too_large.value, "EntityTooLarge", "413")

    standin.add_bucket(BUCKET, allowed_mime_types=["image/png"])
    with pytest.raises(StorageError) as bad_type:
        await supabase.put(KEY, npc_xml("Sam"))
    assert bad_type.value.retryable is False
    assert_storage_code(bad_type.value, "InvalidMimeType", "415")


async def test_download_is_bounded(standin: SupabaseStorageStandIn) -> None:
    storage = SupabaseStorage(standin.url, SERVICE_ROLE_KEY, BUCKET, max_download_bytes=10_000)
    try:
        await storage.put(KEY, npc_xml("Small"))
        assert await storage.get(KEY) == npc_xml("Small")
        await storage.put(KEY, npc_xml("Huge", filler=20_000))
        with pytest.raises(StorageError) as caught:
            await storage.get(KEY)
        assert caught.value.retryable is False
        assert details_of(caught.value)["storageCode"] == "ObjectTooLarge"
    finally:
        await storage.close()
    assert MAX_DOWNLOAD_BYTES >= 2 * 262_144


async def test_ensure_bucket_creates_a_private_bucket(standin: SupabaseStorageStandIn) -> None:
    storage = SupabaseStorage(standin.url, SERVICE_ROLE_KEY, "brand-new")
    try:
        assert await storage.ensure_bucket() is True
        assert standin.buckets["brand-new"].public is False
        assert await storage.ensure_bucket() is False
    finally:
        await storage.close()


def test_classification_redacts_a_key_echoed_by_the_server() -> None:
    echoed = StorageApiError(f"Invalid API key: {SERVICE_ROLE_KEY}", "Unauthorized", "403")
    error = classify_storage_failure(echoed, operation="upload", secrets=[SERVICE_ROLE_KEY])
    assert SERVICE_ROLE_KEY not in str(error)
    assert SERVICE_ROLE_KEY not in json.dumps(error.as_json())
    assert error.retryable is False
    assert details_of(error)["storageCode"] == "AccessDenied"


def test_classification_of_unparseable_gateway_errors() -> None:
    gateway_down = StorageApiError("Unable to parse error message: <html>", "InternalError", 502)
    assert classify_storage_failure(gateway_down).retryable is True
    gateway_says_no = StorageApiError("Unable to parse error message: {}", "InternalError", 401)
    assert classify_storage_failure(gateway_says_no).retryable is False


# --- factory ----------------------------------------------------------------------------------


async def test_factory_picks_the_configured_backend(tmp_path: Path) -> None:
    filesystem = build_storage(
        Settings(
            _env_file=None,
            NPCFORGE_STORAGE="filesystem",
            NPCFORGE_STORAGE_DIR=tmp_path,
            NPCFORGE_BUCKET="b",
        )
    )
    assert isinstance(filesystem, FilesystemStorage)
    assert filesystem.bucket_dir == tmp_path / "b"

    with pytest.raises(ConfigError, match="SUPABASE_URL"):
        build_storage(
            Settings(
                _env_file=None, NPCFORGE_STORAGE="supabase", SUPABASE_URL=None, NPCFORGE_BUCKET="b"
            )
        )
    with pytest.raises(ConfigError, match="SUPABASE_SERVICE_ROLE_KEY"):
        build_storage(
            Settings(
                _env_file=None,
                NPCFORGE_STORAGE="supabase",
                SUPABASE_URL="http://127.0.0.1:1",
                SUPABASE_SERVICE_ROLE_KEY=None,
            )
        )
    supabase = build_storage(
        Settings(
            _env_file=None,
            NPCFORGE_STORAGE="supabase",
            SUPABASE_URL="http://127.0.0.1:1",
            SUPABASE_SERVICE_ROLE_KEY=SERVICE_ROLE_KEY,
        )
    )
    try:
        assert isinstance(supabase, SupabaseStorage)
        assert supabase.url == "http://127.0.0.1:1/storage/v1/"
        assert SERVICE_ROLE_KEY not in repr(supabase)
    finally:
        await supabase.close()


async def _run(storage: SupabaseStorage, operation: str) -> None:
    if operation == "put":
        await storage.put(KEY, npc_xml("Sam"))
    elif operation == "get":
        await storage.get(KEY)
    else:
        await storage.check()


def test_gateway_rejection_of_the_key_reads_as_access_denied():
    error = classify_storage_failure(StorageApiError("Invalid API key", "InternalError", 401))
    assert error.details is not None
    assert error.details["storageCode"] == "AccessDenied"
    assert error.retryable is False


# --- filesystem read cache ----------------------------------------------------------------------


async def _settle() -> None:
    """Wait until the last change is older than the cache's "settled" age (0.1 s)."""
    await asyncio.sleep(0.15)


async def test_filesystem_serves_a_settled_object_from_memory_only_while_the_file_is_unchanged(
    tmp_path: Path,
) -> None:
    storage = FilesystemStorage(tmp_path, BUCKET)
    await storage.ensure_bucket()
    path = tmp_path / BUCKET / KEY
    await storage.put(KEY, npc_xml("Cached"))
    await _settle()
    first = await storage.get(KEY)
    assert first == npc_xml("Cached")
    assert await storage.get(KEY) is first  # the same object: kept, not read again

    # Rewritten in place by something else, same size and inode: the change is still seen.
    changed = npc_xml("Cachee")
    assert len(changed) == len(first)
    with path.open("r+b") as handle:
        handle.write(changed)
    assert await storage.get(KEY) == changed

    # Replaced by a put, then deleted behind the storage's back: never served from memory.
    await storage.put(KEY, npc_xml("Newer"))
    assert await storage.get(KEY) == npc_xml("Newer")
    await _settle()
    assert await storage.get(KEY) == npc_xml("Newer")
    path.unlink()
    assert await storage.get(KEY) is None


async def test_filesystem_does_not_keep_a_file_changed_moments_ago(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path, BUCKET)
    await storage.ensure_bucket()
    await storage.put(KEY, npc_xml("Fresh"))
    first = await storage.get(KEY)
    second = await storage.get(KEY)
    assert first == second == npc_xml("Fresh")
    assert second is not first  # read from the file both times


def test_recent_objects_stay_within_their_byte_budget() -> None:
    recent = RecentObjects(budget=100, largest=60)
    settled = time.time_ns() - 10**10

    def identity(size: int, ino: int) -> FileIdentity:
        return (1, ino, size, settled, settled)

    recent.put("a", identity(50, 1), b"a" * 50)
    recent.put("b", identity(40, 2), b"b" * 40)
    recent.put("big", identity(61, 3), b"x" * 61)  # larger than any object kept
    assert recent.get("a", identity(50, 1)) == b"a" * 50
    assert recent.get("big", identity(61, 3)) is None
    recent.put("c", identity(30, 4), b"c" * 30)  # 120 > 100: the oldest entry goes
    assert recent.get("a", identity(50, 1)) is None
    assert recent.get("b", identity(40, 2)) == b"b" * 40
    assert recent.get("c", identity(30, 4)) == b"c" * 30
    assert recent.get("c", identity(30, 5)) is None  # another file under the same path
    assert recent.get("c", identity(30, 4)) is None  # and the stale entry was dropped


# --- batch writes ---------------------------------------------------------------------------


async def test_put_many_stores_each_object_and_fails_only_the_bad_ones(backend: Backend) -> None:
    storage = backend.storage()
    keys = [f"{n:08d}-0000-4000-8000-000000000000.xml" for n in range(5)]
    items = [(key, npc_xml(f"Batch{n}")) for n, key in enumerate(keys)]
    items.insert(2, ("../escape.xml", npc_xml("Evil")))
    results = await storage.put_many(items)
    assert len(results) == 6
    bad = results.pop(2)
    assert isinstance(bad, StorageError) and details_of(bad)["storageCode"] == "InvalidKey"
    assert results == [None] * 5
    for n, key in enumerate(keys):
        assert await storage.get(key) == npc_xml(f"Batch{n}")


async def test_put_many_into_a_missing_bucket_fails_every_item(backend: Backend) -> None:
    storage = backend.storage("no-such-bucket")
    results = await storage.put_many([(KEY, npc_xml("A")), ("other.xml", npc_xml("B"))])
    assert len(results) == 2
    for error in results:
        assert isinstance(error, StorageError) and error.retryable is False
        assert_storage_code(error, "NoSuchBucket", "404")


async def test_filesystem_put_many_keeps_going_past_one_unwritable_key(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path, BUCKET)
    await storage.ensure_bucket()
    (tmp_path / BUCKET / "blocked.xml").mkdir()  # a directory where the object would go
    results = await storage.put_many(
        [("first.xml", npc_xml("First")), ("blocked.xml", npc_xml("X")), (KEY, npc_xml("Last"))]
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], StorageError) and results[1].retryable is True
    assert await storage.get("first.xml") == npc_xml("First")
    assert await storage.get(KEY) == npc_xml("Last")
    assert sorted(p.name for p in (tmp_path / BUCKET).iterdir()) == sorted(
        ["first.xml", "blocked.xml", KEY]
    )  # no temporary file left behind


async def test_filesystem_check_removes_temporary_files_of_writes_that_died(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path, BUCKET)
    await storage.ensure_bucket()
    await storage.put(KEY, npc_xml("Kept"))
    bucket = tmp_path / BUCKET
    orphan = bucket / f".{KEY}.abc123.part"  # what a worker killed mid-upload leaves
    in_progress = bucket / f".{KEY}.def456.part"  # a write happening right now
    for temp in (orphan, in_progress):
        temp.write_bytes(b"<npc")
    two_hours_ago = time.time() - 7200
    os.utime(orphan, (two_hours_ago, two_hours_ago))
    await storage.check()  # runs when a worker starts
    assert sorted(p.name for p in bucket.iterdir()) == sorted([KEY, in_progress.name])
    assert await storage.get(KEY) == npc_xml("Kept")
