"""The upstream gate port: how the OpenRouter client asks permission before each upstream call.

The client calls `acquire()` before every HTTP request, `on_rate_limited()` when the upstream
answers 429 (or a 200 carrying a rate-limit error), and `on_success()` after a 2xx completion;
the provider that was handed a gate closes it with itself. The fleet-wide gate, counted in
PostgreSQL, is `npcforge.db.upstream_gate.PostgresUpstreamGate`; `OpenGate` lets every call
through (a provider used without a database).
"""

from __future__ import annotations

from typing import Protocol


class UpstreamGate(Protocol):
    async def acquire(self) -> None:
        """Wait until one upstream call may be made."""
        ...

    async def on_rate_limited(self, retry_after: float | None) -> None:
        """The upstream said "slow down", optionally for `retry_after` seconds."""
        ...

    async def on_success(self) -> None:
        """An upstream call completed normally."""
        ...

    async def close(self) -> None:
        """Release what the gate holds (connections, tasks)."""
        ...

    @property
    def paused_for(self) -> float:
        """Seconds the fleet still holds off upstream calls (0 when not paused)."""
        ...


class OpenGate:
    """A gate that never waits: for a provider used without a database (no fleet to share)."""

    paused_for = 0.0

    async def acquire(self) -> None:
        return None

    async def on_rate_limited(self, retry_after: float | None) -> None:
        return None

    async def on_success(self) -> None:
        return None

    async def close(self) -> None:
        return None
