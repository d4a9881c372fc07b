"""The chaos suite (bench/chaos.py) as a slow test: under a W1-style load (two workers, a 50 ms
LLM stand-in, thousands of jobs), a worker SIGKILLed mid-load and PostgreSQL crashing (`pg_ctl
stop -m immediate`, 5 s down) must lose no job and publish none twice. The suite itself checks
every row, attempt row, model call and upload, and exits 1 on any breach; the full set of
scenarios is `python bench/chaos.py` (about 7 minutes), reported in docs/reliability.md."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_killed_worker_and_crashed_postgres_under_load_lose_nothing() -> None:
    command = [
        sys.executable, str(ROOT / "bench" / "chaos.py"),
        "--scenarios", "kill-one", "pg-restart-immediate", "--no-docs",
    ]  # fmt: skip
    run = subprocess.run(
        command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=840
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-6000:]
    outcomes = dict(re.findall(r"^  ([a-z-]+): (\d+ jobs, .*)$", report, re.MULTILINE))
    assert set(outcomes) >= {"baseline", "kill-one", "pg-restart-immediate"}, report[-3000:]
    for scenario, line in outcomes.items():
        assert "lost 0, succeeded twice 0, late writes 0" in line, (scenario, line)
    # The kill landed on work in flight: the killed worker's jobs were generated again.
    regenerated = re.search(r"generated twice (\d+)", outcomes["kill-one"])
    assert regenerated is not None and int(regenerated.group(1)) > 0, outcomes["kill-one"]
