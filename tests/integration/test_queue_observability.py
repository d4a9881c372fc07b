"""What an operator sees of a real worker: the Prometheus series on NPCFORGE_METRICS_PORT,
/healthz and /readyz, and the JSON log lines."""

from __future__ import annotations

import asyncio
import signal

import aiohttp

from clikit import free_port
from conftest import make_npc
from queuekit import (
    model_env,
    npc_name,
    scrape_metrics,
    slow_model,
    worker_env,
    worker_processes,
)
from standins.openrouter import error_reply
from workerkit import wait_status

SERIES = [
    "npcforge_jobs_claimed_total",
    "npcforge_jobs_succeeded_total",
    'npcforge_jobs_failed_total{code="AI_CONFIG"}',
    "npcforge_jobs_retried_total",
    "npcforge_jobs_rescued_total",
    "npcforge_leases_lost_total",
    "npcforge_results_discarded_total",
    "npcforge_jobs_released_total",
    "npcforge_jobs_in_flight",
    "npcforge_queue_depth",
    "npcforge_queue_oldest_age_seconds",
    "npcforge_pickup_latency_seconds_count",
    "npcforge_provider_latency_seconds_count",
    "npcforge_upload_latency_seconds_count",
    "npcforge_job_duration_seconds_count",
    "npcforge_notifications_total",
    "npcforge_notify_pickups_total",
    "npcforge_sweep_pickups_total",
    "npcforge_listener_up",
    "npcforge_listener_reconnects_total",
]


async def _get(port: int, path: str) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.json()


async def test_metrics_health_and_logs_of_a_running_worker(conn, db_dsn, tmp_path):
    ok, flaky, refused, held = [await make_npc(conn) for _ in range(4)]
    names = {i: await npc_name(conn, i) for i in (ok, flaky, refused, held)}
    port = free_port()
    async with slow_model() as model:
        model.script(
            names[flaky], error_reply(503, "upstream overloaded", headers={"Retry-After": "1"})
        )
        model.script(names[refused], error_reply(401, "User not found."))
        gate = model.hold(names[held])
        env = worker_env(
            db_dsn, tmp_path / "storage", **model_env(model.standin),
            NPCFORGE_METRICS_PORT=str(port), NPCFORGE_SHUTDOWN_SECONDS="5",
        )  # fmt: skip
        async with worker_processes([env], tmp_path / "logs") as [worker]:
            assert await _get(port, "/healthz") == (200, {"status": "ok", "loops": "alive"})
            status, ready = await _get(port, "/readyz")
            assert status == 200 and ready["database"] and ready["listener"]

            for npc_id in (ok, flaky, refused, held):
                await conn.execute("SELECT npcforge_enqueue($1)", npc_id)
            await wait_status(conn, ok, "succeeded")
            await wait_status(conn, refused, "failed")
            await wait_status(conn, flaky, "succeeded", timeout=15)
            await model.wait_arrival(names[held])
            await asyncio.sleep(1.2)  # a reaper round refreshes the queue gauges
            series = await scrape_metrics(port)

            worker.send(signal.SIGTERM)  # `held` is still generating: the worker drains
            await worker.wait_log(lambda line: line.get("action") == "drain")
            status, draining = await _get(port, "/readyz")
            gate.set()
            assert await worker.wait(15) == 0

    for name in SERIES:
        assert name in series, name
    assert series["npcforge_jobs_claimed_total"] == 5  # flaky twice
    assert series["npcforge_jobs_succeeded_total"] == 2
    assert series['npcforge_jobs_failed_total{code="AI_CONFIG"}'] == 1
    assert series["npcforge_jobs_retried_total"] == 1
    assert series["npcforge_jobs_in_flight"] == 1
    assert series["npcforge_queue_depth"] == 0
    assert series["npcforge_listener_up"] == 1
    assert series["npcforge_pickup_latency_seconds_count"] == 4  # first attempts only
    assert series["npcforge_provider_latency_seconds_count"] == 4
    assert series["npcforge_upload_latency_seconds_count"] == 2
    assert series["npcforge_notifications_total"] >= 1
    assert series["npcforge_notify_pickups_total"] + series["npcforge_sweep_pickups_total"] == 5
    assert status == 503 and draining["stopping"] is True

    lines = worker.logs()
    finished = {
        line["npc_id"]: line for line in lines if line.get("action") in ("succeeded", "failed")
    }
    for npc_id in (ok, flaky, refused):
        line = finished[str(npc_id)]
        for field in ("job_id", "npc_id", "attempt", "worker_id", "action", "duration_ms"):
            assert field in line, (field, line)
        assert line["worker_id"].count(":") == 2  # host:pid:random
    assert finished[str(refused)]["code"] == "AI_CONFIG"
    assert finished[str(flaky)]["attempt"] == 2
    retry = next(line for line in lines if line.get("action") == "retry")
    assert retry["code"] == "AI_UPSTREAM" and retry["retry_in_s"] == 1
    # Never a prompt, an XML body or a secret.
    text = worker.raw_log()
    assert "<npc" not in text and "sk-or-test" not in text
    assert "Welcome to my stall" not in text and "|PLAYERNAME|" not in text
