"""A hostile upstream (tests/standins/hostile_upstream.py) against the real worker, on real
PostgreSQL: nothing secret or unbounded is kept, no job is parked for long, nothing unchecked is
stored.

Every answer goes through the real OpenRouter client over loopback HTTP. What a user or operator
can read afterwards is checked where they would read it: the job row, the attempt rows, the
worker's logs, the API's answer and `npcforge status --json`.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from apikit import api_harness
from clikit import cli_env, run_cli
from conftest import CapturedLogs, make_npc, wait_for
from npcforge.api.auth import NoAuth
from npcforge.compose import build_provider
from npcforge.config import Settings
from npcforge.db.npcs import load_npc
from npcforge.errors import MAX_ERROR_JSON_CHARS, MAX_MESSAGE_CHARS, LimitExceeded
from npcforge.generation.openrouter import OpenRouterProvider
from npcforge.generation.validator import validate_npc_xml
from npcforge.redaction import MIN_FRAGMENT
from standins.hostile_upstream import (
    SMUGGLED_COMMENT,
    SMUGGLED_PI,
    HostileResponder,
    echoing_key,
    huge_field,
    key_at_the_cut,
    retry_after,
    smuggled_xml,
)
from standins.openrouter import Reply, openrouter_standin
from workerkit import running_worker, wait_status

KEY = "sk-or-v1-REDTEAMSECRET-4f9c2a7e1b3d5f6a8c0e2b4d6f8a1c3e5b7d9f0a2c4e6b8d"
MAX_DELAY = 180.0  # OPENROUTER_MAX_DELAY_SECONDS's default


def settings_for(base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "OPENROUTER_API_KEY": KEY,
        "OPENROUTER_BASE_URL": base_url,
        "OPENROUTER_TIMEOUT_SECONDS": 10.0,
        "OPENROUTER_MAX_RETRIES": 0,
        "NPCFORGE_JOB_DEADLINE_SECONDS": 30.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def key_fragments(key: str = KEY) -> set[str]:
    """Every run of MIN_FRAGMENT characters of the key: none may appear anywhere."""
    return {key[i : i + MIN_FRAGMENT] for i in range(len(key) - MIN_FRAGMENT + 1)}


def assert_no_key(places: dict[str, str]) -> None:
    fragments = key_fragments()
    for place, text in places.items():
        leaked = sorted(f for f in fragments if f in text)
        assert not leaked, f"{place} holds key fragments {leaked[:3]}"


async def run_job(
    conn: Any,
    db_dsn: str,
    storage_dir: Path,
    *,
    responder: HostileResponder | None = None,
    script: Sequence[Reply] = (),
    first_attempt_only: bool = False,
) -> tuple[uuid.UUID, uuid.UUID]:
    """One job through a worker whose upstream answers as told, until it ended (or its first
    attempt did); returns (npc id, job id)."""
    npc_id = await make_npc(conn)
    async with openrouter_standin() as upstream:
        upstream.responder = responder
        upstream.script(*script)
        provider = OpenRouterProvider(settings_for(upstream.base_url), rng=random.Random(3))
        try:
            async with running_worker(db_dsn, storage_dir, provider=provider, max_attempts=3):
                job_id = await conn.fetchval(
                    "UPDATE npcs SET generation_job_status = 'queued' WHERE id = $1 "
                    "RETURNING generation_job_id",
                    npc_id,
                )
                if first_attempt_only:
                    await wait_for(lambda: first_attempt(conn, job_id))
                else:
                    await wait_status(conn, npc_id, "succeeded", "failed")
        finally:
            await provider.close()
    return npc_id, job_id


async def readable_places(
    conn: Any,
    db_dsn: str,
    storage_dir: Path,
    npc_id: uuid.UUID,
    job_id: uuid.UUID,
    logs: CapturedLogs,
) -> dict[str, str]:
    """Everything a reader of the job can see, as text."""
    error = await conn.fetchval("SELECT generation_job_error::text FROM npcs WHERE id = $1", npc_id)
    attempts = await conn.fetch("SELECT * FROM npc_generation_attempts WHERE job_id = $1", job_id)
    async with api_harness(db_dsn, storage_dir, authenticator=NoAuth()) as api:
        answer = await api.client.get(f"/api/npcs/{npc_id}/generation-jobs/{job_id}")
        listing = await api.client.get(f"/api/npcs/{npc_id}/generation-jobs")
    assert answer.status_code == 200, answer.text
    status = await run_cli("status", str(npc_id), "--json", env=cli_env(DATABASE_URL=db_dsn))
    assert status.code == 0, status.err
    assert logs.lines, "the worker logged nothing to check"
    return {
        "job row": error or "",
        "attempt rows": json.dumps([dict(row) for row in attempts], default=str),
        "logs": logs.text,
        "API answer": answer.text,
        "API job list": listing.text,
        "npcforge status --json": status.out + status.err,
    }


# --- 1. upstream-controlled error fields ------------------------------------------------------


async def test_an_echoed_key_is_redacted_from_every_field_and_everywhere(
    conn: Any, db_dsn: str, storage_dir: Path, logs: CapturedLogs
) -> None:
    npc_id, job_id = await run_job(conn, db_dsn, storage_dir, responder=echoing_key(401))

    error = await conn.fetchval("SELECT generation_job_error FROM npcs WHERE id = $1", npc_id)
    assert error["code"] == "AI_CONFIG"
    # The fields were kept, without the key: an operator still sees that something was echoed.
    assert error["details"]["errorType"] == "[redacted]"
    assert error["details"]["providerCode"] == "[redacted]"
    assert "[redacted]" in error["message"]
    assert error["requestId"] == "req-[redacted]"
    assert_no_key(await readable_places(conn, db_dsn, storage_dir, npc_id, job_id, logs))


async def test_a_huge_upstream_field_is_bounded_in_the_row_and_the_logs(
    conn: Any, db_dsn: str, storage_dir: Path, logs: CapturedLogs
) -> None:
    npc_id, job_id = await run_job(conn, db_dsn, storage_dir, responder=huge_field(6 * 1024 * 1024))

    error_chars = await conn.fetchval(
        "SELECT length(generation_job_error::text) FROM npcs WHERE id = $1", npc_id
    )
    assert error_chars <= MAX_ERROR_JSON_CHARS + 64  # jsonb's own spacing
    error = await conn.fetchval("SELECT generation_job_error FROM npcs WHERE id = $1", npc_id)
    assert error["code"] == "AI_UPSTREAM"
    assert error["details"]["errorType"].startswith("xxxx")
    assert len(error["details"]["errorType"]) <= 100
    places = await readable_places(conn, db_dsn, storage_dir, npc_id, job_id, logs)
    for place, text in places.items():
        assert "x" * 1000 not in text, place
    assert max(len(line) for line in logs.lines) < 20_000


# --- 2. redact first, then cut ----------------------------------------------------------------


async def test_a_key_straddling_the_message_cut_leaves_no_fragment(
    conn: Any, db_dsn: str, storage_dir: Path, logs: CapturedLogs
) -> None:
    npc_id, job_id = await run_job(conn, db_dsn, storage_dir, responder=key_at_the_cut(299))

    message = await conn.fetchval(
        "SELECT error_message FROM npc_generation_attempts WHERE job_id = $1", job_id
    )
    assert message is not None and "[redact" in message and len(message) <= MAX_MESSAGE_CHARS
    assert_no_key(await readable_places(conn, db_dsn, storage_dir, npc_id, job_id, logs))


# --- 3. upstream delays are bounded -----------------------------------------------------------


async def first_attempt(conn: Any, job_id: uuid.UUID) -> Any:
    return await conn.fetchrow(
        "SELECT outcome, error_code FROM npc_generation_attempts WHERE job_id = $1 AND attempt = 1",
        job_id,
    )


async def requeued_after_one_answer(
    conn: Any, db_dsn: str, storage_dir: Path, answer: Reply
) -> Any:
    """The job's row and first attempt once the worker handed the job back after `answer`."""
    npc_id, job_id = await run_job(
        conn, db_dsn, storage_dir, script=[answer], first_attempt_only=True
    )
    first = await first_attempt(conn, job_id)
    row = await conn.fetchrow(
        "SELECT generation_job_status::text AS status, "
        "extract(epoch FROM generation_job_run_after - now())::float8 AS wait_s "
        "FROM npcs WHERE id = $1",
        npc_id,
    )
    return row, first


