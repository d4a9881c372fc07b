"""The worker end to end on real PostgreSQL: SQL enqueue → claim → XML → storage → status."""

from __future__ import annotations

import asyncio
import time

from conftest import make_npc, make_npcs
from npcforge.db.npcs import load_npc
from npcforge.errors import AiConfig, AiUpstream
from npcforge.generation.validator import validate_npc_xml
from npcforge.generation.xmlrules import render_npc_xml
from npcforge.storage.filesystem import FilesystemStorage
from npcforge.worker.daemon import Worker
from npcforge.worker.options import WorkerOptions
from workerkit import ScriptedProvider, job_row, running_worker, wait_status


async def test_plain_sql_update_to_stored_xml(conn, db_dsn, storage_dir):
    npc_id = await make_npc(conn)
    async with running_worker(db_dsn, storage_dir):
        await conn.execute("UPDATE npcs SET generation_job_status = 'queued' WHERE id = $1", npc_id)
        row = await wait_status(conn, npc_id, "succeeded", "failed")
    assert row["status"] == "succeeded"
    stored = (storage_dir / "npc-xml-files" / f"{npc_id}.xml").read_bytes()
    npc = await load_npc(conn, npc_id)
    assert npc is not None
    assert stored.decode() == render_npc_xml(npc)
    assert validate_npc_xml(stored.decode(), npc) == []
    assert row["content_size_bytes"] == len(stored)
    attempts = await conn.fetch(
        "SELECT attempt, outcome, job_id FROM npc_generation_attempts WHERE npc_id = $1", npc_id
    )
    assert [(a["attempt"], a["outcome"], a["job_id"]) for a in attempts] == [
        (1, "succeeded", row["job_id"])
    ]


async def test_soft_deleted_items_are_left_out(conn, db_dsn, storage_dir):
    npc_id = await make_npc(conn)
    await conn.execute(
        "UPDATE npc_shop_items SET deleted_at = now() WHERE npc_id = $1 AND name = 'mana potion'",
        npc_id,
    )
    async with running_worker(db_dsn, storage_dir):
        await conn.execute("SELECT npcforge_enqueue($1)", npc_id)
        await wait_status(conn, npc_id, "succeeded")
    stored = (storage_dir / "npc-xml-files" / f"{npc_id}.xml").read_text()
    assert "mana potion" not in stored
    assert "health potion,7618,45" in stored


async def test_deleted_npc_fails_with_npc_not_found(conn, db_dsn, storage_dir):
    npc_id = await make_npc(conn)
    await conn.execute("SELECT npcforge_enqueue($1)", npc_id)
    await conn.execute("UPDATE npcs SET deleted_at = now() WHERE id = $1", npc_id)
    async with running_worker(db_dsn, storage_dir):
        row = await wait_status(conn, npc_id, "failed")
    assert row["error"]["code"] == "NPC_NOT_FOUND"
    assert not (storage_dir / "npc-xml-files" / f"{npc_id}.xml").exists()


