"""`npcforge dev` as a user runs it, and the product installed from a wheel (not the tree)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import psutil
import pytest

from clikit import REPO, cli_env, free_port, run_cli


async def _read_until(stream: asyncio.StreamReader, pattern: str, timeout: float) -> re.Match[str]:
    seen = ""
    async with asyncio.timeout(timeout):
        while True:
            line = (await stream.readline()).decode()
            if not line:
                raise AssertionError(f"process ended before {pattern!r}; it said:\n{seen}")
            seen += line
            found = re.search(pattern, line)
            if found:
                return found


def postgres_running(home: Path) -> bool:
    """Whether the cluster under `home` has a live postmaster."""
    pid_file = home / "pgdata" / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        return psutil.Process(int(pid_file.read_text().split()[0])).is_running()
    except (psutil.Error, ValueError, IndexError):
        return False


async def start_dev(home: Path, port: int, cwd: Path) -> asyncio.subprocess.Process:
    env = cli_env(NPCFORGE_HOME=str(home), NPCFORGE_LOG_FORMAT="text")
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "npcforge", "dev", "--port", str(port),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
    )  # fmt: skip


async def test_dev_serves_api_and_worker_until_ctrl_c(tmp_path):
    port = free_port()
    home = tmp_path / "home"
    proc = await start_dev(home, port, tmp_path)
    assert proc.stderr is not None
    try:
        console = (await _read_until(proc.stderr, r"console: (http://\S+/console)", 60)).group(1)
        curl = await _read_until(
            proc.stderr, r"curl -s -X POST (http://\S+/npcs/(\S+)/generate)", 5
        )
        url = (await _read_until(proc.stderr, r"DATABASE_URL='(postgresql://\S+)'", 5)).group(1)
        await _read_until(proc.stderr, r"psql '" + re.escape(url) + "'", 5)
        async with httpx.AsyncClient(timeout=10) as client:
            accepted = await client.post(curl.group(1))
            assert accepted.status_code == 202, accepted.text
            job = accepted.json()
            poll_url = curl.group(1).replace("/generate", f"/generation-jobs/{job['jobId']}")
            for _ in range(200):
                polled = (await client.get(poll_url)).json()
                if polled["status"] == "succeeded":
                    break
                await asyncio.sleep(0.05)
            assert polled["status"] == "succeeded", polled
            assert polled["xml"].startswith('<?xml version="1.0" encoding="UTF-8"?>')
            page = await client.get(console)  # loopback, no auth: the operator's console
            assert page.status_code == 200 and "Jobs by status" in page.text
            assert (await client.get(console + "/static/console.js")).status_code == 200
        # The printed DATABASE_URL is one the operator commands accept.
        status = await run_cli("status", curl.group(2), "--json", env=cli_env(DATABASE_URL=url))
        assert status.code == 0, status.err
        assert json.loads(status.out)["jobId"] == job["jobId"]
        # Without DATABASE_URL the operator commands find the running dev database and say
        # so; worker, api and migrate still want DATABASE_URL.
        home_env = cli_env(NPCFORGE_HOME=str(home), NPCFORGE_LOG_FORMAT="text")
        found = await run_cli("jobs", "list", "--json", env=home_env)
        assert found.code == 0 and "using the running `npcforge dev` database" in found.err
        assert [row["jobId"] for row in json.loads(found.out)] == [job["jobId"]]
        refused = await run_cli("migrate", env=home_env)
        assert refused.code == 2 and "DATABASE_URL is not set" in refused.err
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 60)
    assert code == 0
    # the data stays: files on disk and a cluster that starts again; the server is stopped
    assert (home / "pgdata" / "PG_VERSION").exists()
    assert list((home / "storage" / "npc-xml-files").glob("*.xml"))
    assert not postgres_running(home)


async def _ready_dev(home: Path, tmp_path: Path) -> asyncio.subprocess.Process:
    proc = await start_dev(home, free_port(), tmp_path)
    assert proc.stderr is not None
    await _read_until(proc.stderr, r"Ctrl-C stops", 90)
    assert postgres_running(home)
    return proc


async def test_every_way_dev_ends_stops_its_postgresql(tmp_path):
    home = tmp_path / "home"
    # Ctrl-C twice in a row: the forced exit stops PostgreSQL before it goes.
    proc = await _ready_dev(home, tmp_path)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), 60) in (0, 1)
    assert not postgres_running(home)
    # The terminal closes (SIGHUP): a graceful stop.
    proc = await _ready_dev(home, tmp_path)
    proc.send_signal(signal.SIGHUP)
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    assert not postgres_running(home)
    # SIGKILL leaves it running; the next start says so, reuses it, and stops it at its exit.
    proc = await _ready_dev(home, tmp_path)
    proc.kill()
    await proc.wait()
    assert postgres_running(home)
    proc = await start_dev(home, free_port(), tmp_path)
    assert proc.stderr is not None
    await _read_until(proc.stderr, r"earlier run left its PostgreSQL running", 60)
    await _read_until(proc.stderr, r"Ctrl-C stops", 60)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    assert not postgres_running(home)


async def test_dev_on_a_busy_port_says_so_and_starts_no_postgresql(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = await run_cli(
            "dev", "--port", str(port),
            env=cli_env(NPCFORGE_HOME=str(tmp_path / "home"), NPCFORGE_LOG_FORMAT="text"),
            cwd=tmp_path,
        )  # fmt: skip
    assert result.code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.err
    assert "Traceback" not in result.err and len(result.err.splitlines()) <= 3, result.err
    assert not (tmp_path / "home" / "pgdata").exists()


async def test_dev_refuses_a_non_loopback_address(tmp_path):
    result = await run_cli("dev", "--host", "0.0.0.0", env=cli_env(NPCFORGE_HOME=str(tmp_path)))
    assert result.code == 2
    assert "loopback" in result.err


@pytest.mark.slow
async def test_wheel_install_runs_demo_without_the_source_tree(tmp_path):
    wheel_dir = tmp_path / "dist"
    build = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheel_dir), str(REPO),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(build.communicate(), 240)
    assert build.returncode == 0, err.decode()
    (wheel,) = wheel_dir.glob("npcforge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "npcforge/sql/migrations/0001_schema.sql" in names
    assert "npcforge/data/sample_npc.json" in names
    assert "npcforge/db/queries.sql" in names
    for shipped in ("db/console.sql", "console/templates/base.html", "console/static/console.js"):
        assert f"npcforge/{shipped}" in names
    target = tmp_path / "site"
    install = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(install.communicate(), 120)
    assert install.returncode == 0, err.decode()
    # The installed copy comes first on the path; the run happens away from the repository.
    env = cli_env(PYTHONPATH=str(target))
    probe = subprocess.run(
        [sys.executable, "-c", "import npcforge, json; print(json.dumps(npcforge.__file__))"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(probe.stdout).startswith(str(target))
    result = await run_cli("demo", env=env, cwd=tmp_path, timeout=120)
    assert result.code == 0, result.err
    assert '<npc name="Mirela the Herbalist"' in result.out
    assert not os.path.exists(Path(tmp_path) / ".npcforge")
