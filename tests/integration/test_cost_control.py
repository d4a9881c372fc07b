"""Cost control against the OpenRouter stand-in, which reports a usage cost with every answer:
daily budgets across three worker processes (the in-flight overshoot bound), held jobs that
wait `queued` without an attempt and run once the budget is raised, the per-owner cap on the
API's start, and reuse of a file whose record did not change.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from apikit import api_harness, bearer, jwt_settings, owner_of, token
from clikit import cli_env, run_cli
from conftest import make_npc, make_npcs, wait_for
from npcforge.budget import CostPolicy
from npcforge.config import Settings
from npcforge.generation.openrouter import OpenRouterProvider
from queuekit import model_env, worker_env, worker_processes
from standins.openrouter import RecordedRequest, Reply, openrouter_standin
from workerkit import running_worker, wait_status

COST = Decimal("0.00037")  # what the stand-in reports as usage.cost for every answer
WORKERS = 3
CONCURRENCY = 2
IN_FLIGHT = WORKERS * CONCURRENCY  # attempts the fleet can have in flight at once


def slow_answers(standin: Any, delay: float) -> None:
    async def answer(request: RecordedRequest) -> Reply:
        await asyncio.sleep(delay)
        return standin.default_reply(request)

    standin.responder = answer


async def counts(conn: Any, ids: list[Any]) -> Any:
    return await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE generation_job_status = 'succeeded') AS succeeded, "
        "count(*) FILTER (WHERE generation_job_status = 'processing') AS processing, "
        "count(*) FILTER (WHERE generation_job_status = 'queued') AS queued "
        "FROM npcs WHERE id = ANY($1::uuid[])",
        ids,
    )


async def settled(conn: Any, ids: list[Any], at_least: int) -> Any:
    """Wait until at least `at_least` jobs succeeded and nothing runs, and it stays so over a
    few claim rounds (poll 0.5 s)."""

    async def quiet() -> Any:
        row = await counts(conn, ids)
        return row if row["succeeded"] >= at_least and row["processing"] == 0 else None

    first = await wait_for(quiet, timeout=60, interval=0.1)
    await asyncio.sleep(2.0)
    again = await counts(conn, ids)
    assert dict(again) == dict(first), "jobs still ran after the budget was spent"
    return again


BUDGET_JOBS = 5  # the budget: five answers' worth


@pytest.mark.parametrize(
    ("prices", "most"),
    [
        # Estimates that cover the cost (the packaged price of gpt-4o-mini): the fleet stops at
        # the budget exactly, the overshoot is less than one attempt's cost.
        ("", BUDGET_JOBS),
        # The worst case: estimates (almost) zero, so only what the upstream reported stops the
        # fleet, and every slot of every worker may be in flight then.
        ("openai/gpt-4o-mini=0.000001/0.000001", BUDGET_JOBS + IN_FLIGHT - 1),
    ],
    ids=["estimates-cover-cost", "estimates-near-zero"],
)
async def test_fleet_budget_across_three_workers_overshoots_at_most_the_calls_in_flight(
    conn, db_dsn, tmp_path, prices, most
):
    ids = await make_npcs(conn, 24)
    async with openrouter_standin() as standin:
        slow_answers(standin, 0.3)
        env = worker_env(
            db_dsn, tmp_path / "storage",
            NPCFORGE_CONCURRENCY=str(CONCURRENCY),
            NPCFORGE_DAILY_BUDGET_USD=str(BUDGET_JOBS * COST),
            NPCFORGE_MODEL_PRICES=prices,
            **model_env(standin),
        )  # fmt: skip
        async with worker_processes([env] * WORKERS, tmp_path / "logs") as workers:
            await conn.execute(
                "UPDATE npcs SET generation_job_status = 'queued' WHERE id = ANY($1::uuid[])", ids
            )
            row = await settled(conn, ids, BUDGET_JOBS)
            calls = len(standin.completions())
            spent = await conn.fetchval(
                "SELECT amount FROM npcforge_spend_days WHERE payer = 'fleet' "
                "AND day = (now() AT TIME ZONE 'UTC')::date"
            )
            held = await conn.fetch(
                "SELECT n.generation_job_attempts AS attempts, "
                "(SELECT count(*) FROM npc_generation_attempts a WHERE a.npc_id = n.id) AS rows "
                "FROM npcs n WHERE n.id = ANY($1::uuid[]) AND n.generation_job_status = 'queued'",
                ids,
            )
            status = await run_cli(
                "jobs", "list", "--status", "queued", "--json",
                env=cli_env(DATABASE_URL=db_dsn,
                            NPCFORGE_DAILY_BUDGET_USD=str(BUDGET_JOBS * COST)),
            )  # fmt: skip
            reached = [
                [line for line in w.logs() if line.get("action") == "budget_reached"]
                for w in workers
            ]

    # The bound (docs/operations.md): N <= admitted <= N + (attempts in flight) - 1, and N
    # exactly when the estimates cover the cost.
    assert BUDGET_JOBS <= row["succeeded"] <= most, dict(row)
    assert calls == row["succeeded"]  # every admitted job made exactly one call, no other did
    assert spent == row["succeeded"] * COST  # settled to what the upstream reported
    assert len(held) == len(ids) - row["succeeded"] > 0
    assert {(h["attempts"], h["rows"]) for h in held} == {(0, 0)}  # no attempt burned
    assert status.code == 0, status.said
    listed = json.loads(status.out)
    assert len(listed) == len(held)
    assert {job["holdReason"] for job in listed} == {"budget"}
    assert [len(lines) for lines in reached] == [1, 1, 1]  # one line per worker at the cap
    assert {line["scope"] for lines in reached for line in lines} == {"fleet"}

    # A raised budget: the held jobs run at once, as first attempts.
    async with openrouter_standin() as standin:
        env = worker_env(
            db_dsn, tmp_path / "storage", NPCFORGE_DAILY_BUDGET_USD="1",
            **model_env(standin),
        )  # fmt: skip
        async with worker_processes([env], tmp_path / "logs-raised"):
            await wait_for(lambda: _all_succeeded(conn, ids), timeout=60, interval=0.1)
        assert len(standin.completions()) == len(held)
    attempts = await conn.fetch(
        "SELECT attempt, outcome FROM npc_generation_attempts WHERE npc_id = ANY($1::uuid[])", ids
    )
    assert {(a["attempt"], a["outcome"]) for a in attempts} == {(1, "succeeded")}
    assert len(attempts) == len(ids)


async def _all_succeeded(conn: Any, ids: list[Any]) -> bool:
    return (await counts(conn, ids))["succeeded"] == len(ids)


async def test_an_owner_over_their_daily_budget_is_refused_a_start(conn, db_dsn, storage_dir):
    npc_id = await make_npc(conn)
    owner = await owner_of(conn, npc_id)
    other_npc = await make_npc(conn, ownerId=str(uuid.uuid4()))
    other_owner = await owner_of(conn, other_npc)
    # A call of this owner was admitted today, reserving more than the owner's cap.
    job_id = uuid.uuid4()
    row = await conn.fetchrow(
        "SELECT * FROM npcforge_spend_reserve($1, $2, 1, 'openai/gpt-4o-mini', 0.02, NULL, NULL)",
        npc_id, job_id,
    )  # fmt: skip
    assert row["admitted"]
    settings = jwt_settings(NPCFORGE_USER_DAILY_BUDGET_USD="0.01")
    async with api_harness(db_dsn, storage_dir, settings=settings) as api:
        refused = await api.client.post(
            f"/api/npcs/{npc_id}/generate", headers=bearer(token(owner))
        )
        allowed = await api.client.post(
            f"/api/npcs/{other_npc}/generate", headers=bearer(token(other_owner))
        )
        foreign = await api.client.post(
            f"/api/npcs/{npc_id}/generate", headers=bearer(token(other_owner))
        )
        # The owner's call settles cheaper than reserved: room again.
        await conn.execute(
            "INSERT INTO npc_generation_attempts (job_id, npc_id, attempt, worker_id, started_at,"
            " outcome, cost, duration_ms) VALUES ($1, $2, 1, 'w', now(), 'succeeded', 0.001, 5)",
            job_id, npc_id,
        )  # fmt: skip
        later = await api.client.post(f"/api/npcs/{npc_id}/generate", headers=bearer(token(owner)))

    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "BUDGET_EXCEEDED"
    assert error["details"]["limitUsd"] == 0.01
    assert error["details"]["resetsAt"].endswith("T00:00:00Z")
    assert 1 <= int(refused.headers["retry-after"]) <= 86_400
    assert allowed.status_code == 202
    assert foreign.status_code == 404  # another owner's NPC: never a hint that it exists
    assert later.status_code == 202


def openrouter_settings(standin: Any, **extra: str) -> Settings:
    return Settings(
        NPCFORGE_PROVIDER="openrouter",
        OPENROUTER_API_KEY="sk-or-test",
        OPENROUTER_BASE_URL=standin.base_url,
        OPENROUTER_MAX_RETRIES="0",
        **extra,
    )


async def _generate(conn: Any, npc_id: Any, *, force: bool = False) -> Any:
    job = await conn.fetchval("SELECT npcforge_enqueue($1, $2)", npc_id, force)
    row = await wait_status(conn, npc_id, "succeeded", "failed")
    assert row["job_id"] == job and row["status"] == "succeeded", dict(row)
    return await conn.fetchrow(
        "SELECT outcome, cost, model FROM npc_generation_attempts WHERE job_id = $1", job
    )


async def test_an_unchanged_record_reuses_its_file_and_a_changed_one_calls_the_model(
    conn, db_dsn, storage_dir: Path
):
    npc_id = await make_npc(conn)
    async with openrouter_standin() as standin:
        settings = openrouter_settings(standin)
        provider = OpenRouterProvider(settings)
        async with running_worker(
            db_dsn, storage_dir, provider=provider, cost_policy=CostPolicy.of(settings)
        ):
            first = await _generate(conn, npc_id)
            stored = (storage_dir / "npc-xml-files" / f"{npc_id}.xml").read_bytes()
            again = await _generate(conn, npc_id)
            calls_after_reuse = len(standin.completions())
            forced = await _generate(conn, npc_id, force=True)
            await conn.execute(
                "UPDATE npc_shop_items SET price = price + 1 WHERE id = "
                "(SELECT id FROM npc_shop_items WHERE npc_id = $1 ORDER BY position LIMIT 1)",
                npc_id,
            )
            changed = await _generate(conn, npc_id)
            (storage_dir / "npc-xml-files" / f"{npc_id}.xml").write_bytes(b"<npc/>")
            tampered = await _generate(conn, npc_id)
            reused_again = await _generate(conn, npc_id)
        await provider.close()

    assert first["outcome"] == "succeeded" and first["cost"] == COST
    assert again["outcome"] == "reused" and again["cost"] == 0
    assert again["model"] == "openai/gpt-4o-mini"
    assert calls_after_reuse == 1  # the reuse made no upstream call
    assert forced["outcome"] == "succeeded"  # force always calls the model
    assert changed["outcome"] == "succeeded"  # a changed shop item: a new file
    assert tampered["outcome"] == "succeeded"  # the stored file changed: made anew
    assert reused_again["outcome"] == "reused"
    assert len(standin.completions()) == 4
    assert (storage_dir / "npc-xml-files" / f"{npc_id}.xml").read_bytes() != b"<npc/>"
    assert stored  # the first file was there to reuse


async def test_costs_reports_spend_per_day_model_and_owner(conn, db_dsn, storage_dir):
    npc_id = await make_npc(conn)
    owner = await owner_of(conn, npc_id)
    async with openrouter_standin() as standin:
        settings = openrouter_settings(standin)
        provider = OpenRouterProvider(settings)
        async with running_worker(
            db_dsn, storage_dir, provider=provider, cost_policy=CostPolicy.of(settings)
        ):
            await _generate(conn, npc_id)
            await _generate(conn, npc_id)  # reused: counted, at no cost
        await provider.close()
    result = await run_cli("costs", "--json", "--days", "1", env=cli_env(DATABASE_URL=db_dsn))
    assert result.code == 0, result.said
    report = json.loads(result.out)
    mine = [line for line in report["report"]["owners"] if line["ownerId"] == str(owner)]
    assert mine == [
        {"ownerId": str(owner), "attempts": 2, "reused": 1, "costUsd": float(COST),
         "promptTokens": 812, "completionTokens": 431}
    ]  # fmt: skip
    models = {line["model"]: line for line in report["report"]["models"]}
    assert models["openai/gpt-4o-mini"]["reused"] >= 1
    assert report["report"]["days"][0]["costUsd"] >= float(COST)
    assert report["budget"]["fleetLimitUsd"] is None
    text = await run_cli("costs", env=cli_env(DATABASE_URL=db_dsn))
    assert text.code == 0 and "per model" in text.out and "openai/gpt-4o-mini" in text.out


async def _reserve(conn: Any, npc_id: Any, job_id: Any, estimate: str, fleet: str | None,
                   user: str | None = None) -> Any:  # fmt: skip
    return await conn.fetchrow(
        "SELECT * FROM npcforge_spend_reserve($1, $2, 1, 'm', $3::numeric, $4::numeric,"
        " $5::numeric)",
        npc_id, job_id, estimate, fleet, user,
    )  # fmt: skip


async def _attempt_row(conn: Any, npc_id: Any, job_id: Any, cost: str | None,
                       error_code: str | None = None) -> None:  # fmt: skip
    await conn.execute(
        "INSERT INTO npc_generation_attempts (job_id, npc_id, attempt, worker_id, started_at,"
        " outcome, error_code, cost, duration_ms)"
        " VALUES ($1, $2, 1, 'w', now(), 'failed', $3, $4::numeric, 5)",
        job_id, npc_id, error_code, cost,
    )  # fmt: skip


async def _fleet_spent(conn: Any) -> Decimal:
    spent: Decimal = await conn.fetchval(
        "SELECT amount FROM npcforge_spend_days WHERE payer = 'fleet'"
        " AND day = (now() AT TIME ZONE 'UTC')::date"
    )
    return spent


async def test_the_ledger_keeps_cut_off_calls_and_lets_a_crashed_workers_reservation_expire(conn):
    first, second, third = [await make_npc(conn, ownerId=str(uuid.uuid4())) for _ in range(3)]
    jobs = [uuid.uuid4() for _ in range(3)]
    assert (await _reserve(conn, first, jobs[0], "0.5", "1"))["admitted"]
    assert (await _reserve(conn, second, jobs[1], "0.6", "1"))["admitted"]  # 0.5 < 1: room
    refused = await _reserve(conn, third, jobs[2], "0.1", "1")
    assert (refused["admitted"], refused["scope"]) == (False, "fleet")
    assert await _fleet_spent(conn) == Decimal("1.1")
    await _attempt_row(conn, first, jobs[0], None)  # cut off, no usage: the estimate stays
    await _attempt_row(conn, second, jobs[1], None, "WORKER_LOST")  # reaped: released
    assert await _fleet_spent(conn) == Decimal("0.5")
    assert (await _reserve(conn, third, jobs[2], "0.1", "1"))["admitted"]
    await _attempt_row(conn, third, jobs[2], "0.25")  # the reported cost replaces the estimate
    assert await _fleet_spent(conn) == Decimal("0.75")
    # The owner's cap counts the owner's own spend only.
    over = await _reserve(conn, third, uuid.uuid4(), "0.1", None, "0.25")
    assert (over["admitted"], over["scope"], over["owner_spent"]) == (
        False,
        "user",
        Decimal("0.25"),
    )
    assert (await _reserve(conn, first, uuid.uuid4(), "0.1", None, "0.25"))["admitted"] is False
    assert (await _reserve(conn, second, uuid.uuid4(), "0.1", None, "0.25"))["admitted"]


async def test_the_poll_says_a_queued_job_waits_for_the_budget(conn, db_dsn, storage_dir):
    npc_id = await make_npc(conn)
    owner = await owner_of(conn, npc_id)
    job_id = await conn.fetchval("SELECT npcforge_enqueue($1)", npc_id)
    path = f"/api/npcs/{npc_id}/generation-jobs/{job_id}"
    settings = jwt_settings(NPCFORGE_DAILY_BUDGET_USD="0.5")
    async with api_harness(db_dsn, storage_dir, settings=settings) as api:
        before = (await api.client.get(path, headers=bearer(token(owner)))).json()
        await _reserve(conn, await make_npc(conn), uuid.uuid4(), "0.5", None)
        during = (await api.client.get(path, headers=bearer(token(owner)))).json()
    assert (before["status"], before["holdReason"]) == ("queued", None)
    assert (during["status"], during["holdReason"]) == ("queued", "budget")


async def test_an_owner_at_their_cap_waits_seen_everywhere_and_runs_once_it_lifts(
    conn, db_dsn, storage_dir, caplog
):
    spender, other = await make_npc(conn), await make_npc(conn, ownerId=str(uuid.uuid4()))
    # The owner of `spender` has a call in flight today that reserved twice their cap.
    in_flight = uuid.uuid4()
    assert (await _reserve(conn, spender, in_flight, "0.02", None))["admitted"]
    held_job = await conn.fetchval("SELECT npcforge_enqueue($1)", spender)
    await conn.fetchval("SELECT npcforge_enqueue($1)", other)
    cap = {"NPCFORGE_USER_DAILY_BUDGET_USD": "0.01"}
    caplog.set_level("INFO", logger="npcforge.budget")
    async with openrouter_standin() as standin:
        settings = openrouter_settings(standin, **cap)
        provider = OpenRouterProvider(settings)
        async with running_worker(
            db_dsn, storage_dir, provider=provider, cost_policy=CostPolicy.of(settings)
        ) as worker:
            await wait_status(conn, other, "succeeded")
            await asyncio.sleep(1.5)  # three claim rounds (poll 0.5 s)
            waiting = await conn.fetchrow(
                "SELECT generation_job_status::text AS status, generation_job_attempts AS n,"
                " (SELECT count(*) FROM npc_generation_attempts WHERE job_id = $2) AS rows"
                " FROM npcs WHERE id = $1",
                spender, held_job,
            )  # fmt: skip
            calls_while_held = len(standin.completions())
            gauge = worker.metrics.registry.get_sample_value
            held_gauge, spent_gauge = (
                gauge("npcforge_budget_held_jobs"),
                gauge("npcforge_budget_spent_usd"),
            )
            cli = cli_env(DATABASE_URL=db_dsn, **cap)
            status = await run_cli("status", str(spender), "--json", env=cli)
            doctor = await run_cli("doctor", "--json", env=cli)
            # The call in flight returns cheaper than reserved: the owner has room again.
            await _attempt_row(conn, spender, in_flight, "0.001")
            lifted = await wait_status(conn, spender, "succeeded")
        await provider.close()

    assert dict(waiting) == {"status": "queued", "n": 0, "rows": 0}  # no attempt burned
    assert calls_while_held == 1  # only the other owner's job called the model
    assert held_gauge == 1
    assert spent_gauge is not None and spent_gauge >= 0.02
    assert status.code == 0, status.said
    assert json.loads(status.out)["holdReason"] == "budget"
    budget_check = next(c for c in json.loads(doctor.out) if c["check"] == "budget")
    assert not budget_check["ok"] and "1 queued job(s) held" in budget_check["detail"]
    assert lifted["job_id"] == held_job and lifted["attempts"] == 1
    actions = [(r.__dict__.get("action"), r.__dict__.get("scope")) for r in caplog.records]
    assert actions.count(("budget_reached", "user")) == 1
    assert actions.count(("budget_lifted", "user")) == 1


async def test_a_publish_batch_remembers_what_its_files_were_made_from_for_the_next_claim(
    conn, db_dsn, storage_dir: Path
):
    """Reuse bookkeeping rides on the batch: the statement that marks a batch's jobs succeeded
    remembers what each file was made from (only for the jobs it marked), and the next claim of
    the NPC brings that along, so a job pays no lookup of its own."""
    from npcforge.db.connect import create_pool
    from npcforge.db.jobs import JobQueue
    from npcforge.db.spend import Generations, LastGeneration
    from npcforge.metrics import WorkerMetrics
    from npcforge.storage.filesystem import FilesystemStorage
    from npcforge.worker.claims import Claim, Outcomes
    from npcforge.worker.publisher import Publisher

    ids = [await make_npc(conn) for _ in range(3)]
    await conn.execute(
        "UPDATE npcs SET generation_job_status = 'queued' WHERE id = ANY($1::uuid[])", ids
    )
    leases = await JobQueue(conn).claim(worker_id="worker-1", limit=3, lease_seconds=30.0)
    claims = {lease.npc_id: Claim.of(lease) for lease in leases}
    assert all(c.record_loaded and c.last_generation is None for c in claims.values())
    made, plain, lost = (claims[npc_id] for npc_id in ids)
    made.input_hash, lost.input_hash = "inputs-of-made", "inputs-of-lost"
    # `lost`'s row is no longer its claim's (reaped and claimed again elsewhere).
    await conn.execute(
        "UPDATE npcs SET generation_job_lease_token = gen_random_uuid() WHERE id = $1", lost.npc_id
    )
    files = {npc_id: f"<npc name='{npc_id}'/>".encode() for npc_id in ids}

    storage = FilesystemStorage(storage_dir, "npc-xml-files")
    await storage.ensure_bucket()
    pool = await create_pool(db_dsn, max_size=2)
    try:
        publisher = Publisher(
            pool=pool, storage=storage, metrics=WorkerMetrics(),
            outcomes=Outcomes(worker_id="worker-1", max_attempts=3, max_retry_delay=180.0),
        )  # fmt: skip
        outcomes = await publisher.publish_batch(
            [(c, files[c.npc_id]) for c in (made, plain, lost)]
        )
    finally:
        await pool.close()
    assert [o.status for o in outcomes] == ["succeeded", "succeeded", "discarded"]

    remembered = await conn.fetch("SELECT npc_id, job_id FROM npcforge_generations")
    assert [(r["npc_id"], r["job_id"]) for r in remembered] == [(made.npc_id, made.job_id)]
    expected = LastGeneration(
        "inputs-of-made", hashlib.sha256(files[made.npc_id]).hexdigest(), len(files[made.npc_id])
    )
    assert await Generations(conn).last(npc_id=made.npc_id) == expected

    await conn.fetchval("SELECT npcforge_enqueue($1, false)", made.npc_id)
    (again,) = await JobQueue(conn).claim(worker_id="worker-1", limit=1, lease_seconds=30.0)
    assert (again.npc_id, again.last_generation) == (made.npc_id, expected)
