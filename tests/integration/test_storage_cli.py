"""`npcforge worker` and `npcforge storage ensure-bucket` as a user runs them, against the
Supabase Storage stand-in (tests/standins/supabase_storage.py) over loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clikit import Result, cli_env, free_port, run_cli
from standins.supabase_storage import (
    ANON_KEY,
    FOREIGN_SERVICE_KEY,
    SERVICE_ROLE_KEY,
    SupabaseStorageStandIn,
    running_storage_standin,
)

BUCKET = "npc-xml-files"


@pytest.fixture
async def empty_standin() -> AsyncIterator[SupabaseStorageStandIn]:
    """A Supabase project whose storage has no bucket yet."""
    async with running_storage_standin() as running:
        yield running


def supabase_env(
    url: str, *, key: str = SERVICE_ROLE_KEY, dsn: str | None = None
) -> dict[str, str]:
    env = cli_env(
        NPCFORGE_STORAGE="supabase",
        SUPABASE_URL=url,
        SUPABASE_SERVICE_ROLE_KEY=key,
        NPCFORGE_PROVIDER="template",
        NPCFORGE_BUCKET=BUCKET,
    )
    if dsn is not None:
        env["DATABASE_URL"] = dsn
    return env


async def run_worker_until_started(env: dict[str, str], cwd: Path) -> tuple[Result, list[dict]]:
    """Start `npcforge worker`, wait for its "worker started" log line, SIGTERM it, collect."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "npcforge", "worker",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
    )  # fmt: skip
    assert proc.stderr is not None and proc.stdout is not None
    lines: list[dict] = []
    err_text: list[str] = []
    try:
        async with asyncio.timeout(30):
            while True:
                raw = await proc.stderr.readline()
                if not raw:
                    break  # exited before starting; the assertions below say why
                text = raw.decode()
                err_text.append(text)
                if text.startswith("{"):
                    lines.append(json.loads(text))
                    if lines[-1]["msg"] == "worker started":
                        proc.send_signal(signal.SIGTERM)
                        break
        rest_out, rest_err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err_text.append(rest_err.decode())
    lines += [json.loads(t) for t in rest_err.decode().splitlines() if t.startswith("{")]
    assert proc.returncode is not None
    return Result(proc.returncode, rest_out.decode(), "".join(err_text)), lines


# --- worker start check -----------------------------------------------------------------------


async def test_worker_exits_2_when_the_bucket_is_missing(
    empty_standin: SupabaseStorageStandIn, db_dsn: str, tmp_path: Path
) -> None:
    env = supabase_env(empty_standin.url, dsn=db_dsn)
    result = await run_cli("worker", env=env, cwd=tmp_path, timeout=30)
    assert result.code == 2, result
    assert "npcforge storage ensure-bucket" in result.err
    assert repr(BUCKET) in result.err
    assert SERVICE_ROLE_KEY not in result.out + result.err


async def test_worker_exits_2_on_a_refused_key_and_names_the_variable(
    empty_standin: SupabaseStorageStandIn, db_dsn: str, tmp_path: Path
) -> None:
    empty_standin.add_bucket(BUCKET)
    env = supabase_env(empty_standin.url, key=FOREIGN_SERVICE_KEY, dsn=db_dsn)
    result = await run_cli("worker", env=env, cwd=tmp_path, timeout=30)
    assert result.code == 2, result
    assert "AccessDenied" in result.err
    assert "SUPABASE_SERVICE_ROLE_KEY" in result.err
    assert FOREIGN_SERVICE_KEY not in result.out + result.err
    assert FOREIGN_SERVICE_KEY.rsplit(".", 1)[-1] not in result.out + result.err


PUBLISHABLE_KEY = "sb_publishable_0123456789abcdefghijklmnopqrstuv"
SECRET_KEY = "sb_secret_0123456789abcdefghijklmnopqrstuvwxyz"


@pytest.mark.parametrize(
    ("key", "says"),
    [(ANON_KEY, "'anon' role"), (PUBLISHABLE_KEY, "publishable key")],
    ids=["anon-jwt", "sb_publishable"],
)
async def test_a_key_that_is_not_the_service_role_is_refused_at_start(
    empty_standin: SupabaseStorageStandIn, db_dsn: str, tmp_path: Path, key: str, says: str
) -> None:
    # With such a key the real server hides the bucket (NoSuchBucket) and every file (NoSuchKey):
    # the worker used to say "bucket does not exist" and doctor to suggest ensure-bucket.
    empty_standin.add_bucket(BUCKET)
    env = supabase_env(empty_standin.url, key=key, dsn=db_dsn)
    for command in (["worker"], ["api", "--port", str(free_port())], ["storage", "ensure-bucket"]):
        result = await run_cli(*command, env=env, cwd=tmp_path, timeout=30)
        assert result.code == 2, (command, result)
        assert "SUPABASE_SERVICE_ROLE_KEY" in result.err and says in result.err, result.err
        assert "service_role" in result.err
        assert "ensure-bucket" not in result.err
        assert key not in result.out + result.err
        assert key[-12:] not in result.out + result.err
    assert empty_standin.requests == []  # refused before storage was ever asked

    doctor = await run_cli("doctor", env=env, cwd=tmp_path, timeout=30)
    storage_line = next(line for line in doctor.out.splitlines() if " storage:" in line)
    assert storage_line.startswith("FAIL") and says in storage_line, doctor.out
    assert "ensure-bucket" not in storage_line


