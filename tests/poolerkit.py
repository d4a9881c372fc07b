"""Debian's PgBouncer in front of the embedded PostgreSQL, and npcforge's daemons as processes.

PgBouncer reaches the server over its Unix socket and listens on 127.0.0.1. CI installs the
`pgbouncer` package (.ci/run); there a missing binary fails the test instead of skipping it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from clikit import free_port
from npcforge.embedded import EmbeddedPostgres


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/sbin")
    if found is None:
        message = "pgbouncer is not installed (Debian package `pgbouncer`; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@dataclass
class Bouncer:
    port: int
    mode: str
    user: str = "postgres"

    def dsn(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"


async def _wait_for_port(port: int, proc: Any, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if proc.returncode is not None or asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"nothing listens on port {port}") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


@contextlib.asynccontextmanager
async def running_pgbouncer(
    pg: EmbeddedPostgres, mode: str, **settings: Any
) -> AsyncIterator[Bouncer]:
    """PgBouncer in `mode` with its stock settings, plus only what it needs to reach the
    server and to listen (and `settings`, e.g. default_pool_size)."""
    binary = pgbouncer_binary()
    socket_dir = parse_qs(urlsplit(pg.dsn).query)["host"][0]
    server_port = (pg.data_dir / "postmaster.pid").read_text().splitlines()[3]
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="npcforge-pgbouncer-"))
    workdir.chmod(0o777)  # it drops root for the server's user, who writes the pid file here
    (workdir / "users.txt").write_text('"postgres" ""\n')
    extra = "".join(f"{key} = {value}\n" for key, value in settings.items())
    (workdir / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={socket_dir} port={server_port}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {workdir / 'users.txt'}\n"
        f"pool_mode = {mode}\npidfile = {workdir / 'pgbouncer.pid'}\n{extra}"
    )
    for path in workdir.iterdir():
        path.chmod(0o644)
    command = [binary, "-q", str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        command[1:1] = ["-u", "embedded_postgres"]
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await _wait_for_port(port, proc)
        yield Bouncer(port, mode)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)  # PgBouncer's safe shutdown
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.asynccontextmanager
async def npcforge_process(*args: str, env: dict[str, str]) -> AsyncIterator[Any]:
    """`python -m npcforge ARGS` running in the background, ended with SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "npcforge", *args,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    failure: BaseException | None = None
    try:
        yield proc
    except BaseException as exc:
        failure = exc
        raise
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        if failure is not None:  # what the process said explains the failure
            failure.add_note(f"npcforge {args[0]} wrote:\n{err.decode()}")
        elif proc.returncode not in (0, -signal.SIGTERM):
            raise AssertionError(f"npcforge {args[0]} exited {proc.returncode}: {err.decode()}")


@contextlib.asynccontextmanager
async def api_process(env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """`npcforge api` on a free port; a client for it once /healthz answers."""
    port = free_port()
    async with npcforge_process("api", "--host", "127.0.0.1", "--port", str(port), env=env) as p:
        await _wait_for_port(port, p)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
