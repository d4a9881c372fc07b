"""Workers and connections dying under real `npcforge worker` processes: SIGKILL mid-job, every
database connection terminated, a LISTEN backend that stops answering."""

from __future__ import annotations

import asyncio
import signal
import time

from clikit import free_port
from conftest import make_npc, make_npcs, wait_for
from npcforge.db.connect import connect
from npcforge.db.npcs import load_npc
from npcforge.generation.xmlrules import render_npc_xml
from queuekit import (
    BUCKET,
    model_env,
    npc_name,
    pause_process,
    resume_process,
    scrape_metrics,
    slow_model,
    wait_all,
    worker_env,
    worker_processes,
)
from workerkit import wait_status


async def test_sigkilled_worker_job_is_finished_by_another_after_the_lease(conn, db_dsn, tmp_path):
    npc_id = await make_npc(conn)
    name = await npc_name(conn, npc_id)
    storage = tmp_path / "storage"
    async with slow_model() as model:
        env = worker_env(db_dsn, storage, **model_env(model.standin), NPCFORGE_LEASE_SECONDS="3")
        held = model.hold(name)  # the first worker's generation never answers
        async with worker_processes([env], tmp_path / "victim") as [victim]:
            job = await conn.fetchval("SELECT npcforge_enqueue($1)", npc_id)
            await model.wait_arrival(name)
            owner = await conn.fetchval(
                "SELECT generation_job_lease_owner FROM npcs WHERE id = $1", npc_id
            )
            assert f":{victim.pid}:" in owner
            async with worker_processes([env], tmp_path / "rescuer") as [rescuer]:
                victim.send(signal.SIGKILL)
                assert await victim.wait(5) == -signal.SIGKILL
                del model.holds[name]
                held.set()  # from now on the model answers at once
                row = await wait_status(conn, npc_id, "succeeded", "failed", timeout=30)
                await asyncio.sleep(0.5)  # anything still to come would show up now

    assert row["status"] == "succeeded"
    assert row["job_id"] == job  # the same job, not a new one
    assert row["attempts"] == 2
    attempts = await conn.fetch(
        "SELECT attempt, outcome, error_code, worker_id, started_at FROM npc_generation_attempts "
        "WHERE job_id = $1 ORDER BY attempt, id",
        job,
    )
    assert [(a["attempt"], a["outcome"], a["error_code"]) for a in attempts] == [
        (1, "retry", "WORKER_LOST"),
        (2, "succeeded", None),
    ]
    assert f":{victim.pid}:" in attempts[0]["worker_id"]
    assert f":{rescuer.pid}:" in attempts[1]["worker_id"]
    # Taken back only once the lease ran out, not before.
    gap = (attempts[1]["started_at"] - attempts[0]["started_at"]).total_seconds()
    assert gap >= 3
    files = sorted((storage / BUCKET).iterdir())
    assert [f.name for f in files] == [f"{npc_id}.xml"]  # one file, no leftovers
    npc = await load_npc(conn, npc_id)
    assert npc is not None
    assert files[0].read_text() == render_npc_xml(npc)
    assert model.requests[name] == 2
    reaped = [line for line in rescuer.logs() if line.get("action") == "reap"]
    assert len(reaped) == 1
    assert reaped[0]["job_id"] == str(job) and reaped[0]["code"] == "WORKER_LOST"


WORKER_WAITING_ON_LOCK = """
SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND application_name = 'npcforge-worker'
   AND wait_event_type = 'Lock'
"""

TERMINATE_WORKER_CONNECTIONS = """
SELECT count(pg_terminate_backend(pid))
  FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid()
   AND application_name IN ('npcforge-worker', 'npcforge-listener')
"""


