"""The web console over HTTP (no browser): who sees what, CSRF, the actions' effects, the kept
XML versions, the job-events notification and the worker roster, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from apikit import SECRET, api_harness, bearer, jwt_settings, owner_of, queue_job, token
from conftest import make_npc, wait_for
from npcforge.console.events import EVENTS_CHANNEL, EventHub
from npcforge.db.connect import create_pool
from npcforge.db.console import WorkerRoster
from workerkit import running_worker, wait_status

SERVICE = token(None, role="service_role", aud=None)


def csrf_of(page: httpx.Response) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, "the page has no CSRF field"
    return match.group(1)


async def signed_in(client: httpx.AsyncClient, access_token: str) -> None:
    """Sign in through the sign-in page, as a browser would."""
    form = await client.get("/console/sign-in")
    assert form.status_code == 200
    answer = await client.post(
        "/console/sign-in",
        data={"token": access_token, "csrf": csrf_of(form)},
        headers={"Origin": "http://api.test"},
    )
    assert answer.status_code == 303, answer.text
    assert "httponly" in answer.headers["set-cookie"].lower()
    assert "samesite=strict" in answer.headers["set-cookie"].lower()


async def test_a_browser_without_identity_is_sent_to_sign_in_and_a_bad_token_is_refused(
    db_dsn: str, storage_dir: Path
) -> None:
    async with api_harness(db_dsn, storage_dir) as h:
        page = await h.client.get("/console/jobs")
        assert page.status_code == 303
        assert page.headers["location"].startswith("/console/sign-in")
        form = await h.client.get("/console/sign-in")
        bad = await h.client.post(
            "/console/sign-in",
            data={"token": token(uuid.uuid4(), key="wrong" * 10), "csrf": csrf_of(form)},
            headers={"Origin": "http://api.test"},
        )
        assert bad.status_code == 401
        assert "invalid_signature" in bad.text
        assert "wrong" not in bad.text
        assert (await h.client.get("/console")).status_code == 303


async def test_a_user_sees_and_acts_on_their_own_npcs_only(
    db_dsn: str, storage_dir: Path, conn: Any
) -> None:
    mine = await make_npc(conn, name="Mine Trader")
    theirs = await make_npc(conn, name="Their Trader", ownerId=str(uuid.uuid4()))
    await queue_job(conn, mine)
    await queue_job(conn, theirs)
    me = await owner_of(conn, mine)
    async with api_harness(db_dsn, storage_dir) as h:
        await signed_in(h.client, token(me))
        jobs = await h.client.get("/console/jobs")
        assert jobs.status_code == 200
        assert "Mine Trader" in jobs.text and "Their Trader" not in jobs.text
        assert (await h.client.get(f"/console/npcs/{mine}")).status_code == 200
        foreign = await h.client.get(f"/console/npcs/{theirs}")
        assert foreign.status_code == 404 and "Their Trader" not in foreign.text
        assert (await h.client.get(f"/console/npcs/{theirs}/xml")).status_code == 404
        cancel = await h.client.post(
            f"/console/npcs/{theirs}/cancel",
            data={"csrf": csrf_of(jobs)},
            headers={"Origin": "http://api.test"},
        )
        assert cancel.status_code == 404
        assert (
            await conn.fetchval(
                "SELECT generation_job_status::text FROM npcs WHERE id = $1", theirs
            )
            == "queued"
        )
        overview = await h.client.get("/console")
        assert overview.status_code == 200
        # The fleet's workers and upstream are the service role's business.
        assert "Workers alive" not in overview.text


async def test_actions_need_the_csrf_token_and_the_console_origin(
    db_dsn: str, storage_dir: Path, conn: Any
) -> None:
    npc = await make_npc(conn)
    await queue_job(conn, npc)
    async with api_harness(db_dsn, storage_dir) as h:
        await signed_in(h.client, SERVICE)
        page = await h.client.get(f"/console/npcs/{npc}")
        csrf = csrf_of(page)
        for data, headers in (
            ({}, {"Origin": "http://api.test"}),
            ({"csrf": "forged"}, {"Origin": "http://api.test"}),
            ({"csrf": csrf}, {"Origin": "https://evil.example"}),
            ({"csrf": csrf}, {}),
        ):
            refused = await h.client.post(f"/console/npcs/{npc}/cancel", data=data, headers=headers)
            assert refused.status_code == 403, (data, headers)
        assert (
            await conn.fetchval("SELECT generation_job_status::text FROM npcs WHERE id = $1", npc)
            == "queued"
        )
        done = await h.client.post(
            f"/console/npcs/{npc}/cancel",
            data={"csrf": csrf},
            headers={"Origin": "http://api.test"},
        )
        assert done.status_code == 303
        row = await conn.fetchrow(
            "SELECT generation_job_status::text AS s, generation_job_error->>'code' AS c "
            "FROM npcs WHERE id = $1", npc
        )  # fmt: skip
        assert (row["s"], row["c"]) == ("failed", "CANCELLED")
        shown = await h.client.get(f"/console/npcs/{npc}?done=cancelled")
        assert "CANCELLED" in shown.text
        retried = await h.client.post(
            f"/console/npcs/{npc}/retry", data={"csrf": csrf}, headers={"Origin": "http://api.test"}
        )
        assert retried.status_code == 303
        assert (
            await conn.fetchval("SELECT generation_job_status::text FROM npcs WHERE id = $1", npc)
            == "queued"
        )


async def test_bulk_retry_asks_first_and_is_for_the_service_role(
    db_dsn: str, storage_dir: Path, conn: Any
) -> None:
    npcs = [await make_npc(conn) for _ in range(3)]
    for npc in npcs:
        await queue_job(conn, npc)
    await conn.execute(
        "UPDATE npcs SET generation_job_status = 'failed', generation_job_error = "
        "jsonb_build_object('code', CASE WHEN id = $2 THEN 'AI_TIMEOUT' ELSE 'AI_UPSTREAM' END, "
        "'message', 'x') WHERE id = ANY($1)", npcs, npcs[0]
    )  # fmt: skip
    async with api_harness(db_dsn, storage_dir) as h:
        await signed_in(h.client, token(await owner_of(conn, npcs[0])))
        page = await h.client.get("/console/jobs?status=failed")
        refused = await h.client.post(
            "/console/jobs/retry-failed",
            data={"csrf": csrf_of(page), "code": "AI_UPSTREAM", "confirm": "yes"},
            headers={"Origin": "http://api.test"},
        )
        assert refused.status_code == 403
    async with api_harness(db_dsn, storage_dir) as h:
        await signed_in(h.client, SERVICE)
        page = await h.client.get("/console/jobs?status=failed&code=AI_UPSTREAM")
        assert page.text.count("data-npc=") == 2
        ask = await h.client.post(
            "/console/jobs/retry-failed",
            data={"csrf": csrf_of(page), "code": "AI_UPSTREAM"},
            headers={"Origin": "http://api.test"},
        )
        assert ask.status_code == 200 and "Yes, retry them" in ask.text
        assert "<strong>2</strong>" in ask.text
        statuses = await conn.fetch(
            "SELECT generation_job_status::text AS s FROM npcs WHERE id = ANY($1)", npcs
        )
        assert {r["s"] for r in statuses} == {"failed"}
        done = await h.client.post(
            "/console/jobs/retry-failed",
            data={"csrf": csrf_of(page), "code": "AI_UPSTREAM", "confirm": "yes"},
            headers={"Origin": "http://api.test"},
        )
        assert done.status_code == 303
        rows = await conn.fetch(
            "SELECT id, generation_job_status::text AS s FROM npcs WHERE id = ANY($1)", npcs
        )
        assert {r["id"]: r["s"] for r in rows} == {
            npcs[0]: "failed",
            npcs[1]: "queued",
            npcs[2]: "queued",
        }


async def test_each_success_keeps_its_file_at_most_five_per_npc_and_the_page_diffs_them(
    db_dsn: str, storage_dir: Path, conn: Any
) -> None:
    npc = await make_npc(conn, name="Versioned")
    async with running_worker(db_dsn, storage_dir):
        for round_ in range(7):
            await conn.execute(
                "UPDATE npcs SET health_now = $2, health_max = 1000 WHERE id = $1",
                npc,
                100 + round_,
            )
            await queue_job(conn, npc)
            await wait_status(conn, npc, "succeeded")
    kept = await conn.fetch(
        "SELECT xml FROM npc_xml_versions WHERE npc_id = $1 ORDER BY id DESC", npc
    )
    assert len(kept) == 5
    assert 'now="106"' in kept[0]["xml"] and 'now="102"' in kept[4]["xml"]
    async with api_harness(db_dsn, storage_dir) as h:
        await signed_in(h.client, SERVICE)
        page = await h.client.get(f"/console/npcs/{npc}")
        assert page.status_code == 200
        assert re.search(r'class="d-del">- [^<]*now=&#34;105&#34;', page.text)
        assert re.search(r'class="d-add">\+ [^<]*now=&#34;106&#34;', page.text)
        xml = await h.client.get(f"/console/npcs/{npc}/xml")
        assert xml.status_code == 200 and xml.headers["content-type"].startswith("application/xml")
        assert xml.content == (storage_dir / "npc-xml-files" / f"{npc}.xml").read_bytes()


async def test_a_superseded_job_keeps_no_file(db_dsn: str, storage_dir: Path, conn: Any) -> None:
    from npcforge.db.jobs import JobQueue

    npc = await make_npc(conn)
    await queue_job(conn, npc)
    leases = await JobQueue(conn).claim(worker_id="w1", limit=1, lease_seconds=30)
    assert len(leases) == 1
    await conn.execute(
        "UPDATE npcs SET generation_job_status = 'queued', generation_job_id = gen_random_uuid() "
        "WHERE id = $1",
        npc,
    )  # fmt: skip (a force)
    async with conn.transaction():
        await JobQueue(conn).finish_succeeded(jobs=[(leases[0], b"<npc/>")], attempts=[])
    assert await conn.fetchval("SELECT count(*) FROM npc_xml_versions WHERE npc_id = $1", npc) == 0


async def test_a_file_equal_to_the_newest_kept_one_is_not_kept_twice(
    db_dsn: str, storage_dir: Path, conn: Any
) -> None:
    from npcforge.db.jobs import JobQueue

    npc = await make_npc(conn)
    for data in (b"<npc a='1'/>", b"<npc a='1'/>", b"<npc a='2'/>", b"<npc a='2'/>"):
        await queue_job(conn, npc)
        leases = await JobQueue(conn).claim(worker_id="w1", limit=1, lease_seconds=30)
        async with conn.transaction():
            await JobQueue(conn).finish_succeeded(jobs=[(leases[0], data)], attempts=[])
    kept = await conn.fetch(
        "SELECT xml FROM npc_xml_versions WHERE npc_id = $1 ORDER BY id", npc
    )  # fmt: skip
    assert [row["xml"] for row in kept] == ["<npc a='1'/>", "<npc a='2'/>"]


async def test_job_state_changes_notify_once_per_transaction_and_renewals_not_at_all(
    db_dsn: str, conn: Any
) -> None:
    from npcforge.db.jobs import JobQueue

    npcs = [await make_npc(conn) for _ in range(5)]
    listener = await asyncpg.connect(db_dsn)
    got: list[str] = []
    await listener.add_listener(EVENTS_CHANNEL, lambda *args: got.append(args[3]))
    try:
        async with conn.transaction():
            await conn.execute(
                "UPDATE npcs SET generation_job_status = 'queued' WHERE id = ANY($1)", npcs
            )
            await conn.execute(
                "UPDATE npcs SET generation_job_status = 'failed' WHERE id = ANY($1)", npcs[:2]
            )
        await wait_for(lambda: _true(bool(got)))
        await asyncio.sleep(0.3)
        assert got == [""]
        got.clear()
        await conn.execute(
            "UPDATE npcs SET generation_job_status = 'queued' WHERE id = ANY($1)", npcs[:2]
        )
        leases = await JobQueue(conn).claim(worker_id="w1", limit=5, lease_seconds=30)
        await wait_for(lambda: _true(len(got) == 2))
        got.clear()
        await JobQueue(conn).renew_leases(
            worker_id="w1", tokens=[lease.lease_token for lease in leases], lease_seconds=30
        )
        await conn.execute("UPDATE npcs SET name = name || ' renamed' WHERE id = ANY($1)", npcs)
        await conn.execute("SELECT pg_notify($1, 'marker')", EVENTS_CHANNEL)
        await wait_for(lambda: _true("marker" in got))
        assert got == ["marker"]
    finally:
        await listener.close()


async def test_a_subscription_gets_a_change_stamped_just_before_its_page_took_the_clock(
    db_dsn: str, conn: Any
) -> None:
    # The page read the job queued, a worker claimed it, then the page took its clock: the
    # browser subscribes "since" a time after the claim's stamp and must still be told.
    npc = await make_npc(conn)
    await queue_job(conn, npc)
    await conn.execute("UPDATE npcs SET generation_job_status = 'processing' WHERE id = $1", npc)
    stamped = await conn.fetchval("SELECT generation_job_updated_at FROM npcs WHERE id = $1", npc)
    pool = await create_pool(db_dsn, max_size=2)
    try:
        hub = EventHub(db_dsn, pool)
        mine = hub.subscribe(None, npc)
        await hub.catch_up(mine, stamped + timedelta(seconds=1))
        event = mine.queue.get_nowait()
        assert (event["npcId"], event["status"]) == (str(npc), "processing")
        other = hub.subscribe(None, await make_npc(conn))
        await hub.catch_up(other, stamped)
        assert other.queue.empty()  # another NPC's change is not its business
    finally:
        await pool.close()


async def _true(value: bool) -> bool:
    return value


async def test_the_roster_lists_a_running_worker_until_it_drains(
    db_dsn: str, storage_dir: Path, conn: Any
) -> None:
    async with running_worker(db_dsn, storage_dir) as worker:
        row = await wait_for(
            lambda: conn.fetchrow(
                "SELECT * FROM npcforge_workers WHERE worker_id = $1", worker.worker_id
            )
        )
        assert row["state"] == "running" and row["concurrency"] == worker.options.concurrency
        async with api_harness(db_dsn, storage_dir) as h:
            await signed_in(h.client, SERVICE)
            overview = await h.client.get("/console")
            assert worker.worker_id in overview.text
            assert SECRET not in overview.text
    assert await conn.fetchval("SELECT count(*) FROM npcforge_workers") == 0
    # A worker that died without draining expires, and the next heartbeat clears it.
    await conn.execute(
        "INSERT INTO npcforge_workers (worker_id, hostname, pid, concurrency, expires_at) "
        "VALUES ('dead', 'h', 1, 4, now() - interval '1 minute')"
    )
    await WorkerRoster(conn).beat(
        worker_id="alive", hostname="h", pid=2, concurrency=4, in_flight=0, state="running",
        ttl_seconds=15,
    )  # fmt: skip
    ids = {r["worker_id"] for r in await conn.fetch("SELECT worker_id FROM npcforge_workers")}
    assert ids == {"alive"}


async def test_open_access_needs_no_sign_in(db_dsn: str, storage_dir: Path, conn: Any) -> None:
    from npcforge.api.auth import NoAuth

    npc = await make_npc(conn, name="Open Access")
    await queue_job(conn, npc)
    settings = jwt_settings(NPCFORGE_AUTH="none")
    async with api_harness(db_dsn, storage_dir, settings=settings, authenticator=NoAuth()) as h:
        page = await h.client.get("/console/jobs")
        assert page.status_code == 200 and "Open Access" in page.text
        assert (await h.client.get("/console/static/console.js")).status_code == 200
        assert (await h.client.get("/console", headers=bearer("x"))).status_code == 200


async def test_one_listen_connection_fans_changes_out_to_the_owners_browsers_only(
    db_dsn: str, storage_dir: Path, conn: Any
) -> None:
    mine = await make_npc(conn, name="Fan Out Mine")
    theirs = await make_npc(conn, name="Fan Out Theirs", ownerId=str(uuid.uuid4()))
    me = await owner_of(conn, mine)
    settings = jwt_settings(DATABASE_URL=db_dsn)
    async with api_harness(db_dsn, storage_dir, settings=settings) as h:
        hub = h.app.state.console.hub
        await wait_for(lambda: _true(hub.listener.up))
        await hub.read_changes()  # where "now" is
        browsers = [hub.subscribe(me) for _ in range(3)]
        admin = hub.subscribe(None)
        await queue_job(conn, mine)
        await queue_job(conn, theirs)
        for browser in browsers:
            event = await asyncio.wait_for(browser.queue.get(), 10)
            assert (event["npcId"], event["status"]) == (str(mine), "queued")
            assert "ownerId" not in event
        seen = {(await asyncio.wait_for(admin.queue.get(), 10))["npcId"] for _ in range(2)}
        assert seen == {str(mine), str(theirs)}
        await asyncio.sleep(0.3)
        assert all(browser.queue.empty() for browser in browsers)  # never the other's NPC
        listening = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = 'npcforge-console-events' AND datname = current_database()"
        )
        assert listening == 1


async def test_the_overview_shows_the_fleets_spend_to_the_service_role_only(
    db_dsn: str, storage_dir: Path, conn: Any
) -> None:
    npc = await make_npc(conn)
    job = await queue_job(conn, npc)
    # An attempt row of today with a model and a cost: the per-model line of the overview.
    await conn.execute(
        "INSERT INTO npc_generation_attempts (job_id, npc_id, attempt, worker_id, started_at,"
        " outcome, model, cost, duration_ms) VALUES ($1, $2, 1, 'w', now(), 'failed', 'm/test-model',"
        " 0.125, 10)",
        job, npc,
    )  # fmt: skip
    settings = jwt_settings(NPCFORGE_DAILY_BUDGET_USD="1.5", NPCFORGE_USER_DAILY_BUDGET_USD="0.25")
    async with api_harness(db_dsn, storage_dir, settings=settings) as h:
        await signed_in(h.client, SERVICE)
        page = await h.client.get("/console")
        assert page.status_code == 200
        assert "Spend today / budget" in page.text
        assert "$1.5," in page.text and "left" in page.text  # the fleet's cap and what is left
        assert "$0.25, 0 owner(s) at it" in page.text
        assert 'data-held="0"' in page.text
        assert "m/test-model" in page.text and "$0.125" in page.text
        assert SECRET not in page.text
    async with api_harness(db_dsn, storage_dir, settings=settings) as h:
        await signed_in(h.client, token(await owner_of(conn, npc)))
        page = await h.client.get("/console")
        assert page.status_code == 200
        assert "Your NPCs may spend $0.25" in page.text
        assert "data-held=" not in page.text and "m/test-model" not in page.text
