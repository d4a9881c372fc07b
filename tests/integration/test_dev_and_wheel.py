"""`npcforge dev` as a user runs it, and the product installed from a wheel (not the tree)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
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


async def test_dev_serves_api_and_worker_until_ctrl_c(tmp_path):
    port = free_port()
    env = cli_env(NPCFORGE_HOME=str(tmp_path / "home"), NPCFORGE_LOG_FORMAT="text")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "npcforge", "dev", "--port", str(port),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        curl = await _read_until(proc.stderr, r"curl -s -X POST (http://\S+/generate)", 60)
        await _read_until(proc.stderr, r"psql 'host=\S+ user=postgres dbname=postgres'", 5)
        async with httpx.AsyncClient(timeout=10) as client:
            accepted = await client.post(curl.group(1))
            assert accepted.status_code == 202, accepted.text
            job = accepted.json()
            url = curl.group(1).replace("/generate", f"/generation-jobs/{job['jobId']}")
            for _ in range(200):
                polled = (await client.get(url)).json()
                if polled["status"] == "succeeded":
                    break
                await asyncio.sleep(0.05)
            assert polled["status"] == "succeeded", polled
            assert polled["xml"].startswith('<?xml version="1.0" encoding="UTF-8"?>')
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 60)
    assert code == 0
    # the data stays: files on disk and a cluster that starts again
    assert (tmp_path / "home" / "pgdata" / "PG_VERSION").exists()
    assert list((tmp_path / "home" / "storage" / "npc-xml-files").glob("*.xml"))


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