async def test_a_secret_key_is_accepted_like_the_service_role_key(
    db_dsn: str, tmp_path: Path
) -> None:
    async with running_storage_standin(
        buckets=[BUCKET], api_keys={SECRET_KEY: "service_role"}
    ) as standin:
        env = supabase_env(standin.url, key=SECRET_KEY, dsn=db_dsn)
        result, lines = await run_worker_until_started(env, tmp_path)
    assert result.code == 0, result
    assert not any(line["msg"].startswith("storage unreachable") for line in lines)
    assert [r.path for r in standin.requests] == [f"/storage/v1/bucket/{BUCKET}"]


async def test_worker_starts_anyway_when_storage_is_briefly_unreachable(
    db_dsn: str, tmp_path: Path
) -> None:
    async with running_storage_standin() as gone:
        url = gone.url  # nothing listens there any more
    result, lines = await run_worker_until_started(supabase_env(url, dsn=db_dsn), tmp_path)
    assert result.code == 0, result
    messages = [line["msg"] for line in lines]
    assert "worker started" in messages
    warning = next(line for line in lines if line["msg"].startswith("storage unreachable"))
    assert warning["level"] == "warning"
    assert warning["storage_code"] == "ConnectionError"
    assert messages.index(warning["msg"]) < messages.index("worker started")


# --- ensure-bucket ----------------------------------------------------------------------------


async def test_ensure_bucket_creates_a_private_bucket_once_then_the_worker_starts(
    empty_standin: SupabaseStorageStandIn, db_dsn: str, tmp_path: Path
) -> None:
    env = supabase_env(empty_standin.url, dsn=db_dsn)
    first = await run_cli("storage", "ensure-bucket", env=env, cwd=tmp_path, timeout=30)
    assert first.code == 0, first
    assert "created" in first.out and "private" in first.out
    assert BUCKET in first.out
    assert empty_standin.buckets[BUCKET].public is False

    second = await run_cli("storage", "ensure-bucket", env=env, cwd=tmp_path, timeout=30)
    assert second.code == 0, second
    assert "already exists" in second.out
    assert list(empty_standin.buckets) == [BUCKET]

    result, lines = await run_worker_until_started(env, tmp_path)
    assert result.code == 0, result
    assert not any(line["msg"].startswith("storage unreachable") for line in lines)


async def test_ensure_bucket_with_a_refused_key_exits_2_without_echoing_it(
    empty_standin: SupabaseStorageStandIn, tmp_path: Path
) -> None:
    env = supabase_env(empty_standin.url, key=FOREIGN_SERVICE_KEY)
    result = await run_cli("storage", "ensure-bucket", env=env, cwd=tmp_path, timeout=30)
    assert result.code == 2, result
    assert "SUPABASE_SERVICE_ROLE_KEY" in result.err
    assert FOREIGN_SERVICE_KEY not in result.out + result.err
    assert empty_standin.buckets == {}


async def test_ensure_bucket_exits_1_when_storage_is_unreachable(tmp_path: Path) -> None:
    async with running_storage_standin() as gone:
        url = gone.url
    result = await run_cli(
        "storage", "ensure-bucket", env=supabase_env(url), cwd=tmp_path, timeout=30
    )
    assert result.code == 1, result
    assert "unreachable" in result.err
    assert "Traceback" not in result.err


async def test_sigterm_during_the_start_up_storage_check_exits_0_without_claiming(
    db_dsn: str, tmp_path: Path
) -> None:
    async with running_storage_standin(buckets=[BUCKET]) as standin:
        standin.fail_next("slow", 1, delay=8.0)  # the bucket check hangs
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "npcforge", "worker",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=supabase_env(standin.url, dsn=db_dsn), cwd=tmp_path,
        )  # fmt: skip
        async with asyncio.timeout(15):
            while not standin.requests:  # the check has reached storage
                await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    messages = [
        json.loads(line)["msg"] for line in err.decode().splitlines() if line.startswith("{")
    ]
    assert "worker started" not in messages
