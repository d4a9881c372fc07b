"""Schemathesis against the live API (uvicorn on 127.0.0.1, a real token, a real database).

Every response must match /openapi.json (status, headers, content type, body) and none may be a
5xx; invalid input must be refused and valid input accepted. Path ids are drawn partly from NPCs
and jobs that exist, so the fuzzer reaches the 200 paths, not only the 404s.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette

from apikit import BUCKET, add_attempt, jwt_settings, owner_of, queue_job, set_status, token
from conftest import make_npc
from npcforge.api.app import create_app
from npcforge.db.connect import create_pool
from npcforge.storage.filesystem import FilesystemStorage

pytest.importorskip("schemathesis")

MAX_EXAMPLES = 50
SEED = 20_260_601
# A body over 256 KiB is refused with 413 before it is parsed, which is also a correct refusal.
NEGATIVE_STATUSES = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "429"]


@contextlib.asynccontextmanager
async def live_server(app: Starlette) -> AsyncIterator[str]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.02)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)


async def seed(conn: Any, storage: FilesystemStorage) -> tuple[uuid.UUID, list[str], list[str]]:
    """One owner with a succeeded, a processing and a failed job; returns owner, npcs, jobs."""
    npcs, jobs = [], []
    owner = None
    for status in ("succeeded", "processing", "failed"):
        npc_id = await make_npc(conn, ownerId=str(owner) if owner else str(uuid.uuid4()))
        owner = owner or await owner_of(conn, npc_id)
        job_id = await queue_job(conn, npc_id)
        await add_attempt(conn, npc_id, job_id, 1, "retry", error_code="AI_TIMEOUT")
        error = (
            {"code": "AI_INVALID_XML", "message": "root is not <npc>"}
            if status == "failed"
            else None
        )
        await set_status(conn, npc_id, status, error=error)
        if status == "succeeded":
            await storage.put(f"{npc_id}.xml", b'<?xml version="1.0"?>\n<npc name="Fuzz"/>\n')
        npcs.append(str(npc_id))
        jobs.append(str(job_id))
    assert owner is not None
    return owner, npcs, jobs


def config_toml(npcs: list[str], jobs: list[str]) -> str:
    def quoted(values: list[str]) -> str:
        return ", ".join(f'"{value}"' for value in values)

    return f"""
[dictionaries.npcs]
values = [{quoted(npcs)}]

[dictionaries.jobs]
values = [{quoted(jobs)}]

[parameters]
"path.npcId" = {{ dictionary = "npcs", probability = 0.6 }}
"path.jobId" = {{ dictionary = "jobs", probability = 0.6 }}

[checks.negative_data_rejection]
expected-statuses = [{quoted(NEGATIVE_STATUSES)}]
"""


@pytest.mark.timeout(120)
async def test_schemathesis_finds_nothing(conn, db_dsn, tmp_path: Path):
    storage = FilesystemStorage(tmp_path / "storage", BUCKET)
    await storage.ensure_bucket()
    owner, npcs, jobs = await seed(conn, storage)
    (tmp_path / "schemathesis.toml").write_text(config_toml(npcs, jobs))
    pool = await create_pool(db_dsn, max_size=4)
    app = create_app(jwt_settings(), storage=storage, pool=pool)
    try:
        async with live_server(app) as base_url:
            command = [
                sys.executable, "-m", "schemathesis.cli",
                "--config-file", str(tmp_path / "schemathesis.toml"),
                "run", f"{base_url}/openapi.json",
                "--header", f"Authorization: Bearer {token(owner, expires_in=600)}",
                "--checks", "all",
                "--max-examples", str(MAX_EXAMPLES),
                "--seed", str(SEED),
                "--request-timeout", "10",
                "--no-color",
            ]  # fmt: skip
            process = await asyncio.create_subprocess_exec(
                *command,
                cwd=tmp_path,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await asyncio.wait_for(process.communicate(), timeout=100)
            metrics = await asyncio.to_thread(_get_text, f"{base_url}/metrics")
    finally:
        await pool.close()
    text = output.decode("utf-8", "replace")
    report = text[-6000:] if len(text) > 6000 else text
    assert process.returncode == 0, report
    assert "Test cases:" in text, report
    # Our own count agrees: not one 5xx was served during the run.
    assert not re.search(r'npcforge_api_requests_total\{[^}]*status="5\d\d"\}', metrics)
    assert re.search(r'npcforge_api_requests_total\{[^}]*status="200"\}', metrics)


def _get_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
    return body.decode()
