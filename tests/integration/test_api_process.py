"""`npcforge api` as a process: what it logs, how it stops, and a port it cannot have."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from apikit import SECRET, bearer, owner_of, queue_job, set_status, token
from clikit import cli_env, free_port, run_cli
from conftest import make_npc


def _api_env(db_dsn: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    settings = {
        "DATABASE_URL": db_dsn, "NPCFORGE_AUTH": "jwt", "SUPABASE_JWT_SECRET": SECRET,
        "NPCFORGE_STORAGE": "filesystem", "NPCFORGE_STORAGE_DIR": str(tmp_path / "storage"),
        "NPCFORGE_LOG_FORMAT": "json", **extra,
    }  # fmt: skip
    return cli_env(**settings)


def _lines(path: Path) -> list[dict[str, Any]]:
    """Every line the process wrote; each must be one JSON object."""
    return [json.loads(line) for line in path.read_text().splitlines()]


async def _wait_line(path: Path, msg: str, proc: subprocess.Popen[bytes], timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines():
            if f'"msg":"{msg}"' in line:
                return json.loads(line)
        assert proc.poll() is None, path.read_text()
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {msg!r} line within {timeout} s:\n{path.read_text()}")


async def test_api_logs_its_start_each_request_and_each_5xx_cause_then_exits_0_on_sigterm(
    conn, db_dsn, tmp_path
):
    npc_id = await make_npc(conn)
    owner = await owner_of(conn, npc_id)
    job_id = await queue_job(conn, npc_id)
    await set_status(conn, npc_id, "succeeded", size=10)  # its file is not in storage: 404
    (tmp_path / "storage").mkdir()
    (tmp_path / "storage" / "npc-xml-files").write_text("not a directory")  # storage broken
    port = free_port()
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "npcforge", "api", "--port", str(port)],
            env=_api_env(db_dsn, tmp_path, NPCFORGE_LOG_LEVEL="info"),
            stdout=subprocess.DEVNULL, stderr=log_file,
        )  # fmt: skip
    try:
        start = await _wait_line(log_path, "api listening", proc)
        secret_token = token(owner)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            health = await client.get("/healthz", headers={"X-Request-Id": "probe-1"})
            poll = await client.get(
                f"/api/npcs/{npc_id}/generation-jobs/{job_id}", headers=bearer(secret_token)
            )
            missing = await client.get(
                f"/api/npcs/{uuid.uuid4()}/generation-jobs/{job_id}", headers=bearer(secret_token)
            )
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0
    assert (health.status_code, poll.status_code, missing.status_code) == (200, 503, 404)
    assert health.headers["x-request-id"] == "probe-1"
    assert start["address"] == f"http://127.0.0.1:{port}"
    assert (start["auth"], start["storage"]) == ("jwt", "filesystem")
    lines = _lines(log_path)  # every line is JSON
    access = [line for line in lines if line["logger"] == "npcforge.api.access"]
    assert [(a["method"], a["path"], a["status"]) for a in access] == [
        ("GET", "/healthz", 200),
        ("GET", "/api/npcs/{npcId}/generation-jobs/{jobId}", 503),
        ("GET", "/api/npcs/{npcId}/generation-jobs/{jobId}", 404),
    ]
    assert access[0]["request_id"] == "probe-1"
    assert access[1]["request_id"] == poll.headers["x-request-id"]
    assert all(isinstance(a["duration_ms"], int | float) for a in access)
    (cause,) = [line for line in lines if line["msg"] == "request failed"]
    assert cause["code"] == "XML_FETCH_FAILED" and cause["error"] == "StorageError"
    assert cause["request_id"] == access[1]["request_id"] and cause["cause"]
    assert lines[-1]["msg"] == "api stopped"
    text = log_path.read_text()
    assert secret_token not in text and SECRET not in text


async def test_api_on_a_busy_port_says_so_in_one_line_and_exits_1(db_dsn, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = await run_cli(
            "api", "--port", str(port), env=_api_env(db_dsn, tmp_path, NPCFORGE_LOG_FORMAT="text")
        )
    assert result.code == 1, result.err
    assert result.err.count("\n") == 1, result.err
    assert f"cannot listen on 127.0.0.1:{port}" in result.err and "--port" in result.err
    wrong_host = await run_cli(
        "api", "--host", "203.0.113.7", env=_api_env(db_dsn, tmp_path, NPCFORGE_LOG_FORMAT="text")
    )
    assert wrong_host.code == 2 and "not an address of this machine" in wrong_host.err
    bad_port = await run_cli("api", "--port", "70000", env=_api_env(db_dsn, tmp_path))
    assert bad_port.code == 2
