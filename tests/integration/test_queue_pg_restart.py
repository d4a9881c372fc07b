"""PostgreSQL itself goes away and comes back (a stop and a start of the cluster) while worker
processes have jobs in flight and queued. Runs on its own cluster: the session one is shared."""

from __future__ import annotations

import asyncio

import pgctl
from conftest import make_npc, make_npcs, wait_for
from npcforge.db.connect import connect
from npcforge.db.migrate import migrate
from npcforge.db.queries import q
from queuekit import (
    BUCKET,
    job_counts,
    model_env,
    slow_model,
    wait_all,
    worker_env,
    worker_processes,
)


async def test_postgres_restart_with_jobs_in_flight_and_queued_finishes_all_once(
    own_cluster, tmp_path
):
    dsn = own_cluster.dsn
    conn = await connect(dsn)
    await migrate(conn)
    ids = await make_npcs(conn, 24)
    # A job of a worker that is really gone: out of attempts, its lease long expired.
    ghost = await make_npc(conn)
    await conn.execute(GHOST_JOB, ghost)
    storage = tmp_path / "storage"
    async with slow_model(delay=1.5) as model:
        env = worker_env(
            dsn, storage, **model_env(model.standin),
            NPCFORGE_LEASE_SECONDS="4",  # shorter than the outage: every lease runs out
            NPCFORGE_POLL_SECONDS="1",
        )  # fmt: skip
        async with worker_processes([env, env], tmp_path / "logs") as workers:
            await conn.execute(
                "UPDATE npcs SET generation_job_status = 'queued' WHERE id = ANY($1::uuid[])", ids
            )
            await wait_for(lambda: _in_flight(conn, 8), timeout=15)  # both workers full
            await conn.close()

            await asyncio.to_thread(pgctl.stop_server, own_cluster)
            # Generations in flight finish while the database is gone; their results wait.
            await asyncio.sleep(5)
            await asyncio.to_thread(pgctl.start_server, own_cluster)

            conn = await connect(dsn)
            # Right after the restart no expired lease is held against its worker ...
            assert await conn.fetch(q("reap_expired_leases"), 3, 4.0, []) == []
            await wait_all(conn, "succeeded", 24, timeout=60)
            await asyncio.sleep(0.5)
            assert all(worker.running() for worker in workers)
            counts = await job_counts(conn)

    assert counts == {"succeeded": 24, "failed": 1}
    # ... but once the grace has passed, a lost worker's job is taken back as usual.
    error = await conn.fetchval("SELECT generation_job_error FROM npcs WHERE id = $1", ghost)
    assert error["code"] == "WORKER_LOST"
    assert len(model.requests) == 24
    assert all(n == 1 for n in model.requests.values()), "a job was generated twice"
    per_job = await conn.fetch(
        "SELECT job_id, array_agg(outcome ORDER BY id) AS outcomes "
        "FROM npc_generation_attempts WHERE npc_id <> $1 GROUP BY job_id",
        ghost,
    )
    assert len(per_job) == 24
    assert all(r["outcomes"] == ["succeeded"] for r in per_job)
    attempts = await conn.fetchval(
        "SELECT sum(generation_job_attempts) FROM npcs WHERE id <> $1", ghost
    )
    assert attempts == 24
    assert len(list((storage / BUCKET).glob("*.xml"))) == 24
    for worker in workers:
        # Every line the worker wrote through the outage is one JSON object (asyncpg's and
        # asyncio's complaints and their tracebacks included).
        raw = worker.raw_log().splitlines()
        assert raw and len(worker.logs()) == len(raw), [
            line for line in raw if not line.startswith("{")
        ][:5]
        actions = [line.get("action") for line in worker.logs()]
        assert "db_down" in actions and "db_up" in actions
        reaped = {line["npc_id"] for line in worker.logs() if line.get("action") == "reap"}
        assert reaped <= {str(ghost)}  # no live worker's lease was held against it
    # Jobs whose results were ready during the outage finalized afterwards, still fenced.
    kept = [
        line
        for worker in workers
        for line in worker.logs()
        if line.get("phase") == "finalizing" and line.get("msg", "").startswith("database")
    ]
    assert kept
    await conn.close()


GHOST_JOB = """
UPDATE npcs
   SET generation_job_status = 'processing', generation_job_id = gen_random_uuid(),
       generation_job_attempts = 3, generation_job_lease_owner = 'gone:1:ghost',
       generation_job_lease_token = gen_random_uuid(),
       generation_job_lease_expires_at = now() - interval '1 minute',
       generation_job_claimed_at = now() - interval '2 minutes'
 WHERE id = $1
"""


async def _in_flight(conn, count: int) -> bool:
    running = await conn.fetchval(
        "SELECT count(*) FROM npcs WHERE generation_job_status = 'processing' "
        "AND generation_job_lease_owner <> 'gone:1:ghost'"
    )
    return bool(running == count)
