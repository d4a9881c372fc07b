"""The rate gate port: how the OpenRouter client asks permission before each upstream call.

The client calls `acquire()` before every HTTP request, `on_rate_limited()` when the upstream
answers 429 (or a 200 carrying a rate-limit error), and `on_success()` after a 2xx completion.
A fleet-wide implementation (counted in PostgreSQL) lives with the worker; `NoGate` lets every
call through and is what a single process without `OPENROUTER_REQUESTS_PER_MINUTE` uses.
"""

from __future__ import annotations

from typing import Protocol


class RateGate(Protocol):
    async def acquire(self) -> None:
        """Wait until one upstream call may be made."""
        ...

    async def on_rate_limited(self, retry_after: float | None) -> None:
        """The upstream said "slow down", optionally for `retry_after` seconds."""
        ...

    async def on_success(self) -> None:
        """An upstream call completed normally."""
        ...


class NoGate:
    """A gate that never waits: no fleet-wide cap is configured."""

    async def acquire(self) -> None:
        return None

    async def on_rate_limited(self, retry_after: float | None) -> None:
        return None

    async def on_success(self) -> None:
        return None
