"""A storage outage under load costs no model call: 50 jobs in flight, storage down for 30 s (the
gateway answering 502, as Kong does while the server is away), every job succeeds once it is
back, with exactly one model call each. Real worker, real OpenRouter client against its stand-in,
real storage3 against the storage stand-in, real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from conftest import make_npcs, wait_for
from npcforge.config import Settings
from npcforge.generation.openrouter import OpenRouterProvider
from npcforge.storage.supabase import SupabaseStorage
from standins.openrouter import openrouter_standin
from standins.supabase_storage import SERVICE_ROLE_KEY, running_storage_standin
from workerkit import running_worker

JOBS = 50
OUTAGE_SECONDS = 30.0
BUCKET = "npc-xml-files"


def uploads(standin: Any) -> int:
    return sum(1 for r in standin.requests if r.method in ("POST", "PUT") and "/object/" in r.path)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_fifty_jobs_survive_a_30_second_storage_outage_without_a_new_model_call(
    conn: Any, db_dsn: str
) -> None:
    ids = await make_npcs(conn, JOBS)
    async with (
        openrouter_standin() as model,
        running_storage_standin(buckets=[BUCKET]) as storage_server,
    ):
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            OPENROUTER_API_KEY="sk-or-v1-outage-test-key",
            OPENROUTER_BASE_URL=model.base_url,
        )
        provider = OpenRouterProvider(settings)
        storage = SupabaseStorage(storage_server.url, SERVICE_ROLE_KEY, BUCKET, timeout_seconds=5)
        storage_server.outage = True
        down_at = time.monotonic()
        try:
            async with running_worker(
                db_dsn,
                provider=provider,
                storage=storage,
                concurrency=JOBS,
                lease_seconds=10,
                job_deadline_seconds=120,
            ):
                await conn.execute(
                    "UPDATE npcs SET generation_job_status = 'queued' WHERE id = ANY($1::uuid[])",
                    ids,
                )

                async def all_generated_and_failing() -> bool:
                    return len(model.completions()) >= JOBS and uploads(storage_server) > JOBS

                await wait_for(all_generated_and_failing, timeout=OUTAGE_SECONDS)
                await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
                failed_uploads = uploads(storage_server)
                in_flight = await conn.fetchval(
                    "SELECT count(*) FROM npcs WHERE generation_job_status = 'processing'"
                )
                storage_server.outage = False

                async def all_succeeded() -> bool:
                    done = await conn.fetchval(
                        "SELECT count(*) FROM npcs "
                        "WHERE id = ANY($1::uuid[]) AND generation_job_status = 'succeeded'",
                        ids,
                    )
                    return bool(done == JOBS)

                await wait_for(all_succeeded, timeout=60, interval=0.2)
        finally:
            await provider.close()
            await storage.close()

    # Through the whole outage every job held its claim and its XML.
    assert in_flight == JOBS
    assert failed_uploads > JOBS  # each upload was tried, and tried again
    assert len(model.completions()) == JOBS  # model calls = jobs
    rows = await conn.fetch(
        "SELECT attempt, outcome, error_code FROM npc_generation_attempts "
        "WHERE npc_id = ANY($1::uuid[])",
        ids,
    )
    assert [(r["attempt"], r["outcome"], r["error_code"]) for r in rows] == [
        (1, "succeeded", None)
    ] * JOBS
    assert len(storage_server.objects) == JOBS
    sizes = await conn.fetch(
        "SELECT id, content_size_bytes FROM npcs WHERE id = ANY($1::uuid[])", ids
    )
    for row in sizes:
        stored = storage_server.object(BUCKET, f"{row['id']}.xml")
        assert stored is not None and len(stored.data) == row["content_size_bytes"]
