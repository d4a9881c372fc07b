"""The Provider port: what the worker knows about generation, nothing about HTTP."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from npcforge.npc import NpcRecord


@dataclass(frozen=True, slots=True)
class RepairRequest:
    """A second try: the previous output and what the validator found wrong with it."""

    previous_xml: str
    findings: tuple[str, ...]


@dataclass(slots=True)
class CallStats:
    """What one provider call cost; recorded on the attempt row. Never holds prompt or output."""

    model: str | None = None
    generation_id: str | None = None
    request_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    retries: int = 0
    upstream_ms: float = 0.0


# The attribute a failed call's CallStats ride on, from the provider to the worker's attempt row.
_CALL_STATS_ATTR = "npcforge_call_stats"


def attach_call_stats(error: BaseException, stats: CallStats) -> None:
    """Let what a failed call cost (model, ids, tokens, retries) travel with its error."""
    setattr(error, _CALL_STATS_ATTR, stats)


def call_stats_of(error: BaseException) -> CallStats | None:
    """The CallStats a provider attached to `error`, if any."""
    stats = getattr(error, _CALL_STATS_ATTR, None)
    return stats if isinstance(stats, CallStats) else None


@dataclass(slots=True)
class Generated:
    xml: str
    stats: CallStats = field(default_factory=CallStats)


class Provider(Protocol):
    name: str

    async def generate(self, npc: NpcRecord, repair: RepairRequest | None = None) -> Generated:
        """Return the XML for `npc`. Raise a JobError subclass on failure."""
        ...

    async def close(self) -> None: ...


def upstream_pause(provider: Provider) -> float:
    """Seconds the provider's fleet-wide pause still lasts; 0 for providers without one."""
    pause = getattr(provider, "paused_for", 0.0)
    return float(pause) if isinstance(pause, int | float) else 0.0
