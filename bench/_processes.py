"""The processes a bench run starts (contenders, the LLM stand-in, py-spy) and what /proc says of
them: CPU seconds (user and kernel, all threads, reaped children), RSS, open sockets.

Each process logs to `<workdir>/<name>.log`. Reading every contender from /proc, whatever it is
written in, is what makes their numbers comparable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

BENCH_DIR = Path(__file__).resolve().parent
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
BUCKET = "npc-xml-files"


def _stat(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return []


def proc_cpu(pid: int, *, reaped_children: bool = False, kernel_only: bool = False) -> float:
    """CPU seconds of `pid` (all threads): utime+stime, or stime alone; plus reaped children's."""
    rest = _stat(pid)
    if not rest:
        return 0.0
    ticks = int(rest[12]) + (0 if kernel_only else int(rest[11]))
    if reaped_children:
        ticks += int(rest[13]) + int(rest[14])
    return ticks / CLK_TCK


def proc_children(parent: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            rest = _stat(int(entry.name))
            if rest and int(rest[1]) == parent:
                out.append(int(entry.name))
    return out


def proc_status_kb(pid: int, key: str) -> int | None:
    """A `kB` field of /proc/<pid>/status, e.g. VmHWM (peak RSS)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def open_sockets(pid: int) -> int:
    with contextlib.suppress(OSError):
        return sum(
            1 for fd in os.scandir(f"/proc/{pid}/fd") if os.readlink(fd.path).startswith("socket:")
        )
    return 0


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def peak_rss_mb(self) -> float | None:
        kb = proc_status_kb(self.pid, "VmHWM")
        return round(kb / 1024, 1) if kb is not None else None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def read_line(self, timeout: float = 60.0) -> str:
        assert self.popen.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.popen.stdout.readline), timeout)
        return line.decode().strip()

    async def bench_get(self, path: str) -> Any:
        """The stand-in's `/_bench/arrivals`: `[[unix_time, npc_name], …]`."""
        async with aiohttp.ClientSession() as session, session.get(self.url + path) as r:
            return json.loads(await r.read())

    async def reset(self) -> None:
        async with aiohttp.ClientSession() as session:
            await session.post(self.url + "/_bench/reset")


def spawn(
    name: str, argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None, **pipes: Any
) -> Process:
    log_path = cwd / f"{name}.log"
    handle = open(log_path, "ab")  # noqa: SIM115 -- kept open for the child's lifetime
    popen = subprocess.Popen(
        list(argv),
        env={"PYTHONUNBUFFERED": "1", **os.environ, **(env or {})},
        cwd=cwd,
        stdout=pipes.get("stdout", handle),
        stderr=handle,
        stdin=pipes.get("stdin", subprocess.DEVNULL),
    )
    return Process(name, popen, log_path)


def start_standin(workdir: Path, delay_ms: float, spread_ms: float = 0.0) -> Process:
    argv = [PYTHON, str(BENCH_DIR / "llm_standin.py"), f"--delay-ms={delay_ms}"]
    proc = spawn(
        "standin", [*argv, f"--spread-ms={spread_ms}"], cwd=workdir, stdout=subprocess.PIPE
    )
    assert proc.popen.stdout is not None
    line = proc.popen.stdout.readline().decode().strip()
    if not line.startswith("LISTENING "):
        proc.stop()
        raise RuntimeError(f"stand-in did not start: {line!r}\n{proc.log_tail()}")
    proc.url = line.split(" ", 1)[1]
    return proc


def npcforge_env(dsn: str, standin_url: str, storage: Path, concurrency: int) -> dict[str, str]:
    """`npcforge worker`'s environment: openrouter at the stand-in, filesystem storage."""
    return {
        "DATABASE_URL": dsn,
        "NPCFORGE_PROVIDER": "openrouter",
        "OPENROUTER_API_KEY": "bench-key",
        "OPENROUTER_BASE_URL": standin_url + "/api/v1",
        "OPENROUTER_MODEL": "bench/standin",
        # The connector defaults to 64; size it to the slots (see docs/benchmarks.md).
        "OPENROUTER_MAX_CONNECTIONS": str(max(64, concurrency)),
        "NPCFORGE_STORAGE": "filesystem",
        "NPCFORGE_STORAGE_DIR": str(storage),
        "NPCFORGE_CONCURRENCY": str(concurrency),
        "NPCFORGE_LOG_FORMAT": "json",
        "NPCFORGE_LOG_LEVEL": "info",
    }


def spawn_worker(name: str, cwd: Path, env: dict[str, str]) -> Process:
    return spawn(name, [PYTHON, "-m", "npcforge", "worker"], cwd=cwd, env=env)


def storage_root(parent: Path) -> Path:
    root = parent / "storage"
    shutil.rmtree(root, ignore_errors=True)
    (root / BUCKET).mkdir(parents=True)
    return root


class Sampler:
    """CPU of every measured process before/after; RSS and sockets sampled while it runs."""

    def __init__(
        self, cluster: Any, backend: int, workers: list[Process], standin: Process
    ) -> None:
        """`cluster.cpu_seconds()`: PostgreSQL's; `backend`: the harness's own, left out of it."""
        self.cluster, self.backend, self.workers, self.standin = cluster, backend, workers, standin
        self.sockets = 0
        self.rss_mb = 0.0

    def snap(self) -> dict[str, float]:
        return {
            "worker": sum(proc_cpu(w.pid) for w in self.workers),
            "worker_sys": sum(proc_cpu(w.pid, kernel_only=True) for w in self.workers),
            "postgres": self.cluster.cpu_seconds() - proc_cpu(self.backend),
            "standin": proc_cpu(self.standin.pid),
        }

    def sample(self) -> None:
        self.sockets = max(self.sockets, sum(open_sockets(w.pid) for w in self.workers))
        rss = sum((proc_status_kb(w.pid, "VmRSS") or 0) for w in self.workers) / 1024
        self.rss_mb = max(self.rss_mb, rss)

    def __enter__(self) -> Sampler:
        self.before = self.snap()
        return self

    def __exit__(self, *exc: object) -> None:
        self.after = self.snap()

    def per_job_ms(self, jobs: int) -> dict[str, float]:
        return {k: (self.after[k] - self.before[k]) * 1000 / jobs for k in self.before}
