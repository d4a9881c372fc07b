"""Operator commands on a real database: jobs list/retry/cancel and doctor."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

from aiohttp import web

from clikit import cli_env, free_port, run_cli
from conftest import make_npc
from workerkit import ScriptedProvider, job_row, running_worker, wait_status


def _env(db_dsn, tmp_path, **extra):
    base = {
        "DATABASE_URL": db_dsn,
        "NPCFORGE_PROVIDER": "template",
        "NPCFORGE_STORAGE": "filesystem",
        "NPCFORGE_STORAGE_DIR": str(tmp_path / "storage"),
    }
    return cli_env(**{**base, **extra})


async def _fail(conn, npc_id, code):
    await conn.execute("SELECT npcforge_enqueue($1)", npc_id)
    await conn.execute(
        "UPDATE npcs SET generation_job_status = 'failed', "
        "generation_job_error = jsonb_build_object('code', $2::text, 'message', 'x') WHERE id = $1",
        npc_id,
        code,
    )


async def test_jobs_list_filters_and_json(conn, db_dsn, tmp_path):
    a, b, c = [await make_npc(conn) for _ in range(3)]
    await conn.execute("SELECT npcforge_enqueue($1)", a)
    await _fail(conn, b, "AI_UPSTREAM")
    env = _env(db_dsn, tmp_path)
    everything = await run_cli("jobs", "list", "--json", env=env)
    assert everything.code == 0, everything.err
    rows = json.loads(everything.out)
    assert {r["npcId"] for r in rows} == {str(a), str(b)}  # c never had a job
    failed = json.loads(
        (await run_cli("jobs", "list", "--status", "failed", "--json", env=env)).out
    )
    assert [(r["npcId"], r["errorCode"]) for r in failed] == [(str(b), "AI_UPSTREAM")]
    text = await run_cli("jobs", "list", "--limit", "1", env=env)
    assert text.code == 0 and len(text.out.strip().splitlines()) == 1
    bad = await run_cli("jobs", "list", "--status", "weird", env=env)
    assert bad.code == 2
    assert c


async def test_jobs_retry_one_and_all_failed_by_code(conn, db_dsn, tmp_path):
    a, b, c = [await make_npc(conn) for _ in range(3)]
    await _fail(conn, a, "AI_UPSTREAM")
    await _fail(conn, b, "AI_UPSTREAM")
    await _fail(conn, c, "AI_CONFIG")
    old_a = (await job_row(conn, a))["job_id"]
    env = _env(db_dsn, tmp_path)
    one = await run_cli("jobs", "retry", str(a), "--json", env=env)
    assert one.code == 0, one.err
    row = await job_row(conn, a)
    assert row["status"] == "queued" and row["job_id"] != old_a
    assert json.loads(one.out)[0]["jobId"] == str(row["job_id"])
    again = await run_cli("jobs", "retry", str(a), env=env)
    assert again.code == 1 and "no failed job" in again.err
    by_code = await run_cli(
        "jobs", "retry", "--all-failed", "--code", "AI_UPSTREAM", "--json", env=env
    )
    assert [r["npcId"] for r in json.loads(by_code.out)] == [str(b)]
    assert (await job_row(conn, c))["status"] == "failed"
    rest = await run_cli("jobs", "retry", "--all-failed", env=env)
    assert rest.code == 0 and (await job_row(conn, c))["status"] == "queued"
    usage = await run_cli("jobs", "retry", env=env)
    assert usage.code == 2


async def test_retry_all_failed_leaves_cancelled_jobs_alone_unless_named(conn, db_dsn, tmp_path):
    upstream, cancelled, named = [await make_npc(conn) for _ in range(3)]
    await _fail(conn, upstream, "AI_UPSTREAM")
    for npc_id in (cancelled, named):
        await conn.execute("SELECT npcforge_enqueue($1)", npc_id)
    env = _env(db_dsn, tmp_path)
    for npc_id in (cancelled, named):
        assert (await run_cli("jobs", "cancel", str(npc_id), env=env)).code == 0
    result = await run_cli("jobs", "retry", "--all-failed", "--json", env=env)
    assert result.code == 0, result.err
    assert [r["npcId"] for r in json.loads(result.out)] == [str(upstream)]
    assert (await job_row(conn, cancelled))["error"]["code"] == "CANCELLED"
    # named: by its id, or by asking for the code
    assert (await run_cli("jobs", "retry", str(named), env=env)).code == 0
    assert (await job_row(conn, named))["status"] == "queued"
    by_code = await run_cli("jobs", "retry", "--all-failed", "--code", "CANCELLED", env=env)
    assert by_code.code == 0 and (await job_row(conn, cancelled))["status"] == "queued"


async def test_retry_with_an_unknown_code_is_a_usage_error(conn, db_dsn, tmp_path):
    npc_id = await make_npc(conn)
    await _fail(conn, npc_id, "LEGACY_TIMEOUT")  # a code an older system wrote
    env = _env(db_dsn, tmp_path)
    typo = await run_cli("jobs", "retry", "--all-failed", "--code", "NOPE", env=env)
    assert typo.code == 2 and typo.out == ""
    assert "'NOPE' is not an error code" in typo.err and "AI_UPSTREAM" in typo.err
    assert (await job_row(conn, npc_id))["status"] == "failed"
    legacy = await run_cli("jobs", "retry", "--all-failed", "--code", "LEGACY_TIMEOUT", env=env)
    assert legacy.code == 0 and (await job_row(conn, npc_id))["status"] == "queued"
    none_failed = await run_cli("jobs", "retry", "--all-failed", "--code", "AI_TIMEOUT", env=env)
    assert none_failed.code == 0 and "nothing to retry" in none_failed.out


async def test_cancel_queued_job(conn, db_dsn, tmp_path):
    npc_id = await make_npc(conn)
    job = await conn.fetchval("SELECT npcforge_enqueue($1)", npc_id)
    result = await run_cli("jobs", "cancel", str(npc_id), "--json", env=_env(db_dsn, tmp_path))
    assert result.code == 0, result.err
    assert json.loads(result.out) == [{"npcId": str(npc_id), "jobId": str(job)}]
    row = await job_row(conn, npc_id)
    assert row["status"] == "failed" and row["error"]["code"] == "CANCELLED"
    nothing = await run_cli("jobs", "cancel", str(npc_id), env=_env(db_dsn, tmp_path))
    assert nothing.code == 1


async def test_cancel_running_job_stops_the_worker_at_next_renewal(conn, db_dsn, tmp_path):
    npc_id = await make_npc(conn)
    stuck = ScriptedProvider()
    stuck.gate = asyncio.Event()
    storage_dir = tmp_path / "storage"
    async with running_worker(db_dsn, storage_dir, provider=stuck, lease_seconds=1.5) as worker:
        job = await conn.fetchval("SELECT npcforge_enqueue($1)", npc_id)
        await asyncio.wait_for(stuck.started.wait(), 10)
        assert len(worker.running) == 1
        result = await run_cli("jobs", "cancel", str(npc_id), env=_env(db_dsn, tmp_path))
        assert result.code == 0, result.err
        for _ in range(100):  # the lease keeper renews every 0.5 s
            if not worker.running:
                break
            await asyncio.sleep(0.05)
        assert not worker.running
        stuck.gate.set()  # even if the provider answered now, nothing may be written
        await asyncio.sleep(0.3)
    row = await wait_status(conn, npc_id, "failed")
    assert row["error"]["code"] == "CANCELLED"
    assert not (storage_dir / "npc-xml-files" / f"{npc_id}.xml").exists()
    outcome = await conn.fetchval(
        "SELECT outcome FROM npc_generation_attempts WHERE job_id = $1", job
    )
    assert outcome == "discarded"


# --- doctor ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fake_key_endpoint(valid_key: str):
    async def key(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {valid_key}":
            return web.json_response(
                {"error": {"code": 401, "message": "No auth credentials found"}}, status=401
            )
        return web.json_response({"data": {"label": "test", "usage": 0}})

    app = web.Application()
    app.router.add_get("/api/v1/key", key)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/api/v1"
    finally:
        await runner.cleanup()


async def test_doctor_all_ok(db_dsn, tmp_path):
    env = _env(db_dsn, tmp_path)
    await run_cli("storage", "ensure-bucket", env=env)
    result = await run_cli("doctor", env=env)
    assert result.code == 0, result.out + result.err
    lines = result.out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["OK"] * 8
    assert [line.split()[1].rstrip(":") for line in lines] == [
        "database", "pooler", "migrations", "queue", "budget", "listen/notify", "storage", "provider",
    ]  # fmt: skip


async def test_doctor_reports_each_failure_with_a_fix(pg_cluster, tmp_path):
    name = f"empty_{uuid.uuid4().hex[:8]}"
    import asyncpg

    admin = await asyncpg.connect(pg_cluster.dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    env = _env(pg_cluster.dsn_for(name), tmp_path)  # no migrations, no bucket
    result = await run_cli("doctor", "--json", env=env)
    assert result.code == 1
    checks = {c["check"]: c for c in json.loads(result.out)}
    assert checks["database"]["ok"]
    assert not checks["migrations"]["ok"] and "npcforge migrate" in checks["migrations"]["fix"]
    assert not checks["storage"]["ok"] and "ensure-bucket" in checks["storage"]["fix"]


async def test_doctor_database_unreachable(tmp_path):
    env = _env("postgresql://nobody@127.0.0.1:1/none", tmp_path)
    result = await run_cli("doctor", env=env)
    assert result.code == 1
    assert result.out.splitlines()[0].startswith("FAIL database")


async def test_doctor_checks_the_provider_key(db_dsn, tmp_path):
    async with fake_key_endpoint("sk-or-v1-good") as base:
        good = _env(db_dsn, tmp_path, NPCFORGE_PROVIDER="openrouter", OPENROUTER_BASE_URL=base,
                    OPENROUTER_API_KEY="sk-or-v1-good")  # fmt: skip
        await run_cli("storage", "ensure-bucket", env=good)
        ok = await run_cli("doctor", "--json", env=good)
        assert {c["check"]: c["ok"] for c in json.loads(ok.out)}["provider"] is True
        bad = dict(good, OPENROUTER_API_KEY="sk-or-v1-wrong-secret")
        refused = await run_cli("doctor", env=bad)
        assert refused.code == 1
        assert "FAIL provider: key refused (HTTP 401)" in refused.out
        assert "sk-or-v1-wrong-secret" not in refused.out + refused.err
