"""npcforge behind a connection pooler (Supavisor behaves like PgBouncer here): Debian's
PgBouncer in front of the test database, npcforge's worker and API as real processes.

Session mode with PgBouncer's stock settings carries everything. Transaction mode carries the
API and the command line (NPCFORGE_DB_POOLER=transaction), the worker's LISTEN goes over
DATABASE_LISTEN_URL, and `doctor` says what it sees.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg

from apikit import SECRET, bearer, owner_of, token
from clikit import cli_env, run_cli
from conftest import create_database, make_npc, sample_data
from npcforge.db.connect import create_pool
from npcforge.embedded import EmbeddedPostgres
from poolerkit import api_process, npcforge_process, running_pgbouncer


def database_of(dsn: str) -> str:
    return dsn.split("?", maxsplit=1)[0].rsplit("/", 1)[1]


def daemon_env(storage_dir: Any, **extra: str) -> dict[str, str]:
    return cli_env(
        NPCFORGE_PROVIDER="template",
        NPCFORGE_STORAGE="filesystem",
        NPCFORGE_STORAGE_DIR=str(storage_dir),
        NPCFORGE_POLL_SECONDS="1",
        NPCFORGE_AUTH="jwt",
        SUPABASE_JWT_SECRET=SECRET,
        **extra,
    )


async def generate_and_poll(client: Any, npc_id: uuid.UUID, owner: uuid.UUID) -> dict[str, Any]:
    headers = bearer(token(owner))
    started = await client.post(
        f"/api/npcs/{npc_id}/generate", json={"regenerate": False, "currentXml": None},
        headers=headers,
    )  # fmt: skip
    assert started.status_code == 202, started.text
    job = started.json()["jobId"]
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        # Several polls at once, as many browser tabs would send them.
        answers = await asyncio.gather(
            *(client.get(f"/api/npcs/{npc_id}/generation-jobs/{job}", headers=headers)
              for _ in range(8))
        )  # fmt: skip
        for answer in answers:
            assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answers[-1].json()
        if body["status"] in ("succeeded", "failed"):
            return body
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.2)


async def test_worker_and_api_through_pgbouncer_session_mode_with_stock_settings(
    pg_cluster: EmbeddedPostgres, conn, db_dsn, storage_dir
):
    npc_id = await make_npc(conn)
    async with running_pgbouncer(pg_cluster, "session") as bouncer:
        pooled = bouncer.dsn(database_of(db_dsn))
        env = daemon_env(storage_dir, DATABASE_URL=pooled)
        assert (await run_cli("storage", "ensure-bucket", env=env)).code == 0
        async with (
            npcforge_process("worker", env=env),
            api_process(env) as client,
        ):
            done = await generate_and_poll(client, npc_id, await owner_of(conn, npc_id))
        assert done["status"] == "succeeded" and done["xml"].startswith("<?xml")
        # The worker's claims commit asynchronously: set after connecting, not at start-up.
        pool = await create_pool(pooled, max_size=1, keep_session=True, synchronous_commit=False)
        try:
            assert await pool.fetchval("SHOW synchronous_commit") == "off"
        finally:
            await pool.close()


async def test_api_cli_and_worker_through_pgbouncer_transaction_mode(
    pg_cluster: EmbeddedPostgres, storage_dir, tmp_path
):
    direct = await create_database(pg_cluster, template="template0")  # empty: migrated below
    name = database_of(direct)
    # Two server connections for every client: statements of different clients interleave.
    async with running_pgbouncer(pg_cluster, "transaction", default_pool_size=2) as bouncer:
        env = daemon_env(
            storage_dir, DATABASE_URL=bouncer.dsn(name), NPCFORGE_DB_POOLER="transaction",
            DATABASE_LISTEN_URL=direct,
        )  # fmt: skip
        assert (await run_cli("storage", "ensure-bucket", env=env)).code == 0
        migrated = await run_cli("migrate", env=env)
        assert migrated.code == 0 and migrated.out.startswith("applied "), migrated
        sample = tmp_path / "npc.json"
        ids = []
        for _ in range(2):
            sample.write_text(json.dumps(sample_data()))
            imported = await run_cli("npc", "import", str(sample), env=env)
            assert imported.code == 0, imported.err
            ids.append(uuid.UUID(imported.out.strip()))
        queued = await run_cli("enqueue", str(ids[0]), env=env)
        assert queued.code == 0, queued.err

        async with (
            npcforge_process("worker", env=env),
            api_process(env) as client,
        ):
            conn = await asyncpg.connect(direct)
            try:
                owner = await conn.fetchval("SELECT owner_id FROM npcs WHERE id = $1", ids[1])
            finally:
                await conn.close()
            done = await generate_and_poll(client, ids[1], owner)
            assert done["status"] == "succeeded", done
            for _ in range(100):  # the job queued from the command line
                status = await run_cli("status", str(ids[0]), "--json", env=env)
                assert status.code == 0, status.err
                if json.loads(status.out)["status"] == "succeeded":
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError(status.out)
        listed = await run_cli("jobs", "list", "--json", env=env)
        assert listed.code == 0 and len(json.loads(listed.out)) == 2, listed

        doctor = await run_cli("doctor", "--json", env=env)
        checks = {c["check"]: c for c in json.loads(doctor.out)}
        assert doctor.code == 0, doctor.out
        assert checks["pooler"]["detail"].startswith("transaction-mode pooler")
        assert checks["listen/notify"]["detail"] == "round trip ok over DATABASE_LISTEN_URL"


async def test_transaction_pooler_without_a_listen_url_is_refused_and_reported(
    pg_cluster: EmbeddedPostgres, db_dsn, storage_dir
):
    async with running_pgbouncer(pg_cluster, "transaction") as bouncer:
        pooled = bouncer.dsn(database_of(db_dsn))
        worker = await run_cli(
            "worker",
            env=daemon_env(storage_dir, DATABASE_URL=pooled, NPCFORGE_DB_POOLER="transaction"),
        )
        assert worker.code == 2
        assert "set DATABASE_LISTEN_URL" in worker.err and "session pooler" in worker.err

        # Nothing configured: doctor sees the pooler and does not vouch for LISTEN/NOTIFY.
        doctor = await run_cli("doctor", "--json", env=daemon_env(storage_dir, DATABASE_URL=pooled))
        assert doctor.code == 1
        checks = {c["check"]: c for c in json.loads(doctor.out)}
        assert checks["database"]["ok"]
        assert not checks["pooler"]["ok"]
        assert "NPCFORGE_DB_POOLER=transaction" in checks["pooler"]["fix"]
        assert not checks["listen/notify"]["ok"]
        assert "DATABASE_LISTEN_URL" in checks["listen/notify"]["fix"]
