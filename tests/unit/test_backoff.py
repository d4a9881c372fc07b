"""npcforge's one backoff, and Retry-After parsing."""

from __future__ import annotations

import ast
import random
from email.utils import formatdate
from pathlib import Path

import pytest

import npcforge
from npcforge.backoff import backoff, parse_retry_after

SRC = Path(npcforge.__file__).parent


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after(" 0.25 ", now) == 0.25
    assert parse_retry_after("-5", now) == 0.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0.0
    for garbage in (None, "", "soon", "nan", "inf", "Mon, 99 Foo 2024"):
        assert parse_retry_after(garbage, now) is None


def test_backoff_delay_is_full_jitter_under_the_cap() -> None:
    rng = random.Random(3)
    for attempt in range(12):
        ceiling = min(8.0, 0.5 * 2**attempt)
        delays = [backoff(attempt, base=0.5, cap=8.0, rng=rng) for _ in range(50)]
        assert all(0.0 <= d <= ceiling for d in delays)
    assert max(backoff(10, base=0.5, cap=8.0, rng=rng) for _ in range(200)) > 4.0
    assert backoff(1000, base=0.5, cap=8.0, rng=rng) <= 8.0


def test_a_reconnect_backoff_never_retries_at_once() -> None:
    rng = random.Random(5)
    for failures in range(10):
        ceiling = min(5.0, 0.2 * 2**failures)
        delays = [backoff(failures, base=0.2, cap=5.0, floor=0.5, rng=rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # still spread out


def test_no_ceiling_no_wait() -> None:
    assert backoff(3, base=0.0, cap=5.0) == 0.0
    assert backoff(-2, base=0.5, cap=0.0, floor=0.5) == 0.0


def test_backoff_is_the_only_exponential_delay_in_npcforge() -> None:
    """Every retry loop takes its delay from npcforge.backoff: no module doubles on its own."""
    doubling = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "backoff.py" and path.parent == SRC:
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if (
                isinstance(node, ast.BinOp)
                and isinstance(node.op, ast.Pow)
                and isinstance(node.left, ast.Constant)
                and node.left.value == 2
            ):
                doubling.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert doubling == []
