"""Adopting a live Supabase project of the original system: its schema and data, written the way
its app writes them, on a cluster with Supabase's roles (tests/supabasekit.py); then the real
`npcforge migrate`, and the jobs its webhook worker left behind run to the end.

The migrations applied are whatever sql/migrations/ holds, so this test also covers files added
after it was written.
"""

from __future__ import annotations

import json

from apikit import api_harness, bearer, token
from clikit import cli_env, run_cli
from conftest import SupabaseTemplates, make_npc, supabase_database
from npcforge.db.connect import connect
from npcforge.db.migrate import ACCEPTED_EARLIER_CHECKSUMS, check_current, load_migrations
from supabasekit import ORIGINAL_TABLES, as_role, columns_of, schema_rules, table_fingerprints
from workerkit import running_worker, wait_status


async def test_migrate_adopts_the_original_schema_and_data_and_runs_the_jobs_it_left(
    supabase_templates: SupabaseTemplates, storage_dir
):
    t = supabase_templates
    dsn = t.cluster.dsn(await supabase_database(t, t.original))
    npcs, jobs = t.data.npcs, t.data.jobs
    left_behind = (npcs["borin"], npcs["sylas"])  # queued, and stuck in processing
    conn = await connect(dsn)
    try:
        assert (
            await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            is False
        )
        columns = {table: await columns_of(conn, table) for table in ORIGINAL_TABLES}
        rows_before = await table_fingerprints(conn, columns)
        others_before = await table_fingerprints(conn, columns, skip_ids=left_behind)
        rules_before = await schema_rules(conn)
        assert rows_before["npcs"][0] == 7 and rows_before["npc_shop_items"][0] == 14

        result = await run_cli("migrate", env=cli_env(DATABASE_URL=dsn))
        assert result.code == 0, result.err
        assert result.out.startswith(f"applied {len(load_migrations())} migration(s)")

        # Every pre-existing row, policy, constraint, index and RLS switch is as it was.
        assert await table_fingerprints(conn, columns) == rows_before
        rules_after = await schema_rules(conn)
        for kind, before in rules_before.items():
            assert before <= rules_after[kind], (kind, before - rules_after[kind])
        again = await run_cli("migrate", env=cli_env(DATABASE_URL=dsn))
        assert again.code == 0 and again.out.startswith("applied 0 migration"), again

        # The original app keeps working on the adopted schema (this request is rolled back).
        async with as_role(conn, "authenticated", t.data.users["alice"]):
            rows = await conn.fetch(
                "SELECT * FROM bulk_replace_npc_shop_items($1, $2::jsonb)", npcs["sylas"],
                {"items": [{"listType": "buy", "name": "rope", "itemId": 3003, "price": 50}]},
            )  # fmt: skip
            assert [row["name"] for row in rows] == ["rope"]

        async with running_worker(dsn, storage_dir, lease_seconds=2, poll_seconds=0.3) as worker:
            for npc_id in left_behind:
                await wait_status(conn, npc_id, "succeeded", timeout=60)
            assert worker.done_count == 2
        for key in ("borin", "sylas"):
            row = await conn.fetchrow(
                "SELECT generation_job_id, content_size_bytes FROM npcs WHERE id = $1", npcs[key]
            )
            assert row["generation_job_id"] == jobs[key]  # the old UI's job id stays pollable
            stored = (storage_dir / "npc-xml-files" / f"{npcs[key]}.xml").read_bytes()
            assert row["content_size_bytes"] == len(stored) and b"<npc " in stored
        attempts = await conn.fetch(
            "SELECT npc_id, outcome, error_code FROM npc_generation_attempts ORDER BY id"
        )
        assert {(r["npc_id"], r["outcome"], r["error_code"]) for r in attempts} == {
            (npcs["borin"], "succeeded", None),
            (npcs["sylas"], "retry", "WORKER_LOST"),  # the stuck row was taken back
            (npcs["sylas"], "succeeded", None),
        }
        assert await table_fingerprints(conn, columns, skip_ids=left_behind) == others_before
    finally:
        await conn.close()

    # The old UI polls the job id it was given, as Alice.
    async with api_harness(dsn, storage_dir) as api:
        answer = await api.client.get(
            f"/api/npcs/{npcs['borin']}/generation-jobs/{jobs['borin']}",
            headers=bearer(token(t.data.users["alice"])),
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "succeeded" and answer.json()["xml"].startswith("<?xml")


async def test_a_database_migrated_before_0001_learnt_to_adopt_still_migrates(conn, db_dsn):
    """0001 gained guarded adoption steps after release; its earlier checksum stays accepted,
    so `migrate` and `doctor` go on working on databases that applied the earlier text."""
    earlier = next(iter(ACCEPTED_EARLIER_CHECKSUMS["0001"]))
    await conn.execute(
        "UPDATE npcforge_schema_migrations SET checksum = $1 WHERE version = '0001'", earlier
    )
    result = await run_cli("migrate", env=cli_env(DATABASE_URL=db_dsn))
    assert result.code == 0 and result.out.startswith("applied 0 migration"), result
    assert await check_current(conn) == []
    # Any other change is still refused.
    await conn.execute(
        "UPDATE npcforge_schema_migrations SET checksum = 'abc' WHERE version = '0001'"
    )
    refused = await run_cli("migrate", env=cli_env(DATABASE_URL=db_dsn))
    assert refused.code == 2 and "0001_schema.sql was changed" in refused.err


async def test_doctor_reports_jobs_that_would_never_run_once_and_a_leftover_webhook(
    conn, db_dsn, tmp_path
):
    env = cli_env(
        DATABASE_URL=db_dsn, NPCFORGE_PROVIDER="template", NPCFORGE_STORAGE="filesystem",
        NPCFORGE_STORAGE_DIR=str(tmp_path / "storage"),
    )  # fmt: skip
    assert (await run_cli("storage", "ensure-bucket", env=env)).code == 0
    stuck, lost = await make_npc(conn), await make_npc(conn)
    # What the system replaced leaves: a job running with no lease (the reaper takes it back),
    # and one queued without a run-after (written with the enqueue trigger off).
    await conn.execute("ALTER TABLE npcs DISABLE TRIGGER trg_npcs_job_change")
    await conn.execute(
        "UPDATE npcs SET generation_job_id = gen_random_uuid(), generation_job_status = "
        "CASE WHEN id = $1 THEN 'processing' ELSE 'queued' END::generation_job_status, "
        "generation_job_run_after = NULL WHERE id = ANY($2::uuid[])",
        stuck, [stuck, lost],
    )  # fmt: skip
    await conn.execute("ALTER TABLE npcs ENABLE TRIGGER trg_npcs_job_change")
    report = await run_cli("doctor", "--json", env=env)
    queue = {c["check"]: c for c in json.loads(report.out)}["queue"]
    assert report.code == 1 and not queue["ok"]
    assert queue["detail"].startswith("1 queued job(s) have no generation_job_run_after")
    await conn.execute(queue["fix"])  # the fix it names works
    report = await run_cli("doctor", "--json", env=env)
    queue = {c["check"]: c for c in json.loads(report.out)}["queue"]
    assert report.code == 0 and queue["detail"].startswith("1 queued; 1 running without a lease")

    # The original's Database Webhook (a trigger calling supabase_functions) must be turned off.
    await conn.execute(
        """
        CREATE SCHEMA supabase_functions;
        CREATE FUNCTION supabase_functions.http_request() RETURNS trigger LANGUAGE plpgsql
          AS $$ BEGIN RETURN NEW; END $$;
        CREATE TRIGGER "generation-worker" AFTER INSERT OR UPDATE ON npcs
          FOR EACH ROW EXECUTE FUNCTION supabase_functions.http_request();
        """
    )
    report = await run_cli("doctor", "--json", env=env)
    queue = {c["check"]: c for c in json.loads(report.out)}["queue"]
    assert report.code == 1 and "generation-worker" in queue["detail"]
    assert "Webhooks" in queue["fix"]
