"""The command line against a real database, as a user runs it."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

import pytest

from clikit import cli_env, run_cli
from conftest import make_npc, sample_data
from npcforge.db.migrate import load_migrations


def _write(tmp_path, data) -> str:
    path = tmp_path / "npc.json"
    path.write_text(json.dumps(data))
    return str(path)


async def _counts(conn) -> tuple[int, int, int, int]:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM npcs) a, (SELECT count(*) FROM npc_shop_items) b, "
        "(SELECT count(*) FROM npc_keywords) c, (SELECT count(*) FROM npc_keyword_phrases) d"
    )
    return tuple(row)


async def test_import_creates_npc_with_items_and_keywords(conn, db_dsn, tmp_path):
    data = sample_data()
    result = await run_cli(
        "npc", "import", _write(tmp_path, data), env=cli_env(DATABASE_URL=db_dsn)
    )
    assert result.code == 0, result.err
    npc_id = uuid.UUID(result.out.strip())
    assert await conn.fetchval("SELECT name FROM npcs WHERE id = $1", npc_id) == data["name"]
    assert await conn.fetchval("SELECT count(*) FROM npc_shop_items WHERE npc_id = $1", npc_id) == 5
    phrases = await conn.fetch(
        "SELECT p.phrase FROM npc_keyword_phrases p JOIN npc_keywords k ON k.id = p.keyword_id "
        "WHERE p.npc_id = $1 ORDER BY k.sort_index, p.position",
        npc_id,
    )
    assert [p["phrase"] for p in phrases] == [
        "job", "occupation", "rumours", "gossip", "news", "potions",
    ]  # fmt: skip


def _bad_inputs() -> list[tuple[str, dict, str]]:
    many = [
        {"listType": "buy", "name": f"item {i}", "itemId": 100 + i, "price": 1} for i in range(256)
    ]
    return [
        ("unknown field", sample_data(colour="red"), "colour"),
        ("health out of range", sample_data(stats={"healthNow": 70000, "healthMax": 70000}), "stats.healthNow"),
        ("semicolon in item name", sample_data(shopItems=[{"listType": "buy", "name": "a;b", "itemId": 1, "price": 1}]), "shopItems[0].name"),
        ("comma in phrase", sample_data(keywords=[{"response": "r", "phrases": ["x,y"]}]), "keywords[0].phrases"),
        ("duplicate phrase", sample_data(keywords=[{"response": "r1", "phrases": ["job"]}, {"response": "r2", "phrases": ["JOB"]}]), "duplicate phrase"),
        ("too many items", sample_data(shopItems=many), "shopItems"),
        ("item look without itemId", sample_data(look={"type": "item"}), "itemId"),
        ("comma in a real name", sample_data(shopItems=[{"listType": "sell", "name": "x", "itemId": 2120, "price": 1, "realName": "a, b"}]), "shopItems[0].realName"),
        ("fluid bought without subtype", sample_data(shopItems=[{"listType": "buy", "name": "vial", "itemId": 2006, "price": 1}]), "shopItems[0].subtype: '0' must name the fluid"),
        ("a farewell word as a phrase", sample_data(keywords=[{"response": "r", "phrases": ["job", "Bye"]}]), 'keywords[0].phrases[1]: \'Bye\' is a word the NPC system answers itself ("bye")'),
        ("talk-mode entry shadowed", sample_data(modules={"shopEnabled": True, "shopMode": "talk_mode"}, keywords=[], shopItems=[{"listType": "buy", "name": "potion", "itemId": 7618, "price": 1}, {"listType": "buy", "name": "health potion", "itemId": 7591, "price": 2}]), "shopItems[1].name"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "data", "names"), _bad_inputs(), ids=[c[0] for c in _bad_inputs()]
)
async def test_bad_import_exits_2_names_the_field_and_inserts_nothing(
    conn, db_dsn, tmp_path, case, data, names
):
    before = await _counts(conn)
    result = await run_cli(
        "npc", "import", _write(tmp_path, data), env=cli_env(DATABASE_URL=db_dsn)
    )
    assert result.code == 2, (case, result.out, result.err)
    assert names in result.said
    assert result.out == ""
    assert await _counts(conn) == before


async def test_import_of_missing_or_broken_file_exits_2(db_dsn, tmp_path):
    missing = await run_cli(
        "npc", "import", str(tmp_path / "nope.json"), env=cli_env(DATABASE_URL=db_dsn)
    )
    assert missing.code == 2 and "cannot read" in missing.err
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = await run_cli("npc", "import", str(broken), env=cli_env(DATABASE_URL=db_dsn))
    assert result.code == 2 and "not valid JSON" in result.err


async def test_missing_database_url_exits_2_naming_it():
    result = await run_cli("migrate")
    assert result.code == 2
    assert "DATABASE_URL" in result.err


async def test_bad_setting_exits_2_naming_it(db_dsn):
    result = await run_cli("migrate", env=cli_env(DATABASE_URL=db_dsn, NPCFORGE_CONCURRENCY="lots"))
    assert result.code == 2
    assert "NPCFORGE_CONCURRENCY" in result.err


_EVERY_COMMAND = [
    ["migrate"], ["worker"], ["api"], ["enqueue", str(uuid.UUID(int=1))],
    ["status", str(uuid.UUID(int=1))], ["jobs", "list"], ["jobs", "cancel", str(uuid.UUID(int=1))],
    ["npc", "import", "npc.json"], ["doctor"], ["storage", "ensure-bucket"],
]  # fmt: skip


@pytest.mark.parametrize("command", _EVERY_COMMAND, ids=" ".join)
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", "garbage"),
        ("DATABASE_URL", "postgresql://npcforge:pw-secret@localhost:abc/npcforge"),
        ("SUPABASE_URL", "project-ref.supabase.co"),
    ],
)
async def test_a_malformed_url_exits_2_at_start_naming_it_for_every_command(
    tmp_path, command, variable, value
):
    (tmp_path / "npc.json").write_text(json.dumps(sample_data()))
    settings = {
        "NPCFORGE_PROVIDER": "template", "NPCFORGE_STORAGE": "filesystem",
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none", variable: value,
    }  # fmt: skip
    env = cli_env(**settings)
    result = await run_cli(*command, env=env, cwd=tmp_path)
    assert result.code == 2, (result.out, result.err)
    assert f"{variable}: " in result.err
    assert "Traceback" not in result.err and "secret" not in result.err
    assert result.out == ""


async def test_a_url_asyncpg_refuses_stops_the_worker_with_2_instead_of_retrying(tmp_path):
    # Well-formed, so it passes the start-up check; asyncpg refuses the parameter on connect.
    env = cli_env(
        NPCFORGE_PROVIDER="template", NPCFORGE_STORAGE="filesystem",
        NPCFORGE_STORAGE_DIR=str(tmp_path.parent), NPCFORGE_BUCKET=tmp_path.name,
        NPCFORGE_LOG_FORMAT="text",
        DATABASE_URL="postgresql://postgres@127.0.0.1:1/none?target_session_attrs=sometimes",
    )  # fmt: skip
    result = await run_cli("worker", env=env, cwd=tmp_path, timeout=60)
    assert result.code == 2, result.err
    assert "DATABASE_URL: target_session_attrs" in result.err
    assert "retrying" not in result.err


async def test_worker_without_key_refuses_to_start(db_dsn):
    result = await run_cli(
        "worker", env=cli_env(DATABASE_URL=db_dsn, NPCFORGE_STORAGE="filesystem")
    )
    assert result.code == 2
    assert "OPENROUTER_API_KEY" in result.err


async def test_enqueue_and_status(conn, db_dsn):
    npc_id = await make_npc(conn)
    env = cli_env(DATABASE_URL=db_dsn)
    first = await run_cli("enqueue", str(npc_id), env=env)
    assert first.code == 0, first.err
    job_id = uuid.UUID(first.out.strip())
    conflict = await run_cli("enqueue", str(npc_id), env=env)
    assert conflict.code == 1 and "already queued" in conflict.err
    forced = await run_cli("enqueue", str(npc_id), "--force", env=env)
    assert forced.code == 0 and uuid.UUID(forced.out.strip()) != job_id
    status = await run_cli("status", str(npc_id), "--json", env=env)
    doc = json.loads(status.out)
    assert doc["jobId"] == forced.out.strip() and doc["status"] == "queued"
    unknown = await run_cli("status", str(uuid.uuid4()), env=env)
    assert unknown.code == 1
    usage = await run_cli("enqueue", "not-a-uuid", env=env)
    assert usage.code == 2


async def test_enqueue_takes_several_ids_and_queues_all_or_none(conn, db_dsn):
    a, b, c = [await make_npc(conn) for _ in range(3)]
    env = cli_env(DATABASE_URL=db_dsn)
    both = await run_cli("enqueue", str(a), str(b), str(a), env=env)
    assert both.code == 0, both.err
    jobs = [uuid.UUID(line) for line in both.out.split()]
    rows = await conn.fetch(
        "SELECT id, generation_job_id FROM npcs WHERE generation_job_status = 'queued'"
    )
    assert dict((r["id"], r["generation_job_id"]) for r in rows) == {a: jobs[0], b: jobs[1]}
    busy = await run_cli("enqueue", str(c), str(a), env=env)
    assert busy.code == 1 and "already queued" in busy.err and "nothing was queued" in busy.err
    assert await conn.fetchval("SELECT generation_job_id FROM npcs WHERE id = $1", c) is None
    forced = await run_cli("enqueue", str(c), str(a), "--force", "--json", env=env)
    assert forced.code == 0, forced.err
    assert [r["npcId"] for r in json.loads(forced.out)] == [str(c), str(a)]
    assert json.loads(forced.out)[1]["jobId"] != str(jobs[0])


async def test_enqueue_selects_npcs_by_job_status_or_all(conn, db_dsn):
    fresh, done, busy, failed, deleted = [await make_npc(conn) for _ in range(5)]
    for npc_id in (done, busy, failed):
        await conn.execute("SELECT npcforge_enqueue($1)", npc_id)
    await conn.execute("UPDATE npcs SET generation_job_status = 'succeeded' WHERE id = $1", done)
    await conn.execute(
        "UPDATE npcs SET generation_job_status = 'failed', generation_job_error = "
        '\'{"code": "AI_UPSTREAM", "message": "x"}\' WHERE id = $1',
        failed,
    )
    await conn.execute("UPDATE npcs SET deleted_at = now() WHERE id = $1", deleted)
    env = cli_env(DATABASE_URL=db_dsn)

    async def queued_ids(*args: str) -> set[str]:
        result = await run_cli("enqueue", *args, "--json", env=env)
        assert result.code == 0, result.err
        return {row["npcId"] for row in json.loads(result.out)}

    assert await queued_ids("--where-status", "none", "--where-status", "failed") == {
        str(fresh), str(failed),
    }  # fmt: skip
    everything = await run_cli("enqueue", "--all", env=env)
    assert everything.code == 0 and len(everything.out.split()) == 1  # only `done` was idle
    assert "skipped 3 NPC(s)" in everything.err
    assert await queued_ids("--all", "--force") == {str(n) for n in (fresh, done, busy, failed)}
    assert (
        await conn.fetchval("SELECT generation_job_status FROM npcs WHERE id = $1", deleted) is None
    )
    for wrong in ([], ["--all", str(fresh)], ["--where-status", "weird"]):
        usage = await run_cli("enqueue", *wrong, env=env)
        assert usage.code == 2, (wrong, usage.err)


_ISO_8601 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def _shape_problems(doc: Any, where: str = "") -> list[str]:
    """camelCase keys and ISO 8601 times, as the API writes them."""
    problems = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if not re.fullmatch(r"[a-z][A-Za-z0-9]*", key):
                problems.append(f"{where}.{key}: not camelCase")
            problems += _shape_problems(value, f"{where}.{key}")
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            problems += _shape_problems(value, f"{where}[{index}]")
    elif isinstance(doc, str) and re.match(r"\d{4}-\d\d-\d\d", doc) and not _ISO_8601.match(doc):
        problems.append(f"{where}: {doc!r} is not ISO 8601")
    return problems


async def test_every_json_output_has_the_api_shape(conn, db_dsn, tmp_path):
    failed, other = await make_npc(conn), await make_npc(conn)
    await conn.execute("SELECT npcforge_enqueue($1)", failed)
    await conn.execute(
        "UPDATE npcs SET generation_job_status = 'failed', content_size_bytes = 512, "
        "generation_job_error = $2 WHERE id = $1",
        failed,
        {"code": "AI_INVALID_XML", "message": "1 problems after repair",
         "details": {"findings": ["<npc name> is 'X', the record says 'Y'"]}, "requestId": "r1"},
    )  # fmt: skip
    env = cli_env(
        DATABASE_URL=db_dsn, NPCFORGE_PROVIDER="template", NPCFORGE_STORAGE="filesystem",
        NPCFORGE_STORAGE_DIR=str(tmp_path),
    )  # fmt: skip
    status = await run_cli("status", str(failed), "--json", env=env)
    doc = json.loads(status.out)
    assert doc["status"] == "failed" and doc["contentSizeBytes"] is None  # not this job's file
    assert doc["error"]["details"]["findings"] and doc["error"]["requestId"] == "r1"
    outputs = {"status": doc}
    for args in (
        ["jobs", "list"], ["jobs", "list", "--status", "failed"], ["jobs", "retry", str(failed)],
        ["enqueue", str(other)], ["jobs", "cancel", str(other)], ["doctor"],
    ):  # fmt: skip
        result = await run_cli(*args, "--json", env=env)
        assert result.code in (0, 1), result.err  # doctor fails here: no bucket
        outputs[" ".join(args)] = json.loads(result.out)
    assert outputs["jobs list"] and outputs["jobs list"][0]["startedAt"]
    problems = [p for name, doc in outputs.items() for p in _shape_problems(doc, name)]
    assert problems == []


async def test_status_shows_the_findings_of_a_failed_job(conn, db_dsn):
    npc_id = await make_npc(conn)
    await conn.execute("SELECT npcforge_enqueue($1)", npc_id)
    await conn.execute(
        "UPDATE npcs SET generation_job_status = 'failed', generation_job_error = $2 WHERE id = $1",
        npc_id,
        {"code": "AI_INVALID_XML", "message": "2 problems after repair",
         "details": {"findings": ["first finding", "second finding"]}},
    )  # fmt: skip
    result = await run_cli("status", str(npc_id), env=cli_env(DATABASE_URL=db_dsn))
    assert result.code == 0, result.err
    assert result.out.splitlines()[1:] == ["  - first finding", "  - second finding"]


async def test_migrate_is_idempotent_and_concurrent_runs_are_safe(pg_cluster):
    admin_name = f"mig_{uuid.uuid4().hex[:8]}"
    import asyncpg

    admin = await asyncpg.connect(pg_cluster.dsn)
    await admin.execute(f"CREATE DATABASE {admin_name}")
    await admin.close()
    dsn = pg_cluster.dsn_for(admin_name)
    env = cli_env(DATABASE_URL=dsn)
    results = await asyncio.gather(*(run_cli("migrate", env=env) for _ in range(3)))
    assert all(r.code == 0 for r in results), [r.err for r in results]
    applied = sum(int(r.out.split()[1]) for r in results)
    assert applied == len(load_migrations())
    again = await run_cli("migrate", env=env)
    assert again.code == 0 and again.out.startswith("applied 0 migration")


async def test_migrate_refuses_changed_file(conn, db_dsn):
    await conn.execute(
        "UPDATE npcforge_schema_migrations SET checksum = 'abc' WHERE version = '0001'"
    )
    result = await run_cli("migrate", env=cli_env(DATABASE_URL=db_dsn))
    assert result.code == 2
    assert "0001_schema.sql was changed after it was applied" in result.err


async def test_demo_prints_valid_xml_and_exits_0(tmp_path):
    result = await run_cli("demo", cwd=tmp_path, timeout=90)
    assert result.code == 0, result.err
    assert result.out.startswith(
        '<?xml version="1.0" encoding="UTF-8"?>\n<npc name="Mirela the Herbalist"'
    )
    assert "template" in result.err  # says loudly that it runs offline
    assert not (tmp_path / ".npcforge").exists()
