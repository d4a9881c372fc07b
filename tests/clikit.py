"""Running the real `npcforge` command line in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def said(self) -> str:
        """stderr as a person reads it: each JSON log line (cli_env sets JSON) as its message."""
        lines = []
        for line in self.err.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            lines.append(record["msg"] if isinstance(record, dict) and "msg" in record else line)
        return "\n".join(lines)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NPCFORGE_", "OPENROUTER_", "SUPABASE_"))
    }
    env.pop("DATABASE_URL", None)
    env["NPCFORGE_LOG_FORMAT"] = "json"
    env.update(extra)
    return env


async def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Any = None, timeout: float = 60
) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "npcforge", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or cli_env(), cwd=cwd,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())