async def test_two_workers_process_500_jobs_exactly_once(conn, db_dsn, storage_dir):
    ids = await make_npcs(conn, 500)
    async with (
        running_worker(db_dsn, storage_dir, concurrency=8, worker_id="w1"),
        running_worker(db_dsn, storage_dir, concurrency=8, worker_id="w2"),
    ):
        await conn.execute(
            "UPDATE npcs SET generation_job_status = 'queued' WHERE id = ANY($1::uuid[])", ids
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            left = await conn.fetchval(
                "SELECT count(*) FROM npcs WHERE generation_job_status <> 'succeeded'"
            )
            if left == 0:
                break
            await asyncio.sleep(0.1)
    per_job = await conn.fetch(
        "SELECT job_id, count(*) AS n FROM npc_generation_attempts GROUP BY job_id"
    )
    assert len(per_job) == 500
    assert all(r["n"] == 1 for r in per_job)
    by_worker = await conn.fetch(
        "SELECT worker_id, count(*) AS n FROM npc_generation_attempts GROUP BY worker_id"
    )
    assert {r["worker_id"] for r in by_worker} == {"w1", "w2"}
    assert len(list((storage_dir / "npc-xml-files").glob("*.xml"))) == 500


async def test_superseded_job_cannot_overwrite_newer_result(conn, db_dsn, storage_dir):
    npc_id = await make_npc(conn)
    slow = ScriptedProvider()
    slow.gate = asyncio.Event()
    async with running_worker(db_dsn, storage_dir, provider=slow, lease_seconds=3):
        old_job = await conn.fetchval("SELECT npcforge_enqueue($1)", npc_id)
        await asyncio.wait_for(slow.started.wait(), 10)
        # While the old job is generating, a forced request supersedes it.
        new_job = await conn.fetchval("SELECT npcforge_enqueue($1, true)", npc_id)
        assert new_job != old_job
        slow.gate.set()
        row = await wait_status(conn, npc_id, "succeeded")
        await asyncio.sleep(0.3)
    assert row["job_id"] == new_job
    outcomes = await conn.fetch(
        "SELECT job_id, outcome FROM npc_generation_attempts WHERE npc_id = $1 ORDER BY id",
        npc_id,
    )
    assert {(r["job_id"], r["outcome"]) for r in outcomes} == {
        (old_job, "discarded"),
        (new_job, "succeeded"),
    }


async def test_retryable_failure_requeues_with_same_id_then_succeeds(conn, db_dsn, storage_dir):
    npc_id = await make_npc(conn)
    flaky = ScriptedProvider()
    flaky.errors = [AiUpstream("upstream 502", retry_after=0.3)]
    async with running_worker(db_dsn, storage_dir, provider=flaky, poll_seconds=30):
        job = await conn.fetchval("SELECT npcforge_enqueue($1)", npc_id)
        started = time.monotonic()
        row = await wait_status(conn, npc_id, "succeeded", timeout=10)
        elapsed = time.monotonic() - started
    assert row["job_id"] == job
    assert row["attempts"] == 2
    # woke for the delayed retry on time, without a notification or the 30 s sweep
    assert 0.3 <= elapsed < 5
    outcomes = await conn.fetch(
        "SELECT attempt, outcome, error_code FROM npc_generation_attempts WHERE job_id = $1 "
        "ORDER BY attempt",
        job,
    )
    assert [tuple(r) for r in outcomes] == [(1, "retry", "AI_UPSTREAM"), (2, "succeeded", None)]


async def test_retryable_failure_ends_failed_after_max_attempts(conn, db_dsn, storage_dir):
    npc_id = await make_npc(conn)
    broken = ScriptedProvider()
    broken.errors = [AiUpstream("upstream 503", retry_after=0.05) for _ in range(5)]
    async with running_worker(db_dsn, storage_dir, provider=broken, max_attempts=3):
        await conn.execute("SELECT npcforge_enqueue($1)", npc_id)
        row = await wait_status(conn, npc_id, "failed", timeout=15)
    assert row["attempts"] == 3
    assert row["error"]["code"] == "AI_UPSTREAM"
    assert broken.calls == 3


async def test_non_retryable_failure_ends_at_once(conn, db_dsn, storage_dir):
    npc_id = await make_npc(conn)
    refused = ScriptedProvider()
    refused.errors = [AiConfig("upstream refused the API key (HTTP 401)", request_id="req-1")]
    async with running_worker(db_dsn, storage_dir, provider=refused):
        await conn.execute("SELECT npcforge_enqueue($1)", npc_id)
        row = await wait_status(conn, npc_id, "failed")
    assert row["attempts"] == 1
    assert row["error"] == {
        "code": "AI_CONFIG",
        "message": "upstream refused the API key (HTTP 401)",
        "requestId": "req-1",
    }
    assert refused.calls == 1


async def test_invalid_output_is_repaired_once_then_fails(conn, db_dsn, storage_dir):
    npc_id = await make_npc(conn)
    liar = ScriptedProvider()
    liar.xml_override = '<?xml version="1.0"?><npc name="Wrong" script="default.lua"/>'
    async with running_worker(db_dsn, storage_dir, provider=liar):
        await conn.execute("SELECT npcforge_enqueue($1)", npc_id)
        row = await wait_status(conn, npc_id, "failed")
    assert liar.calls == 2  # first answer + one repair
    assert row["error"]["code"] == "AI_INVALID_XML"
    assert any("name" in finding for finding in row["error"]["details"]["findings"])
    assert not (storage_dir / "npc-xml-files" / f"{npc_id}.xml").exists()


async def test_sigterm_style_stop_hands_running_jobs_back(conn, db_dsn, storage_dir):
    npc_id = await make_npc(conn)
    stuck = ScriptedProvider()
    stuck.gate = asyncio.Event()  # never opened
    async with running_worker(db_dsn, storage_dir, provider=stuck, shutdown_seconds=0.5):
        job = await conn.fetchval("SELECT npcforge_enqueue($1)", npc_id)
        await asyncio.wait_for(stuck.started.wait(), 10)
        assert (await job_row(conn, npc_id))["status"] == "processing"
    row = await job_row(conn, npc_id)
    assert row["status"] == "queued"
    assert row["job_id"] == job
    assert row["attempts"] == 0  # the interrupted attempt is not counted
    outcome = await conn.fetchval(
        "SELECT outcome FROM npc_generation_attempts WHERE job_id = $1", job
    )
    assert outcome == "released"


async def test_a_worker_started_during_a_pause_is_ready_at_once_and_claims_after_it(
    conn, db_dsn, storage_dir
):
    npc_id = await make_npc(conn)
    await conn.execute("SELECT npcforge_enqueue($1)", npc_id)
    paused = ScriptedProvider()
    paused.paused_for = 60.0  # known before the first claim
    storage = FilesystemStorage(storage_dir, "npc-xml-files")
    worker = Worker(
        dsn=db_dsn, provider=paused, storage=storage, options=WorkerOptions(poll_seconds=0.5)
    )
    await worker.storage.ensure_bucket()
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.ready.wait(), timeout=10)
        row = await job_row(conn, npc_id)
        assert row["status"] == "queued" and row["attempts"] == 0 and paused.calls == 0
        paused.paused_for = 0.0
        row = await wait_status(conn, npc_id, "succeeded", timeout=5)
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=30)
    assert row["attempts"] == 1


async def test_no_claims_while_the_upstream_has_paused_the_fleet(conn, db_dsn, storage_dir):
    npc_id = await make_npc(conn)
    paused = ScriptedProvider()
    async with running_worker(db_dsn, storage_dir, provider=paused, poll_seconds=30):
        paused.paused_for = 0.5
        await conn.execute("SELECT npcforge_enqueue($1)", npc_id)
        await asyncio.sleep(1.0)
        row = await job_row(conn, npc_id)
        assert row["status"] == "queued" and row["attempts"] == 0
        assert paused.calls == 0
        paused.paused_for = 0.0
        row = await wait_status(conn, npc_id, "succeeded", timeout=5)
    assert row["attempts"] == 1
