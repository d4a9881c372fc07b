"""Fencing, with the race held at precise points: a job that was superseded (`force`) or lost
its lease changes nothing and leaves no XML behind, and an older job's upload can never land
after a newer job's. Real worker processes; uploads go to the Supabase Storage stand-in, which
counts them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from conftest import make_npc, wait_for
from npcforge.db.connect import connect
from npcforge.db.queries import q
from queuekit import SlowModel, model_env, npc_name, slow_model, worker_env, worker_processes
from standins.supabase_storage import (
    SERVICE_ROLE_KEY,
    SupabaseStorageStandIn,
    running_storage_standin,
)
from workerkit import job_row, wait_status

SERVICE_KEY = SERVICE_ROLE_KEY
BUCKET = "npc-xml-files"
NEW_GREETING = "Welcome back, |PLAYERNAME|! Things have changed."

WORKER_WAITING_ON_LOCK = """
SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND application_name = 'npcforge-worker'
   AND wait_event_type = 'Lock'
"""


@contextlib.asynccontextmanager
async def storage_standin() -> AsyncIterator[SupabaseStorageStandIn]:
    async with running_storage_standin(buckets=[BUCKET]) as standin:
        yield standin


@contextlib.asynccontextmanager
async def rig(
    db_dsn: str, tmp_path: Any, **extra: str
) -> AsyncIterator[tuple[SlowModel, SupabaseStorageStandIn, dict[str, str]]]:
    """The model and storage stand-ins, and a worker environment pointing at both."""
    async with slow_model() as model, storage_standin() as storage:
        env = worker_env(
            db_dsn, tmp_path, **model_env(model.standin), **storage_env(storage), **extra
        )
        yield model, storage, env


def storage_env(standin: SupabaseStorageStandIn) -> dict[str, str]:
    return {
        "NPCFORGE_STORAGE": "supabase",
        "SUPABASE_URL": standin.url,
        "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
        "NPCFORGE_BUCKET": BUCKET,
    }


async def change_and_force(db: Any, npc_id: Any) -> Any:
    """Edit the NPC's greeting and start a new job with `force`; the new job's id."""
    await db.execute("UPDATE npcs SET greet_message = $2 WHERE id = $1", npc_id, NEW_GREETING)
    return await db.fetchval("SELECT npcforge_enqueue($1, true)", npc_id)


def uploads(standin: SupabaseStorageStandIn, npc_id: Any) -> int:
    path = f"/storage/v1/object/{BUCKET}/{npc_id}.xml"
    return sum(1 for r in standin.requests if r.method in ("POST", "PUT") and r.path == path)


def stored_xml(standin: SupabaseStorageStandIn, npc_id: Any) -> str:
    stored = standin.object(BUCKET, f"{npc_id}.xml")
    assert stored is not None
    return stored.data.decode()


async def outcomes(conn, npc_id) -> list[tuple[Any, int, str, str | None]]:
    rows = await conn.fetch(
        "SELECT job_id, attempt, outcome, error_code FROM npc_generation_attempts "
        "WHERE npc_id = $1 ORDER BY id",
        npc_id,
    )
    return [tuple(row) for row in rows]


async def test_force_while_generating_discards_the_old_result(conn, db_dsn, tmp_path):
    npc_id = await make_npc(conn)
    name = await npc_name(conn, npc_id)
    async with (
        rig(db_dsn, tmp_path) as (model, storage, env),
        worker_processes([env, env], tmp_path / "logs") as workers,
    ):
        old_gate = model.hold(name)
        old_job = await conn.fetchval("SELECT npcforge_enqueue($1)", npc_id)
        await model.wait_arrival(name)
        del model.holds[name]  # the new job's generation answers at once

        new_job = await change_and_force(conn, npc_id)
        row = await wait_status(conn, npc_id, "succeeded")
        old_gate.set()  # the old generation finishes now, with the old greeting
        await wait_for(lambda: _has_outcome(conn, old_job, "discarded"), timeout=10)
        await asyncio.sleep(0.3)

    assert row["job_id"] == new_job
    assert (await job_row(conn, npc_id))["job_id"] == new_job
    assert await outcomes(conn, npc_id) == [
        (new_job, 1, "succeeded", None),
        (old_job, 1, "discarded", None),
    ]
    assert uploads(storage, npc_id) == 1  # the old result never reached storage
    assert "Things have changed." in stored_xml(storage, npc_id)
    discarded = [line for w in workers for line in w.logs() if line.get("action") == "discarded"]
    assert [line["job_id"] for line in discarded] == [str(old_job)]


async def test_force_committed_while_publish_waits_for_the_row_is_fenced(conn, db_dsn, tmp_path):
    npc_id = await make_npc(conn)
    name = await npc_name(conn, npc_id)
    async with (
        rig(db_dsn, tmp_path) as (model, storage, env),
        worker_processes([env], tmp_path / "logs"),
    ):
        gate = model.hold(name)
        old_job = await conn.fetchval("SELECT npcforge_enqueue($1)", npc_id)
        await model.wait_arrival(name)
        del model.holds[name]

        # Hold the row, let the old job reach its publish: it now waits on our lock with its
        # fencing check not yet answered. Supersede it in the same transaction and commit.
        other = await connect(db_dsn)
        try:
            async with other.transaction():
                await other.execute("SELECT 1 FROM npcs WHERE id = $1 FOR UPDATE", npc_id)
                gate.set()
                await wait_for(lambda: conn.fetchval(WORKER_WAITING_ON_LOCK), timeout=10)
                new_job = await change_and_force(other, npc_id)
        finally:
            await other.close()
        row = await wait_status(conn, npc_id, "succeeded")
        await asyncio.sleep(0.3)

    assert row["job_id"] == new_job
    assert await outcomes(conn, npc_id) == [
        (old_job, 1, "discarded", None),
        (new_job, 1, "succeeded", None),
    ]
    assert uploads(storage, npc_id) == 1
    assert "Things have changed." in stored_xml(storage, npc_id)


async def test_force_during_the_upload_waits_so_the_newest_xml_lands_last(conn, db_dsn, tmp_path):
    npc_id = await make_npc(conn)
    name = await npc_name(conn, npc_id)
    async with (
        rig(db_dsn, tmp_path) as (model, storage, env),
        worker_processes([env], tmp_path / "logs"),
    ):
        gate = model.hold(name)
        old_job = await conn.fetchval("SELECT npcforge_enqueue($1)", npc_id)
        await model.wait_arrival(name)
        del model.holds[name]
        storage.fail_next("slow", delay=1.5)  # the old job's upload takes its time
        gate.set()
        await wait_for(lambda: _uploads_seen(storage, npc_id, 1), timeout=10)

        async def force() -> Any:
            other = await connect(db_dsn)
            try:
                async with other.transaction():
                    return await change_and_force(other, npc_id)
            finally:
                await other.close()

        forcing = asyncio.create_task(force())
        await asyncio.sleep(0.5)
        assert not forcing.done()  # it waits for the publish holding the row
        assert (await job_row(conn, npc_id))["status"] == "processing"
        new_job = await asyncio.wait_for(forcing, 10)
        row = await wait_status(conn, npc_id, "succeeded")
        await asyncio.sleep(0.3)

    assert row["job_id"] == new_job
    # The old job published first (it held the row), then the forced job replaced it.
    assert await outcomes(conn, npc_id) == [
        (old_job, 1, "succeeded", None),
        (new_job, 1, "succeeded", None),
    ]
    assert uploads(storage, npc_id) == 2
    assert "Things have changed." in stored_xml(storage, npc_id)


async def test_a_reaped_job_stops_and_its_result_never_lands(conn, db_dsn, tmp_path):
    npc_id = await make_npc(conn)
    name = await npc_name(conn, npc_id)
    async with (
        rig(db_dsn, tmp_path, NPCFORGE_LEASE_SECONDS="3") as (model, storage, env),
        worker_processes([env], tmp_path / "logs") as [worker],
    ):
        gate = model.hold(name)
        job = await conn.fetchval("SELECT npcforge_enqueue($1)", npc_id)
        await model.wait_arrival(name)
        del model.holds[name]
        # As if this worker had stalled past its lease: another worker's reaper takes the
        # job back (the expiry and the reap in one transaction, so no renewal slips in).
        async with conn.transaction():
            await conn.execute(
                "UPDATE npcs SET generation_job_lease_expires_at = now() - interval '1 s' "
                "WHERE id = $1",
                npc_id,
            )
            reaped = await conn.fetch(q("reap_expired_leases"), 3, 0.0, [])
        assert [r["id"] for r in reaped] == [npc_id]
        await worker.wait_log(lambda line: line.get("action") == "lease_lost", timeout=10)
        gate.set()
        row = await wait_status(conn, npc_id, "succeeded")
        await asyncio.sleep(0.3)

    assert row["job_id"] == job and row["attempts"] == 2
    assert sorted(await outcomes(conn, npc_id), key=lambda r: (r[1], r[2])) == [
        (job, 1, "discarded", None),  # the stalled attempt, which stopped
        (job, 1, "retry", "WORKER_LOST"),  # written by the reaper
        (job, 2, "succeeded", None),
    ]
    assert uploads(storage, npc_id) == 1


async def test_a_slow_upload_holding_its_row_does_not_starve_other_renewals(conn, db_dsn, tmp_path):
    uploading, generating = await make_npc(conn), await make_npc(conn)
    name = await npc_name(conn, generating)
    async with (
        rig(db_dsn, tmp_path, NPCFORGE_LEASE_SECONDS="3") as (model, storage, env),
        worker_processes([env], tmp_path / "logs"),
    ):
        gate = model.hold(name)
        await conn.execute("SELECT npcforge_enqueue($1)", generating)
        await model.wait_arrival(name)
        storage.fail_next("slow", delay=6)  # this publish holds its row for 6 s
        await conn.execute("SELECT npcforge_enqueue($1)", uploading)
        await wait_for(lambda: _uploads_seen(storage, uploading, 1), timeout=10)
        await asyncio.sleep(4.5)  # past the 3 s lease
        # The generating job's lease was renewed all along, not stuck behind the upload ...
        fresh = await conn.fetchval(
            "SELECT generation_job_lease_expires_at > now() FROM npcs WHERE id = $1",
            generating,
        )
        # ... so any other worker's reaper, now, finds nothing to take.
        reaped = await conn.fetch(q("reap_expired_leases"), 3, 0.0, [])
        gate.set()
        await wait_status(conn, generating, "succeeded", timeout=10)
        await wait_status(conn, uploading, "succeeded", timeout=10)

    assert fresh is True
    assert reaped == []
    for npc_id in (uploading, generating):
        assert [r[2] for r in await outcomes(conn, npc_id)] == ["succeeded"]


async def test_storage_failure_is_retried_in_place_not_left_processing(conn, db_dsn, tmp_path):
    npc_id = await make_npc(conn)
    async with storage_standin() as storage:
        env = worker_env(db_dsn, tmp_path, **storage_env(storage))
        async with worker_processes([env], tmp_path / "logs"):
            storage.fail_next("internal")  # the upload answers 500
            job = await conn.fetchval("SELECT npcforge_enqueue($1)", npc_id)
            row = await wait_status(conn, npc_id, "succeeded", "failed", timeout=15)

    # The upload was tried again within the attempt: the XML was not made a second time.
    assert row["status"] == "succeeded" and row["attempts"] == 1
    assert await outcomes(conn, npc_id) == [(job, 1, "succeeded", None)]
    assert uploads(storage, npc_id) == 2


async def _has_outcome(conn, job_id, outcome: str) -> bool:
    found = await conn.fetchval(
        "SELECT count(*) FROM npc_generation_attempts WHERE job_id = $1 AND outcome = $2",
        job_id,
        outcome,
    )
    return bool(found)


async def _uploads_seen(storage: SupabaseStorageStandIn, npc_id: Any, count: int) -> bool:
    return uploads(storage, npc_id) >= count


async def test_an_in_doubt_finalize_does_not_take_a_later_claim_of_the_same_attempt_as_its_own(
    conn, db_dsn, tmp_path
):
    """An asynchronously committed claim can vanish in a crash of PostgreSQL: the job is queued
    again at the same attempt number while the worker still holds the result of the lost claim,
    and the same worker may claim it again. The old claim's in-doubt finalize must then see that
    the `succeeded` attempt row belongs to the new claim, not to itself."""
    from npcforge.db.connect import create_pool
    from npcforge.db.jobs import JobQueue
    from npcforge.generation.template import TemplateProvider
    from npcforge.metrics import WorkerMetrics
    from npcforge.storage.filesystem import FilesystemStorage
    from npcforge.worker.attempt import JobRunner
    from npcforge.worker.claims import Claim

    npc_id = await make_npc(conn)
    await conn.execute("UPDATE npcs SET generation_job_status = 'queued' WHERE id = $1", npc_id)
    (lease,) = await JobQueue(conn).claim(worker_id="worker-1", limit=1, lease_seconds=30.0)
    lost = Claim.of(lease)
    # The claim's commit never reached the disk: as PostgreSQL sees it after the crash, the
    # job is queued, not yet attempted.
    await conn.execute(
        "UPDATE npcs SET generation_job_status = 'queued', generation_job_attempts = 0 "
        "WHERE id = $1",
        npc_id,
    )
    (lease,) = await JobQueue(conn).claim(worker_id="worker-1", limit=1, lease_seconds=30.0)
    again = Claim.of(lease)
    assert (again.job_id, again.attempt) == (lost.job_id, lost.attempt)

    storage = FilesystemStorage(tmp_path, BUCKET)
    await storage.ensure_bucket()
    pool = await create_pool(db_dsn, max_size=2)
    try:
        runner = JobRunner(
            pool=pool, provider=TemplateProvider(), storage=storage, worker_id="worker-1",
            max_attempts=3, job_deadline=30.0, metrics=WorkerMetrics(),
        )  # fmt: skip
        assert (await runner.run(again)).status == "succeeded"
        lost.result = b"<npc name='stale'/>"
        lost.finalize_in_doubt = True  # its earlier finalize failed without an answer
        outcome = await runner.run(lost)
    finally:
        await pool.close()

    assert outcome.status == "discarded"
    outcomes = await conn.fetch(
        "SELECT outcome FROM npc_generation_attempts WHERE job_id = $1 ORDER BY id", lost.job_id
    )
    assert [r["outcome"] for r in outcomes] == ["succeeded", "discarded"]
    assert b"stale" not in (tmp_path / BUCKET / f"{npc_id}.xml").read_bytes()