async def test_terminating_every_worker_connection_loses_and_repeats_nothing(
    conn, db_dsn, tmp_path
):
    ids = await make_npcs(conn, 16)
    parked = ids[0]
    parked_name = await npc_name(conn, parked)
    ports = [free_port(), free_port()]
    async with slow_model(delay=0.7) as model:
        envs = [
            worker_env(
                db_dsn,
                tmp_path / "storage",
                **model_env(model.standin),
                NPCFORGE_POLL_SECONDS="30",  # no sweep to the rescue: recovery must be prompt
                NPCFORGE_METRICS_PORT=str(port),
            )
            for port in ports
        ]
        async with worker_processes(envs, tmp_path / "logs") as workers:
            held = model.hold(parked_name)
            await conn.execute(
                "UPDATE npcs SET generation_job_status = 'queued' WHERE id = ANY($1::uuid[])", ids
            )
            # Park one job's publish inside its transaction: we hold its row, then let the
            # model answer, so the worker waits on the lock with its transaction open.
            await model.wait_arrival(parked_name)
            blocker = await connect(db_dsn)
            blocking = blocker.transaction()
            await blocking.start()
            await blocker.execute("SELECT 1 FROM npcs WHERE id = $1 FOR UPDATE", parked)
            held.set()
            await wait_for(lambda: conn.fetchval(WORKER_WAITING_ON_LOCK), timeout=10)

            terminated = []
            for _ in range(3):  # the parked publish, and everything else wherever it is
                terminated.append(await conn.fetchval(TERMINATE_WORKER_CONNECTIONS))
                await asyncio.sleep(0.6)
            await blocking.rollback()
            await blocker.close()
            await wait_all(conn, "succeeded", 16, timeout=45)

            # The listeners are back: a new job is picked up by notification, not by the sweep.
            late = await make_npc(conn)
            started = time.monotonic()
            await conn.execute("SELECT npcforge_enqueue($1)", late)
            await wait_status(conn, late, "succeeded", timeout=10)
            pickup = time.monotonic() - started
            metrics = [await scrape_metrics(port) for port in ports]

    assert terminated[0] >= 4  # both workers' LISTEN and pool connections
    assert pickup < 5
    for series in metrics:
        assert series["npcforge_listener_up"] == 1
        assert series["npcforge_listener_reconnects_total"] >= 1
    assert sum(s["npcforge_jobs_succeeded_total"] for s in metrics) == 17
    # Nothing generated twice, nothing finalized twice.
    assert all(n == 1 for n in model.requests.values()) and len(model.requests) == 17
    per_job = await conn.fetch(
        "SELECT job_id, array_agg(outcome) AS outcomes FROM npc_generation_attempts GROUP BY job_id"
    )
    assert len(per_job) == 17
    assert all(r["outcomes"] == ["succeeded"] for r in per_job)
    assert len(list((tmp_path / "storage" / BUCKET).glob("*.xml"))) == 17
    # The parked publish lost its connection mid-transaction and finished on a new one.
    retried = [
        line
        for worker in workers
        for line in worker.logs()
        if line.get("npc_id") == str(parked) and line.get("phase") == "finalizing"
    ]
    assert retried, "the parked publish never saw its connection die"


async def test_silent_listen_connection_is_replaced_within_10_s_with_a_catch_up_claim(
    conn, db_dsn, tmp_path
):
    env = worker_env(db_dsn, tmp_path / "storage", NPCFORGE_POLL_SECONDS="60")
    async with worker_processes([env], tmp_path / "logs") as [worker]:
        backend = await conn.fetchval(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'npcforge-listener'"
        )
        # The LISTEN backend stops answering but keeps its socket open: no error, no FIN --
        # only the worker's own probe can tell.
        pause_process(backend)
        stalled = time.monotonic()
        try:
            npc_id = await make_npc(conn)
            await conn.execute("SELECT npcforge_enqueue($1)", npc_id)  # this NOTIFY is lost
            await worker.wait_log(lambda line: line.get("action") == "listener_down", timeout=15)
            detected = time.monotonic() - stalled
            await wait_status(conn, npc_id, "succeeded", timeout=15)
            finished = time.monotonic() - stalled
        finally:
            resume_process(backend)
        await worker.wait_log(lambda line: line.get("action") == "listener_up", timeout=10)

    assert detected < 10
    assert finished < 15  # the catch-up claim after reconnecting, long before the 60 s sweep
    down = [line for line in worker.logs() if line.get("action") == "listener_down"]
    assert down[0]["error"] == "ConnectionError"


async def test_a_claim_held_up_longer_than_the_lease_never_hands_out_a_lapsed_lease(
    conn, db_dsn, tmp_path
):
    # A claim blocked for twice the lease (here by a lock on the shop items its record load
    # reads; on a busy machine by a starved server) must not come back with leases that ran
    # out while it waited: other workers would take those jobs back and run them again.
    from workerkit import running_worker

    lease = 3.0
    npc_id = await make_npc(conn)
    async with running_worker(db_dsn, tmp_path / "storage", lease_seconds=lease):
        blocker = await connect(db_dsn)
        try:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE npc_shop_items IN ACCESS EXCLUSIVE MODE")
                await conn.execute("SELECT npcforge_enqueue($1)", npc_id)
                await asyncio.sleep(2 * lease)
                released = await blocker.fetchval("SELECT clock_timestamp()")
        finally:
            await blocker.close()
        await wait_status(conn, npc_id, "succeeded")
    (attempt,) = await conn.fetch(
        "SELECT attempt, outcome, started_at FROM npc_generation_attempts WHERE npc_id = $1",
        npc_id,
    )
    assert (attempt["attempt"], attempt["outcome"]) == (1, "succeeded")
    # The lease the job ran under had not lapsed when the claim got through.
    assert (released - attempt["started_at"]).total_seconds() < lease
