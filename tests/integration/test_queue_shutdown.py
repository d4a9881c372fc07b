"""SIGTERM/SIGINT on a real `npcforge worker`: drain, hand back, exit 0; a second signal exits at
once; systemd's notify protocol on $NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from conftest import make_npc
from npcforge.worker.sdnotify import SystemdNotifier
from queuekit import (
    BUCKET,
    WorkerProcess,
    model_env,
    npc_name,
    slow_model,
    worker_env,
    worker_processes,
)
from workerkit import job_row, running_worker, wait_status


async def _names(conn, ids) -> list[str]:
    return [await npc_name(conn, i) for i in ids]


async def test_sigterm_drains_what_finishes_in_time_and_hands_back_the_rest(conn, db_dsn, tmp_path):
    fast = [await make_npc(conn) for _ in range(2)]
    slow = [await make_npc(conn) for _ in range(2)]
    waiting = [await make_npc(conn) for _ in range(3)]
    storage = tmp_path / "storage"
    async with slow_model() as model:
        gates = {name: model.hold(name) for name in await _names(conn, fast + slow)}
        env = worker_env(
            db_dsn, storage, **model_env(model.standin),
            NPCFORGE_CONCURRENCY="4", NPCFORGE_SHUTDOWN_SECONDS="2", NPCFORGE_LEASE_SECONDS="30",
        )  # fmt: skip
        async with worker_processes([env], tmp_path / "first") as [worker]:
            jobs = {i: await conn.fetchval("SELECT npcforge_enqueue($1)", i) for i in fast + slow}
            for name in gates:
                await model.wait_arrival(name)
            for npc_id in waiting:  # the worker is full: these stay queued
                await conn.execute("SELECT npcforge_enqueue($1)", npc_id)
            await asyncio.sleep(0.3)

            worker.send(signal.SIGTERM)
            signalled = time.monotonic()
            for name in await _names(conn, fast):
                model.delays[name] = 0.5
                gates[name].set()  # these finish during the drain; the slow ones never do
            code = await worker.wait(15)
            took = time.monotonic() - signalled

            rows = {i: await job_row(conn, i) for i in fast + slow + waiting}

        assert code == 0
        assert took < 2 + 3  # the drain budget, plus the hand-back and a clean exit
        for npc_id in fast:
            assert rows[npc_id]["status"] == "succeeded"
        for npc_id in slow:
            row = rows[npc_id]
            assert row["status"] == "queued"  # handed back at once, not left to the lease
            assert row["job_id"] == jobs[npc_id]
            assert row["attempts"] == 0  # the interrupted attempt is not counted
        for npc_id in waiting:
            assert rows[npc_id]["status"] == "queued"
            assert rows[npc_id]["attempts"] == 0  # never claimed after the signal
        outcomes = dict(
            await conn.fetch(
                "SELECT npc_id, outcome FROM npc_generation_attempts WHERE npc_id = ANY($1)",
                fast + slow,
            )
        )
        assert outcomes == {**dict.fromkeys(fast, "succeeded"), **dict.fromkeys(slow, "released")}
        released = [line for line in worker.logs() if line.get("action") == "release"]
        assert sorted(line["npc_id"] for line in released) == sorted(map(str, slow))
        assert all(line["worker_id"] and line["job_id"] for line in released)

        # What was handed back is runnable right away: no lease to wait out.
        for name in await _names(conn, slow):
            model.holds.pop(name).set()
        async with worker_processes([env], tmp_path / "second"):
            started = time.monotonic()
            for npc_id in slow + waiting:
                row = await wait_status(conn, npc_id, "succeeded", timeout=15)
                assert row["attempts"] == 1
            assert time.monotonic() - started < 10
    assert len(list((storage / BUCKET).glob("*.xml"))) == 7


async def test_a_second_signal_exits_at_once(conn, db_dsn, tmp_path):
    npc_id = await make_npc(conn)
    async with slow_model() as model:
        model.hold(await npc_name(conn, npc_id))
        env = worker_env(
            db_dsn, tmp_path / "storage", **model_env(model.standin),
            NPCFORGE_SHUTDOWN_SECONDS="60",
        )  # fmt: skip
        async with worker_processes([env], tmp_path / "logs") as [worker]:
            await conn.execute("SELECT npcforge_enqueue($1)", npc_id)
            await wait_status(conn, npc_id, "processing")
            worker.send(signal.SIGINT)
            await worker.wait_log(lambda line: line.get("action") == "drain")
            worker.send(signal.SIGTERM)
            started = time.monotonic()
            code = await worker.wait(5)
    assert time.monotonic() - started < 2
    assert code == 1
    # Nothing was handed back: the lease will lapse and another worker takes the job.
    assert (await job_row(conn, npc_id))["status"] == "processing"


async def test_sigterm_while_the_database_is_unreachable_exits_0(tmp_path):
    env = worker_env("postgresql://postgres@/postgres?host=/nonexistent-dir", tmp_path / "s")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        await worker.wait_log(lambda line: "database unreachable" in line.get("msg", ""))
        worker.send(signal.SIGTERM)
        assert await worker.wait(5) == 0
    finally:
        worker.kill()


@contextlib.contextmanager
def notify_socket(path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


async def _datagrams(sock: socket.socket, until: float) -> list[str]:
    loop = asyncio.get_running_loop()
    got = []
    while time.monotonic() < until:
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), until - time.monotonic())
        except TimeoutError:
            break
        got.append(data.decode())
    return got


async def test_systemd_notify_ready_watchdog_status_and_stopping(conn, db_dsn, tmp_path):
    npc_id = await make_npc(conn)
    async with slow_model() as model:
        gate = model.hold(await npc_name(conn, npc_id))
        with notify_socket(tmp_path / "notify.sock") as sock:
            env = worker_env(
                db_dsn, tmp_path / "storage", **model_env(model.standin),
                NOTIFY_SOCKET=str(tmp_path / "notify.sock"),
                WATCHDOG_USEC="1000000",  # a ping every half second
            )  # fmt: skip
            async with worker_processes([env], tmp_path / "logs") as [worker]:
                first = await _datagrams(sock, time.monotonic() + 1.6)
                await conn.execute("SELECT npcforge_enqueue($1)", npc_id)
                await model.wait_arrival(await npc_name(conn, npc_id))
                busy = await _datagrams(sock, time.monotonic() + 1.2)
                gate.set()
                await wait_status(conn, npc_id, "succeeded")
                after = await _datagrams(sock, time.monotonic() + 1.2)
                worker.send(signal.SIGTERM)
                assert await worker.wait(10) == 0
                last = await _datagrams(sock, time.monotonic() + 0.3)

    messages = first + busy + after + last
    lines = [line for message in messages for line in message.splitlines()]
    assert first[0].splitlines()[0] == "READY=1"
    assert lines.count("READY=1") == 1
    pings = [m for m in first + busy + after if m == "WATCHDOG=1"]
    assert len(pings) >= 5  # about two a second for ~4 s
    assert "STATUS=in flight 1/4, done 0" in lines
    assert "STATUS=in flight 0/4, done 1" in lines
    assert "STOPPING=1" in lines
    assert lines.index("STOPPING=1") > lines.index("READY=1")


async def test_sigint_is_graceful_too(conn, db_dsn, tmp_path):
    npc_id = await make_npc(conn)
    env = worker_env(db_dsn, tmp_path / "storage")
    async with worker_processes([env], tmp_path / "logs") as [worker]:
        await conn.execute("SELECT npcforge_enqueue($1)", npc_id)
        await wait_status(conn, npc_id, "succeeded")
        worker.send(signal.SIGINT)
        assert await worker.wait(10) == 0
    assert [
        line["action"] for line in worker.logs() if line.get("action") in ("stop", "stopped")
    ] == [
        "stop",
        "stopped",
    ]


async def test_watchdog_keeps_pinging_through_a_hung_database_but_not_for_a_dead_loop(
    conn, db_dsn, storage_dir, tmp_path
):
    with notify_socket(tmp_path / "notify.sock") as sock:
        notifier = SystemdNotifier(str(tmp_path / "notify.sock"), "400000")  # ping every 0.2 s
        async with running_worker(db_dsn, storage_dir, notifier=notifier, db_timeout=1.0) as worker:
            healthy = await _datagrams(sock, time.monotonic() + 0.7)

            # Every statement on npcs now blocks: the loops time out and retry, but they are
            # not stuck, so systemd must not kill the worker (its jobs' results would be lost).
            async with conn.transaction():
                await conn.execute("LOCK TABLE npcs IN ACCESS EXCLUSIVE MODE")
                hung = await _datagrams(sock, time.monotonic() + 2.5)
            npc_id = await make_npc(conn)
            await conn.execute("SELECT npcforge_enqueue($1)", npc_id)
            await wait_status(conn, npc_id, "succeeded", timeout=10)
            assert worker.alive

            # A loop that died is what the watchdog is for: the pings stop.
            worker.supervisor._loops["reaper"].cancel()
            await asyncio.sleep(0.1)
            await _datagrams(sock, time.monotonic() + 0.05)  # what was sent before
            dead = await _datagrams(sock, time.monotonic() + 1.0)
            assert not worker.alive

    assert healthy.count("WATCHDOG=1") >= 2
    assert hung.count("WATCHDOG=1") >= 8
    assert "WATCHDOG=1" not in dead