async def test_a_retry_after_of_decades_requeues_for_the_bound_only(
    conn: Any, db_dsn: str, storage_dir: Path
) -> None:
    row, first = await requeued_after_one_answer(
        conn, db_dsn, storage_dir, retry_after("1000000000", status=503)
    )
    assert (first["outcome"], first["error_code"]) == ("retry", "LIMIT_EXCEEDED")
    assert row["status"] == "queued"
    # Was: parked until 2058. Now: the bound, taken in full (the upstream did ask to wait).
    assert MAX_DELAY - 60 < row["wait_s"] <= MAX_DELAY


async def test_a_retry_after_beyond_any_date_still_requeues_the_job(
    conn: Any, db_dsn: str, storage_dir: Path
) -> None:
    # Was: DatetimeFieldOverflowError in the requeue, the claim abandoned, WORKER_LOST reaps.
    row, first = await requeued_after_one_answer(
        conn, db_dsn, storage_dir, retry_after("99999999999999999999", status=503)
    )
    assert (first["outcome"], first["error_code"]) == ("retry", "LIMIT_EXCEEDED")
    assert row["status"] == "queued"
    assert MAX_DELAY - 60 < row["wait_s"] <= MAX_DELAY


async def test_one_429_cannot_pause_the_fleet_beyond_the_bound(conn: Any, db_dsn: str) -> None:
    async with openrouter_standin() as upstream:
        upstream.script(retry_after("1000000000", status=429))
        settings = settings_for(upstream.base_url, OPENROUTER_MAX_DELAY_SECONDS=45)
        provider = build_provider(settings, db_dsn)  # with the fleet's rate gate in PostgreSQL
        try:
            record = await load_npc(conn, await make_npc(conn))
            assert record is not None
            with pytest.raises(LimitExceeded):  # handed to the queue: far above the wait in place
                await provider.generate(record)
            paused_for = provider.paused_for
        finally:
            await provider.close()
    fleet_pause = await conn.fetchval(
        "SELECT extract(epoch FROM paused_until - now())::float8 FROM npcforge_rate_limits "
        "WHERE name = 'openrouter'"
    )
    assert 30 < fleet_pause <= 45
    assert 30 < paused_for <= 45


# --- 4. only what was validated is stored -----------------------------------------------------


async def test_comments_and_processing_instructions_never_reach_storage(
    conn: Any, db_dsn: str, storage_dir: Path
) -> None:
    npc_id, _ = await run_job(conn, db_dsn, storage_dir, responder=smuggled_xml())

    row = await wait_status(conn, npc_id, "succeeded")
    stored = (storage_dir / "npc-xml-files" / f"{npc_id}.xml").read_bytes()
    assert SMUGGLED_PI.encode() not in stored and b"<?php" not in stored
    assert SMUGGLED_COMMENT.encode() not in stored and b"<!--" not in stored
    assert stored.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<npc ')
    assert row["content_size_bytes"] == len(stored)
    record = await load_npc(conn, npc_id)
    assert record is not None
    assert validate_npc_xml(stored.decode(), record) == []
